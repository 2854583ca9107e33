"""The decision facade shared by the service, batch ``recommend`` and in-process rollouts.

``Decider.decide`` turns a user's history (as the store returns it) and a request into one
``DecisionResult``: state fold, eligibility, the policy's distribution, the draw and the numbers
the response shows. Everything here is plain Python and numpy (no pandas, no model loading), so
it is safe on the hot path. The RNG is derived from (seed, user, number of earlier asks), so the
same request on the same history always gets the same decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.errors import InputError
from features.state import UserState, fold_history, merged_context
from models.guardrails import GuardrailSettings, apply_guardrails, has_step_rules
from models.planner import Planner
from models.policies import PolicyConfig
from models.policy_base import DecisionInput, Exploration, choose, draw_index

HistoryRow = tuple[str, str, float, Mapping[str, Any] | None]  # (step_id, outcome, ts, context)


class UnknownCandidateError(InputError):
    """A request named candidate steps that are not in the catalog."""


@dataclass
class CandidateScore:
    step: str
    p_accept: float | None
    score: float


@dataclass
class DecisionResult:
    """What the API returns for one decision (``step`` None means: offer nothing, see reason)."""

    step: str | None
    stage: str | None
    effort: float | None
    p_accept: float | None
    propensity: float | None
    explored: bool
    policy: str
    model_version: str | None
    candidates: list[CandidateScore] = field(default_factory=list)
    reason: str | None = None
    step_index: int | None = None
    suppressed: list[dict[str, str]] = field(default_factory=list)
    explanation: dict[str, Any] | None = None
    # Not a field (never compared, copied or serialised): what a random draw chose from
    # (eligible steps, probabilities, greedy index, readiness), set by ``Decider.finish``;
    # ``Decider.redraw`` draws again from it for another user with the same input.
    draw = None


class Decider:
    """One policy on one (optional) model, over one catalog.

    ``scorer`` is a ``models.bundle.ModelScorer`` or None; without a model a model-based policy
    degrades to ``ladder`` and says so in ``policy`` (docs/design.md section 9).
    """

    def __init__(
        self,
        catalog: Catalog,
        config: PolicyConfig,
        *,
        scorer: Any | None = None,
        model_version: str | None = None,
        seed: int = 0,
        guardrails: GuardrailSettings | None = None,
    ) -> None:
        self.catalog = catalog
        self.scorer = scorer
        self.model_version = model_version if scorer is not None else None
        self.seed = seed
        self.guardrails = guardrails
        self._guarded = guardrails is not None or has_step_rules(catalog)
        if scorer is None and config.name not in ("ladder", "big_ask", "random"):
            config = PolicyConfig(name="ladder", exploration=config.exploration, value=config.value)
        self.config = config
        self.policy = config.build()
        if scorer is not None and hasattr(self.policy, "bind"):
            self.policy = self.policy.bind(scorer, catalog)
        self.policy_name = config.name

    def set_guardrails(self, guardrails: GuardrailSettings | None) -> None:
        """Apply user-level guardrails (settings) to this decider; None keeps catalog rules."""
        self.guardrails = guardrails
        self._guarded = guardrails is not None or has_step_rules(self.catalog)

    def state_of(self, history: Iterable[HistoryRow]) -> UserState:
        return fold_history(self.catalog, history)

    def candidate_indices(self, requested: Sequence[str] | None) -> list[int] | None:
        if requested is None:
            return None
        unknown = [s for s in requested if s not in self.catalog.index]
        if unknown:
            raise UnknownCandidateError(
                f"unknown candidate step(s): {', '.join(map(repr, unknown[:5]))}",
                column="candidates",
            )
        return [self.catalog.index[s] for s in requested]

    def decide(
        self,
        user_id: str,
        history: Iterable[HistoryRow] | UserState,
        *,
        now: float,
        context: Mapping[str, Any] | None = None,
        candidates: Sequence[str] | None = None,
        allowed: Sequence[int] | None = None,
        explain: bool = False,
    ) -> DecisionResult:
        """Decide for one user. Guardrails (and ``allowed``) remove steps before the policy."""
        ready = self._ready(user_id, history, now, context, candidates, allowed)
        if isinstance(ready, DecisionResult):
            return ready
        return self.finish(ready, explain)

    def ready(self, request: DecisionRequest) -> DecisionResult | Ready:
        """The first half of ``decide``: state, eligibility and guardrails.

        Either the final answer (nothing to offer) or a ``Ready`` decision for ``plan_job``
        and ``finish``. The halves let a caller that can wait (the service's event loop) plan
        the misses of concurrent requests together; ``decide`` is ``ready`` then ``finish``.
        Raises ``UnknownCandidateError`` as ``decide`` does.
        """
        r = request
        return self._ready(r.user_id, r.history, r.now, r.context, r.candidates, r.allowed)

    def plan_job(self, ready: Ready) -> PlanJob | None:
        """What this decision still needs planned before ``finish``, if anything.

        None when the policy plans nothing or the planner's cache holds this root (the plan is
        then attached to the decision); otherwise the root for ``Planner.plan_many``, whose
        answer goes to ``PlanJob.attach``. ``finish`` gives the same decision either way.
        """
        planner, scorer = self._planner()
        if planner is None:
            return None
        inp = ready.inp
        hit = planner.cached(inp.root, scorer, self.catalog)
        if hit is not None:
            inp._planned = hit
            return None
        return PlanJob(planner, scorer, self.catalog, inp.root, inp)

    def decide_many(
        self, requests: Sequence[DecisionRequest], *, scores: bool = True
    ) -> list[DecisionResult | InputError]:
        """``decide`` for many users, the planner's look-ahead for all of them in one pass.

        Each answer equals what ``decide`` returns for that request alone (same guardrails,
        seeded draw, explanation); a request ``decide`` would reject (an unknown candidate)
        gets the ``InputError`` in its place instead of failing the others. The planner (bare
        or inside an exploration wrapper) first plans every user's root with
        ``Planner.plan_many`` (which also fills its exact cache); each user's plan is handed to
        the per-user choice that follows (``DecisionInput._planned``), so the policy, its
        exploration and the seeded draw run exactly as in ``decide`` without planning again.
        Any other policy on a model gets every user's readiness from one model call
        (``ModelScorer.p_accept_many``) instead of one call per user. ``scores`` False leaves
        every result's ``candidates`` empty (see ``finish``).
        """
        readied: list[DecisionResult | InputError | Ready] = []
        for r in requests:
            try:
                readied.append(self.ready(r))
            except InputError as exc:
                readied.append(exc)
        ready = [x for x in readied if isinstance(x, Ready)]
        roots = [x.inp.root for x in ready]
        planner, scorer = self._planner()
        if planner is not None:
            for x, plan in zip(ready, planner.plan_many(roots, scorer, self.catalog), strict=True):
                x.inp._planned = plan
        elif self.scorer is not None and hasattr(self.scorer, "p_accept_many"):
            # every other policy reads (or reports) readiness: one model call for all users
            for x, p in zip(ready, self.scorer.p_accept_many(roots, self.catalog), strict=True):
                x.inp._p = p
        return [
            self.finish(x, r.explain, scores=scores) if isinstance(x, Ready) else x
            for x, r in zip(readied, requests, strict=True)
        ]

    def _planner(self) -> tuple[Any, Any]:
        """The planner this decider's policy consults (under any exploration) and its scorer."""
        policy = self.policy
        while isinstance(policy, Exploration):
            policy = policy.base
        if not isinstance(policy, Planner):
            return None, None
        scorer = policy.scorer or self.scorer
        return (policy, scorer) if scorer is not None else (None, None)

    def _ready(
        self,
        user_id: str,
        history: Iterable[HistoryRow] | UserState,
        now: float,
        context: Mapping[str, Any] | None,
        candidates: Sequence[str] | None,
        allowed: Sequence[int] | None,
    ) -> DecisionResult | Ready:
        """Everything before the policy: state, eligibility, guardrails (or the early answer)."""
        state = history if isinstance(history, UserState) else self.state_of(history)
        requested = self.candidate_indices(candidates)
        ctx = dict(context or {})
        if state.converted(self.catalog):
            return self._nothing("converted")
        eligible = self.catalog.eligible_indices(state.accepted_mask, self._available(state, ctx))
        if requested is not None:
            wanted = set(requested)
            eligible = [i for i in eligible if i in wanted]
        if allowed is not None:
            ok = set(allowed)
            eligible = [i for i in eligible if i in ok]
        if not eligible:
            return self._nothing("no_eligible_step")
        suppressed: list[dict[str, str]] = []
        if self._guarded:
            eligible, held = apply_guardrails(self.catalog, state, eligible, now, self.guardrails)
            suppressed = [{"step": h.step, "rule": h.rule} for h in held]
            if not eligible:
                res = self._nothing("suppressed")
                res.suppressed = suppressed
                return res
        inp = DecisionInput(self.catalog, state, eligible, now, ctx, self.scorer)
        return Ready(user_id, inp, suppressed)

    def finish(self, ready: Ready, explain: bool, *, scores: bool = True) -> DecisionResult:
        """The policy's draw and the result, for a request that reached the policy (the
        second half of ``decide``; a plan attached by ``plan_job`` is used, not recomputed).
        ``scores`` False leaves ``candidates`` empty (``recommend`` writes none of them)."""
        inp = ready.inp
        state, eligible, now, ctx = inp.state, inp.candidates, inp.now, inp.context
        user_id = ready.user_id
        choice = choose(
            self.policy,
            inp,
            lambda: np.random.default_rng(_seed_for(self.seed, user_id, state.n_asks)),
        )
        p = inp.p_accept()
        cands = self._candidate_scores(eligible, p, choice.output.scores) if scores else []
        step = self.catalog.steps[choice.step]
        result = DecisionResult(
            step=step.id,
            stage=step.stage,
            effort=step.effort,
            p_accept=None if p is None else round(float(p[choice.index]), 6),
            propensity=round(choice.propensity, 12),
            explored=choice.explored,
            policy=self.policy_name,
            model_version=self.model_version,
            candidates=cands,
            step_index=choice.step,
            suppressed=ready.suppressed,
            explanation=self._explain(state, choice.step, now, ctx) if explain else None,
        )
        if choice.propensity != 1.0:
            result.draw = (eligible, choice.output.probs, choice.output.greedy, p)
        return result

    def redraw(self, template: DecisionResult, user_id: str, n_asks: int = 0) -> DecisionResult:
        """What ``finish`` decides for ``user_id`` on the input ``template`` was decided for
        (the same state, eligible steps, clock and context, so the same distribution), without
        running the policy again: only this user's own seeded draw (``choose``'s, exactly).
        A batch of first visits from one campaign under exploration computes one decision and
        draws the rest. ``template`` must come from ``finish`` without an explanation (one is
        about the step it chose) and with a draw (``draw`` set)."""
        if template.draw is None or template.explanation is not None:
            raise ValueError("redraw needs a drawn decision without an explanation")
        eligible, probs, greedy, p = template.draw
        k = draw_index(np.random.default_rng(_seed_for(self.seed, user_id, n_asks)), probs)
        step = self.catalog.steps[eligible[k]]
        return dataclasses.replace(
            template,
            step=step.id,
            stage=step.stage,
            effort=step.effort,
            p_accept=None if p is None else round(float(p[k]), 6),
            propensity=round(float(probs[k]), 12),
            explored=k != greedy,
            step_index=eligible[k],
        )

    def _candidate_scores(
        self, eligible: list[int], p: np.ndarray | None, scores: np.ndarray
    ) -> list[CandidateScore]:
        ids = self.catalog.ids
        sl = scores.tolist()  # Python floats: float(x[k]) for every k at once
        if p is None:
            return [
                CandidateScore(step=ids[i], p_accept=None, score=round(sl[k], 6))
                for k, i in enumerate(eligible)
            ]
        pl = p.tolist()
        return [
            CandidateScore(step=ids[i], p_accept=round(pl[k], 6), score=round(sl[k], 6))
            for k, i in enumerate(eligible)
        ]

    def _explain(
        self, state: UserState, step: int, now: float, context: Mapping[str, Any], top: int = 5
    ) -> dict[str, Any] | None:
        """Top feature contributions (log-odds, LightGBM SHAP) to the chosen step's readiness."""
        if self.scorer is None:
            return None
        X = self.scorer.matrix(state, [step], now, context)
        contrib = self.scorer.bundle.readiness.contributions(X)[0]
        names = self.scorer.spec.names
        order = np.argsort(-np.abs(contrib[:-1]))[:top]
        return {
            "step": self.catalog.ids[step],
            "base_value": round(float(contrib[-1]), 6),
            "contributions": [
                {
                    "feature": names[j],
                    "value": None if np.isnan(X[0, j]) else round(float(X[0, j]), 6),
                    "contribution": round(float(contrib[j]), 6),
                }
                for j in order
            ],
        }

    def readiness(
        self, state: UserState, *, now: float, context: Mapping[str, Any] | None = None
    ) -> dict[str, float | None]:
        """Readiness of every eligible step (None without a model): for ``GET /v1/users``."""
        eligible = self.catalog.eligible_indices(
            state.accepted_mask, self._available(state, context)
        )
        if not eligible:
            return {}
        if self.scorer is None:
            return {self.catalog.ids[i]: None for i in eligible}
        p = self.scorer.p_accept(state, eligible, now, dict(context or {}))
        return {self.catalog.ids[i]: round(float(v), 6) for i, v in zip(eligible, p, strict=True)}

    def _available(self, state: UserState, context: Mapping[str, Any] | None) -> int:
        """The catalog's ``available_when`` mask for the user's known context overlaid with the
        request's non-missing values (the context the readiness features see)."""
        if not self.catalog.has_availability:
            return -1
        return self.catalog.available(merged_context(state.context, context))

    def _nothing(self, reason: str) -> DecisionResult:
        return DecisionResult(
            step=None,
            stage=None,
            effort=None,
            p_accept=None,
            propensity=None,
            explored=False,
            policy=self.policy_name,
            model_version=self.model_version,
            candidates=[],
            reason=reason,
        )


@dataclass(slots=True)
class DecisionRequest:
    """One user's request to ``Decider.decide_many`` (the arguments of ``decide``)."""

    user_id: str
    history: Iterable[HistoryRow] | UserState
    now: float
    context: Mapping[str, Any] | None = None
    candidates: Sequence[str] | None = None
    allowed: Sequence[int] | None = None
    explain: bool = False


@dataclass(slots=True)
class Ready:
    """A request past eligibility and guardrails: what the policy decides on."""

    user_id: str
    inp: DecisionInput
    suppressed: list[dict[str, str]]


@dataclass(slots=True)
class PlanJob:
    """A planner miss of one decision: ``planner.plan_many([root, ...], scorer, catalog)``
    plans it (with others sharing the planner), ``attach`` hands the plan to the decision."""

    planner: Planner
    scorer: Any
    catalog: Catalog
    root: tuple[UserState, list[int], float, Mapping[str, Any]]
    inp: DecisionInput

    def attach(self, planned: tuple[Any, np.ndarray]) -> None:
        self.inp._planned = planned


def _seed_for(seed: int, user_id: str, n_asks: int) -> int:
    h = hashlib.blake2b(f"{seed}\x1f{user_id}\x1f{n_asks}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")

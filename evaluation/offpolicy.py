"""Per-offer off-policy quantities of target policies on an event log (``nextstep compare``).

For every logged offer, in each user's time order, the user's point-in-time state is folded with
``features.state.UserState.apply`` (the service's own fold), and each target policy is asked for
its full distribution over the steps eligible at that moment, exactly as the service would ask
it: "now" is the row's ``ts``, the request context is the row's context, exploration included.
That gives, per row and policy,

* ``target_propensity``: the policy's probability of the LOGGED step (0 when the catalog rules
  make the logged step ineligible there: no policy would offer it);
* ``q_target``: ``sum_s pi(s | state) * p_accept(s)`` with the readiness model (reward model);

and per row ``q_hat`` (the model's readiness of the logged step), ``reward`` (1 when accepted)
and the logged ``propensity``. ``evaluation.ope`` turns these into estimates.

Estimands, stated once:

* **One-step accept rate** (``one_step``): the expected accept rate of the offer the target
  policy would make *in the states and at the moments found in the log*,
  ``(1/n) sum_i sum_s pi(s | x_i) P(accept | x_i, s)`` over the n evaluated offers. This is the
  contextual-bandit value that IPW estimates without bias; it is not the accept rate the policy
  would see on its own trajectories (a policy changes which states users reach: that is what
  the conversion estimate and ``--world`` rollouts are for). Rows are martingale differences
  given the logged states, so the row bootstrap of ``evaluation.ope`` is a valid (if slightly
  conservative) interval for it.
* **Conversion** (``trajectory``): the expected worth of the goal a user would reach if the
  target policy made every offer (the conversion rate when goals carry no value, see
  ``Catalog.goal_rewards``). Estimated over whole user walks by ``evaluation.trajectory_ope``:
  per-decision IS, weighted PDIS and, with a readiness model, DR and weighted DR, a bootstrap
  over users and Kish's effective sample size of the whole-walk weights. A walk that ends (goal,
  drop, attrition, horizon, a user who never came back) keeps its last weight in every later
  step's normalisation; weights are not clipped unless ``max_weight`` asks for it (a cap of 100
  shrank long walks and biased the estimate of step-by-step policies); too little overlap is
  flagged ``low_overlap`` instead. Users still active when the log ends count as reaching no
  goal, as they would on-policy. Each offer's target probabilities come from the logged state
  folded exactly as the service folds it, with the catalog's guardrails (cooldowns, per-step
  caps) holding steps back as the service does.

Rows without a logged propensity cannot be weighted, and neither can their user's trajectory:
by default they are an error naming the first such row; with ``missing_propensity="exclude"``
(``--skip-invalid`` on the command line) every user with such a row is left out and counted.
With ``missing_propensity="organic"`` (the service's own log, ``nextstep promote --evidence
ope``) a row with neither a propensity nor a ``decision_id`` is an *organic* outcome: an offer
no policy decided (the product showed it on its own). It still happened, so it is folded into
the user's state like any other row, but it is not an offer of the logging policy, so it is
not evaluated (no weight, no reward); its count is ``organic_rows``. A row with a
``decision_id`` but no propensity is still an error.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evaluation.ope import LoggedData, effective_sample_size, estimate_all
from evaluation.trajectory_ope import Walks, walks
from evaluation.trajectory_ope import estimate as trajectory_estimates
from evaluation.trajectory_ope import overlap as trajectory_overlap
from features.catalog import Catalog
from features.errors import EventLogError, InputError
from features.state import ACCEPTED, UserState, is_missing
from models.guardrails import apply_guardrails, has_step_rules
from models.planner import Planner
from models.policies import PolicyConfig
from models.policy_base import DecisionInput, Exploration

MAX_WEIGHT = math.inf  # no cap on walk weights by default (see evaluation.trajectory_ope)
ACCEPT_HEADLINE = "snipw"
CONVERSION_HEADLINE = "wpdis"  # without a reward model
CONVERSION_MODEL_HEADLINE = "wdr"  # with one
CHUNK_ROWS = 20_000  # rows whose states are held (and scored in one model call) at once

Progress = Callable[[int, int], None]  # (rows done, rows to do)


class PolicySpecError(InputError):
    """A policy to compare is unknown, malformed, or needs a model that is not there."""


class MissingPropensityError(EventLogError):
    """Logged offers lack the logging policy's propensity, so they cannot be reweighted."""


# -- target policies ---------------------------------------------------------------------------
def build_policy(text: str, catalog: Catalog, scorer: Any | None) -> tuple[PolicyConfig, Any]:
    """``(config, policy)`` for a name like ``planner`` or ``greedy+epsilon=0.1``.

    The policy is built as ``models.decide.Decider`` builds it (the planner bound to the
    scorer), except that a model-based policy without a model is an error here instead of a
    silent fallback to ``ladder``: a comparison must never report one policy under another's name.
    """
    try:
        config = PolicyConfig.parse(text)
        policy = config.build()
    except (ValueError, TypeError) as exc:
        raise PolicySpecError(f"--policies: {exc}") from None
    if policy.needs_model and scorer is None:
        raise PolicySpecError(
            f"--policies: {text!r} needs a readiness model; pass --model (a registry URI or a "
            "directory holding a trained bundle)"
        )
    if scorer is not None and hasattr(policy, "bind"):
        policy = policy.bind(scorer, catalog)
    return config, policy


def needs_model(texts: Sequence[str]) -> bool:
    """Whether any of these policy names needs a readiness model."""
    out = False
    for text in texts:
        try:
            out |= bool(PolicyConfig.parse(text).build().needs_model)
        except (ValueError, TypeError) as exc:
            raise PolicySpecError(f"--policies: {exc}") from None
    return out


# -- per-offer evaluation ----------------------------------------------------------------------
@dataclass
class Decisions:
    """The evaluated offers, sorted by (user, ts, source row); arrays have shape (n_rows,).

    ``user`` numbers users 0.. in that order (each user's rows are contiguous). ``target`` and
    ``q_target`` map a policy name to its per-row array. With ``keep=True`` the per-row
    eligible steps, each policy's distribution over them (aligned with ``eligible``) and the
    state before the offer are kept too (for tests and notebooks; memory grows with the log).
    """

    row: np.ndarray
    user: np.ndarray
    user_ids: list[str]
    step: np.ndarray
    reward: np.ndarray
    goal_accepted: np.ndarray
    propensity: np.ndarray
    logged_eligible: np.ndarray
    q_hat: np.ndarray | None
    target: dict[str, np.ndarray]
    q_target: dict[str, np.ndarray]
    goal_reward: np.ndarray | None = None  # worth of the goal accepted at the row, else 0
    q_goal: np.ndarray | None = None  # model: expected goal reward of the logged offer
    v_goal: dict[str, np.ndarray] = field(default_factory=dict)  # same under each policy
    max_goal_reward: float = 1.0  # the most a user can be worth (bounds every value)
    excluded_rows: int = 0
    excluded_users: int = 0
    organic_rows: int = 0  # folded into the state, not evaluated (organic outcomes)
    eligible: list[list[int]] | None = None
    distributions: dict[str, list[np.ndarray]] | None = None
    states: list[UserState] | None = None

    @property
    def n_rows(self) -> int:
        return int(self.row.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def has_reward_model(self) -> bool:
        return self.q_hat is not None

    def logged_data(self, name: str) -> LoggedData:
        """The one-step table of policy ``name`` for ``evaluation.ope``."""
        q = self.q_hat is not None
        return LoggedData(
            reward=self.reward,
            propensity=self.propensity,
            target_propensity=self.target[name],
            q_hat=self.q_hat if q else None,
            q_target=self.q_target[name] if q else None,
        )


def evaluate_log(
    frame: pd.DataFrame,
    catalog: Catalog,
    policies: Mapping[str, Any],
    *,
    scorer: Any | None = None,
    context_columns: Sequence[str] = (),
    missing_propensity: str = "error",
    source: str = "events",
    keep: bool = False,
    progress: Progress | None = None,
) -> Decisions:
    """Target propensities (and reward-model terms) of ``policies`` at every logged offer.

    ``frame`` is a validated event frame (``features.events.EventLog.frame``); ``policies``
    maps a name to a policy object (``models.policies``: ``policy(DecisionInput) ->
    PolicyOutput``), e.g. from ``build_policy``; ``scorer`` (a ``models.bundle.ModelScorer``)
    gives ``q_hat``/``q_target``, and the model-based policies their readiness.
    ``missing_propensity`` is ``"error"``, ``"exclude"`` or ``"organic"`` (module docstring).

    Users are folded in chunks of about ``CHUNK_ROWS`` rows (whole users): the states of a
    chunk are kept, scored with one model call, and handed to every policy.
    """
    if not policies:
        raise PolicySpecError("no policies to evaluate")
    sel = _select_rows(frame, missing_propensity, source)
    order, n = sel.order, len(sel.order)
    step = frame["step"].map(catalog.index).to_numpy()[order].astype(np.int64)
    accepted = frame["outcome"].to_numpy()[order] == ACCEPTED
    ctx_cols = [c for c in context_columns if c in frame.columns]
    rows = _Rows(
        step=step.tolist(),
        outcome=frame["outcome"].to_numpy()[order].tolist(),
        ts=frame["ts"].to_numpy(dtype=np.float64)[order].tolist(),
        new_user=sel.new_user.tolist(),
        context={c: frame[c].to_numpy(dtype=object)[order].tolist() for c in ctx_cols},
    )
    names = list(policies)
    target = {k: np.zeros(n) for k in names}
    q_target = {k: np.zeros(n) for k in names}
    v_goal = {k: np.zeros(n) for k in names}
    q_hat = np.zeros(n) if scorer is not None else None
    worth = np.asarray(catalog.goal_rewards, dtype=np.float64)
    logged_eligible = np.zeros(n, dtype=bool)
    kept = _Kept() if keep else None
    folder = _Folder(catalog)

    start = 0
    while start < n:
        end = min(start + CHUNK_ROWS, n)
        while end < n and not rows.new_user[end]:  # whole users (unless one fills a chunk)
            end += 1
        chunk = folder.fold(rows, start, end)
        p_rows = _readiness(scorer, catalog, chunk, rows.step[start:end])
        plans = _plans(policies, catalog, chunk, rows.ts[start:end])
        for j, i in enumerate(range(start, end)):
            elig = chunk.eligible[j]
            k_logged = elig.index(rows.step[i]) if rows.step[i] in elig else -1
            logged_eligible[i] = k_logged >= 0
            p_elig = goal_elig = None
            if p_rows is not None and q_hat is not None:
                p_elig = p_rows[j][: len(elig)]
                goal_elig = p_elig * worth[elig]
                q_hat[i] = p_rows[j][k_logged] if k_logged >= 0 else p_rows[j][-1]
            inp = DecisionInput(
                catalog, chunk.states[j], elig, rows.ts[i], chunk.contexts[j], scorer
            )
            for name in names:
                inp._planned = plans[name][j] if name in plans else None
                probs = _distribution(policies[name], inp, p_elig)
                if k_logged >= 0:
                    target[name][i] = probs[k_logged]
                if p_elig is not None and goal_elig is not None and len(probs):
                    q_target[name][i] = float(probs @ p_elig)
                    v_goal[name][i] = float(probs @ goal_elig)
                if kept is not None:
                    kept.distributions.setdefault(name, []).append(probs)
        if kept is not None:
            kept.eligible.extend(chunk.eligible)
            kept.states.extend(chunk.states)
        if progress is not None:
            progress(end, n)
        start = end

    for name in names:  # exact policies can be off by an ulp: keep LoggedData's [0, 1] happy
        np.clip(target[name], 0.0, 1.0, out=target[name])
    goal_accepted = accepted & (catalog.arrays["is_goal"][step] > 0)
    decisions = Decisions(
        row=sel.rows[order],
        user=np.cumsum(sel.new_user) - 1,
        user_ids=sel.user_ids,
        step=step,
        reward=accepted.astype(np.float64),
        goal_accepted=goal_accepted,
        propensity=sel.propensity[order],
        logged_eligible=logged_eligible,
        q_hat=q_hat,
        target=target,
        q_target=q_target if scorer is not None else {},
        goal_reward=np.where(goal_accepted, worth[step], 0.0),
        q_goal=None if q_hat is None else q_hat * worth[step],
        v_goal=v_goal if scorer is not None else {},
        max_goal_reward=float(worth.max()) if len(worth) else 1.0,
        excluded_rows=sel.excluded_rows,
        excluded_users=sel.excluded_users,
        eligible=None if kept is None else kept.eligible,
        distributions=None if kept is None else kept.distributions,
        states=None if kept is None else kept.states,
    )
    organic = sel.organic[order]
    return _without_rows(decisions, organic, source) if organic.any() else decisions


def _without_rows(dec: Decisions, drop: np.ndarray, source: str) -> Decisions:
    """``dec`` without the rows in ``drop`` (organic outcomes: folded, never evaluated); users
    left with no evaluated row disappear and the others are renumbered 0.. in order."""
    keep = ~drop
    if not keep.any():
        raise MissingPropensityError(
            "every offer is an organic outcome (no decision_id, no propensity): nothing left "
            "to evaluate",
            source=source,
            column="propensity",
        )
    kept_users, user = np.unique(dec.user[keep], return_inverse=True)
    idx = np.flatnonzero(keep).tolist()

    def pick(items: list[Any] | None) -> list[Any] | None:
        return None if items is None else [items[i] for i in idx]

    return dataclasses.replace(
        dec,
        row=dec.row[keep],
        user=user.astype(np.int64),
        user_ids=[dec.user_ids[u] for u in kept_users.tolist()],
        step=dec.step[keep],
        reward=dec.reward[keep],
        goal_accepted=dec.goal_accepted[keep],
        propensity=dec.propensity[keep],
        logged_eligible=dec.logged_eligible[keep],
        q_hat=None if dec.q_hat is None else dec.q_hat[keep],
        target={k: v[keep] for k, v in dec.target.items()},
        q_target={k: v[keep] for k, v in dec.q_target.items()},
        goal_reward=None if dec.goal_reward is None else dec.goal_reward[keep],
        q_goal=None if dec.q_goal is None else dec.q_goal[keep],
        v_goal={k: v[keep] for k, v in dec.v_goal.items()},
        organic_rows=int(drop.sum()),
        eligible=pick(dec.eligible),
        distributions=(
            None
            if dec.distributions is None
            else {k: pick(v) or [] for k, v in dec.distributions.items()}
        ),
        states=pick(dec.states),
    )


@dataclass
class _Selection:
    """Which rows are evaluated, in (user, ts, source row) order."""

    order: np.ndarray  # positions in the frame
    new_user: np.ndarray  # (len(order),) bool: the row starts a user
    user_ids: list[str]
    rows: np.ndarray  # 1-based source row of every frame position
    propensity: np.ndarray  # logged propensity of every frame position (NaN when absent)
    organic: np.ndarray  # every frame position: an organic outcome (folded, not evaluated)
    excluded_rows: int = 0
    excluded_users: int = 0


def _select_rows(frame: pd.DataFrame, missing_propensity: str, source: str) -> _Selection:
    """Sort the rows per user in time order; refuse or drop users lacking a propensity."""
    if missing_propensity not in ("error", "exclude", "organic"):
        raise ValueError("missing_propensity must be 'error', 'exclude' or 'organic'")
    n_all = len(frame)
    if n_all == 0:
        raise EventLogError("the event log has no rows to evaluate", source=source)
    codes, uniques = pd.factorize(frame["user_id"], sort=False)
    rows = (
        frame["row"].to_numpy(dtype=np.int64) if "row" in frame.columns else np.arange(1, n_all + 1)
    )
    order = np.lexsort((rows, frame["ts"].to_numpy(dtype=np.float64), codes))
    prop = (
        frame["propensity"].to_numpy(dtype=np.float64)
        if "propensity" in frame.columns
        else np.full(n_all, np.nan)
    )
    missing = np.isnan(prop)
    organic = np.zeros(n_all, dtype=bool)
    if missing_propensity == "organic":
        decided = (
            frame["decision_id"].notna().to_numpy(dtype=bool)
            if "decision_id" in frame.columns
            else np.zeros(n_all, dtype=bool)
        )
        organic = missing & ~decided
        missing = missing & decided
    excluded_rows = excluded_users = 0
    if missing.any():
        if missing_propensity in ("error", "organic"):
            raise MissingPropensityError(
                f"{int(missing.sum())} of {n_all} offers have no logged propensity, so they "
                "cannot be reweighted; log propensities, or pass --skip-invalid to leave out "
                "every user with such an offer",
                source=source,
                row=int(rows[np.flatnonzero(missing)[0]]),
                column="propensity",
            )
        bad_user = np.zeros(len(uniques), dtype=bool)
        bad_user[codes[missing]] = True
        keep_row = ~bad_user[codes]
        excluded_rows, excluded_users = int((~keep_row).sum()), int(bad_user.sum())
        order = order[keep_row[order]]
        if len(order) == 0:
            raise MissingPropensityError(
                "no user has a logged propensity on every offer: nothing left to evaluate",
                source=source,
                column="propensity",
            )
    user_codes = codes[order]
    new_user = np.r_[True, user_codes[1:] != user_codes[:-1]]
    return _Selection(
        order=order,
        new_user=new_user,
        user_ids=[str(uniques[c]) for c in user_codes[new_user]],
        rows=rows,
        propensity=prop,
        organic=organic,
        excluded_rows=excluded_rows,
        excluded_users=excluded_users,
    )


@dataclass
class _Rows:
    """The sorted rows as Python lists (the fold reads them one by one)."""

    step: list[int]
    outcome: list[str]
    ts: list[float]
    new_user: list[bool]
    context: dict[str, list[Any]]


@dataclass
class _Chunk:
    """Per row of a chunk: the state before the offer (request context merged), "now", the
    request context and the eligible steps."""

    states: list[UserState]
    times: list[float]
    contexts: list[dict[str, Any]]
    eligible: list[list[int]]


@dataclass
class _Kept:
    eligible: list[list[int]] = field(default_factory=list)
    distributions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    states: list[UserState] = field(default_factory=list)


class _Folder:
    """``UserState.apply`` over the sorted rows; the state carries over between chunks."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.state = UserState()
        self.guarded = has_step_rules(catalog)  # the service holds these steps back too

    def fold(self, rows: _Rows, start: int, end: int) -> _Chunk:
        chunk = _Chunk([], [], [], [])
        for i in range(start, end):
            if rows.new_user[i]:
                self.state = UserState()
            ctx = {c: v[i] for c, v in rows.context.items() if not is_missing(v[i])}
            snap = self.state.copy()
            snap.context.update(ctx)  # what the service merges in for a request with this context
            chunk.states.append(snap)
            chunk.times.append(rows.ts[i])
            chunk.contexts.append(ctx)
            eligible = self.catalog.eligible_indices(
                self.state.accepted_mask, self.catalog.available(snap.context)
            )
            if self.guarded and eligible:
                eligible = apply_guardrails(self.catalog, self.state, eligible, rows.ts[i])[0]
            chunk.eligible.append(eligible)
            self.state.apply(self.catalog, rows.step[i], rows.outcome[i], rows.ts[i], ctx)
        return chunk


def _readiness(
    scorer: Any | None, catalog: Catalog, chunk: _Chunk, logged: list[int]
) -> list[np.ndarray] | None:
    """Readiness per row of every eligible step, then the logged step if it is not eligible;
    one model call for the whole chunk. None without a model."""
    if scorer is None:
        return None
    cands = [e if s in e else [*e, s] for e, s in zip(chunk.eligible, logged, strict=True)]
    # the row's context is already merged into its state, so no separate request context
    nodes = list(zip(chunk.states, chunk.times, strict=True))
    p = scorer.p_accept_rows(scorer.block(nodes, cands, None, catalog))
    bounds = np.cumsum([0] + [len(c) for c in cands]).tolist()
    return [p[a:b] for a, b in itertools.pairwise(bounds)]


def _plans(
    policies: Mapping[str, Any], catalog: Catalog, chunk: _Chunk, times: list[float]
) -> dict[str, list[Any]]:
    """Per planner policy, the plan of every row of a chunk, planned in one pass.

    ``Planner.plan_many`` gives each root exactly the plan it would get alone (as the service's
    ``Decider.decide_many`` relies on), so the distributions are the ones ``decide`` gives; a
    planner asked row by row costs milliseconds per logged offer.
    """
    out: dict[str, list[Any]] = {}
    for name, policy in policies.items():
        base = policy
        while isinstance(base, Exploration):
            base = base.base
        if not isinstance(base, Planner) or base.scorer is None:
            continue
        rows = [j for j, e in enumerate(chunk.eligible) if e]
        roots = [(chunk.states[j], chunk.eligible[j], times[j], chunk.contexts[j]) for j in rows]
        planned = base.plan_many(roots, base.scorer, catalog) if roots else []
        per_row: list[Any] = [None] * len(chunk.eligible)
        for j, plan in zip(rows, planned, strict=True):
            per_row[j] = plan
        out[name] = per_row
    return out


def _distribution(policy: Any, inp: DecisionInput, p_elig: np.ndarray | None) -> np.ndarray:
    """The policy's probabilities over ``inp.candidates`` (empty when nothing is eligible)."""
    if not inp.candidates:
        return np.zeros(0)
    inp._p = p_elig  # readiness computed for the whole chunk; greedy reads it, no second call
    return np.asarray(policy(inp).probs, dtype=np.float64)


# -- estimates ---------------------------------------------------------------------------------
@dataclass
class Estimate:
    """A headline estimate with its 95% interval (and, for conversion, the ESS)."""

    estimator: str
    value: float
    low: float
    high: float
    ess: float | None = None
    low_overlap: bool | None = None  # conversion only: True when the estimate is not trusted

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "estimator": self.estimator,
            "value": self.value,
            "low": self.low,
            "high": self.high,
        }
        if self.ess is not None:
            out["ess"] = self.ess
        if self.low_overlap is not None:
            out["low_overlap"] = self.low_overlap
        return out


@dataclass
class OneStep:
    """Accept-rate estimates of one policy: every estimator, the headline and the row ESS."""

    headline: Estimate
    estimates: dict[str, dict[str, float]]
    ess: float
    rows: int


@dataclass
class Trajectory:
    """Conversion estimates of one policy over user trajectories."""

    headline: Estimate
    estimates: dict[str, dict[str, float]]
    ess: float
    users: int
    clipped_share: float  # share of users whose trajectory weight hit ``max_weight``
    supported_share: float  # share of users whose weight is > 0
    max_weight: float
    low_overlap: bool = False  # too little overlap: the estimate cannot be trusted
    overlap_note: str | None = None  # why, in words
    extra: dict[str, float] = field(default_factory=dict)


def one_step(dec: Decisions, name: str, *, n_boot: int = 200, seed: int = 0) -> OneStep:
    """IPW, SNIPW (and DM, DR, SNDR with a reward model) of the accept rate; headline SNIPW."""
    data = dec.logged_data(name)
    result = estimate_all(data, n_boot=n_boot, seed=seed)
    est = result["estimates"]
    h = est[ACCEPT_HEADLINE]
    return OneStep(
        headline=Estimate(ACCEPT_HEADLINE, h["value"], h["low"], h["high"]),
        estimates=est,
        ess=effective_sample_size(data),
        rows=dec.n_rows,
    )


def trajectory_weights(dec: Decisions, name: str, max_weight: float = MAX_WEIGHT) -> np.ndarray:
    """Whole-walk user weights ``min(prod_t w_ut, max_weight)``, shape (n_users,).

    The product is taken in log space (no overflow); a zero ratio (the target never makes a
    logged offer) gives weight 0.
    """
    return _walks(dec, name, max_weight, model=False).final_weights


def converted(dec: Decisions) -> np.ndarray:
    """Whether each user accepted a goal in the log, shape (n_users,)."""
    goals = np.bincount(
        dec.user, weights=dec.goal_accepted.astype(np.float64), minlength=dec.n_users
    )
    return goals > 0


def goal_value(dec: Decisions) -> np.ndarray:
    """Worth of the goal each user reached in the log (0 for none), shape (n_users,)."""
    reward = dec.goal_reward if dec.goal_reward is not None else dec.goal_accepted * 1.0
    return np.bincount(dec.user, weights=reward, minlength=dec.n_users)


def policy_walks(dec: Decisions, name: str, max_weight: float = MAX_WEIGHT) -> Walks:
    """Policy ``name``'s walks with the model terms when ``dec`` has them: what ``trajectory``
    estimates from, for callers that combine two policies (``trajectory_ope.difference``)."""
    return _walks(dec, name, max_weight, model=True)


def _walks(dec: Decisions, name: str, max_weight: float, *, model: bool) -> Walks:
    if not max_weight >= 1.0:
        raise InputError(f"max_weight must be a number >= 1, got {max_weight!r}")
    reward = dec.goal_reward if dec.goal_reward is not None else dec.goal_accepted * 1.0
    use_model = model and dec.q_goal is not None and name in dec.v_goal
    return walks(
        dec.user,
        dec.target[name] / dec.propensity,
        reward,
        q=dec.q_goal if use_model else None,
        v=dec.v_goal[name] if use_model else None,
        max_weight=max_weight,
    )


def trajectory(
    dec: Decisions,
    name: str,
    *,
    n_boot: int = 200,
    seed: int = 0,
    max_weight: float = MAX_WEIGHT,
) -> Trajectory:
    """Conversion (expected goal worth) of policy ``name`` over user walks.

    PDIS and WPDIS always, DR and WDR with a reward model (``evaluation.trajectory_ope``), all on
    the same bootstrap over users. The headline is WDR with a model, else WPDIS; it is flagged
    ``low_overlap`` when the whole-walk weights leave too few effective users to trust it.
    """
    w = _walks(dec, name, max_weight, model=True)
    est = trajectory_estimates(w, n_boot=n_boot, seed=seed, max_reward=dec.max_goal_reward)
    ov = trajectory_overlap(w)
    headline = CONVERSION_MODEL_HEADLINE if "wdr" in est else CONVERSION_HEADLINE
    h = est[headline]
    # untrusted: the interval says what the log supports (anything), not a tight bootstrap
    top = dec.max_goal_reward
    low, high = (0.0, top) if ov.low_overlap else (h["low"], h["high"])
    # the value lies in [0, top]; DR-type estimates can stray outside it, so report it clipped
    value = min(max(h["value"], 0.0), top)
    low, high = min(max(low, 0.0), value), max(min(high, top), value)
    final = w.final_weights
    return Trajectory(
        headline=Estimate(headline, value, low, high, ov.ess, low_overlap=ov.low_overlap),
        estimates=est,
        ess=ov.ess,
        users=dec.n_users,
        clipped_share=(
            float(np.mean(final >= max_weight * (1 - 1e-12))) if math.isfinite(max_weight) else 0.0
        ),
        supported_share=ov.supported_share,
        max_weight=max_weight,
        low_overlap=ov.low_overlap,
        overlap_note=ov.reason,
        extra={
            "logged_conversion": float(goal_value(dec).mean()),
            "max_reward": dec.max_goal_reward,
        },
    )

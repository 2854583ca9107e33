"""The learner's promotion gate: a candidate against the champion on the candidate's holdout.

Both models are judged on exactly the same held-out users (the users with offers in the
candidate's holdout, whom the candidate never trained on), with two pieces of evidence:

(a) **Log loss** of both models on the held-out offers. The candidate passes when
    ``logloss(candidate) <= logloss(champion) + margin``. This is the well-powered test, and the
    one that notices a champion that has drifted out of calibration: the champion is scored on
    today's held-out rows, not on the holdout it was trained with.
(b) **Planner value** (trajectory OPE, ``evaluation.offpolicy``): each model drives the planner
    over the held-out users' logged walks, valued by WDR. The difference ``candidate - champion``
    gets a *paired* bootstrap interval (``evaluation.trajectory_ope.difference``: one set of user
    resamples for both sides, the missing mass widening it). OPE vetoes on evidence of harm: the
    candidate is refused when the upper 95% bound of the difference is below ``-margin``, that
    is, when its planner is worse than the champion's by more than the margin even with every
    walk the log lacks counted in its favour.

    Why not ask OPE to prove the candidate no worse (lower bound above ``-margin``): a retraining
    window's held-out users are a few thousand walks of an exploring policy, and once the
    missing mass widens the interval its lower end sits near -0.3 whatever the two models are.
    Such a rule refused whenever OPE did not abstain, so whether a loop recovered from a shift
    hung on whether the effective users happened to clear ``MIN_ESS``. Log loss (a) is the
    well-powered test; OPE stops a candidate that is clearly worse where it matters.

    OPE can only veto where the log supports it. When either policy's whole-walk weights leave
    too few effective users (``trajectory_ope.overlap``: fewer than ``MIN_ESS`` users, too little
    support, too much missing mass) or the held-out log cannot be valued at all (offers without a
    propensity), the bootstrap says nothing reliable about the difference, and a rule that
    refused then would never promote on a small or little-explored log. In that case (b)
    *abstains*: the decision rests on (a), and the reason and the run's ``ope_status`` tag say so.

A champion made by ``nextstep train --refit`` was fitted on every offer of its log, which
overlaps this window: (a) then scores both models only on the held-out offers newer than its
data, and refuses when too few remain; (b) walks only the held-out users who arrived after its
data, and abstains when there are none (``training.refit_scope``).

The candidate is promoted only when (a) passes and (b) passes or abstains. With no champion the
candidate is promoted. A champion that cannot be loaded or scored by this code is replaced (the
same rule as ``nextstep train --promote``), and the reason says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evaluation import evaluate as ev
from evaluation.offpolicy import build_policy, evaluate_log, policy_walks
from evaluation.trajectory_ope import Difference, difference, overlap
from features.catalog import Catalog
from features.errors import InputError
from models.bundle import ModelBundle, ModelScorer
from training.pipeline import score_bundle, score_champion
from training.refit_scope import no_unseen_users, unseen_users

POLICY = "planner"
N_BOOT = 200


@dataclass
class GateResult:
    """The decision, why, and every number it rests on (logged to the cycle's run)."""

    promote: bool
    reason: str
    champion_version: str | None = None
    candidate_logloss: float | None = None
    champion_logloss: float | None = None
    ope_status: str = "not run"  # "passed" | "refused" | "abstained: ..." | "not run"
    ope: Difference | None = None
    ope_values: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {
            "candidate_logloss": self.candidate_logloss,
            "champion_logloss": self.champion_logloss,
            **self.ope_values,
        }
        if self.ope is not None:
            out.update(
                ope_diff=self.ope.value, ope_diff_low=self.ope.low, ope_diff_high=self.ope.high
            )
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def gate_candidate(
    candidate: ModelBundle,
    frame: pd.DataFrame,
    holdout: np.ndarray,
    held_out_users: pd.DataFrame,
    catalog: Catalog,
    *,
    margin: float,
    seed: int = 0,
) -> GateResult:
    """Decide whether ``candidate`` replaces the current champion (module docstring).

    ``frame`` is the window's validated event frame and ``holdout`` its held-out offers (bool per
    row); ``held_out_users`` the whole histories of the users with held-out offers.
    """
    y, p_c, _ = score_bundle(candidate, frame, catalog, holdout)
    cand_ll = ev.log_loss(y, p_c)
    ts = frame["ts"].to_numpy(dtype=np.float64)[holdout]
    champ = score_champion(
        lambda bundle: (y, score_bundle(bundle, frame, catalog, holdout)[1], ts),
        candidate,
        candidate_p=p_c,
    )
    version = champ.version
    if version is None:
        return GateResult(True, "no champion yet: the candidate becomes champion", None, cand_ll)
    if champ.problem is not None:  # unloadable or incompatible champion: replace it, say why
        reason = f"champion v{version} cannot be scored by this code ({champ.problem}); replaced"
        return GateResult(True, reason, version, cand_ll)
    # a `train --refit` champion is scored only on the offers newer than its data
    if champ.unfair is not None:
        return GateResult(False, champ.unfair, version, cand_ll)
    champion, champ_ll = champ.bundle, champ.logloss
    assert champion is not None and champ_ll is not None  # scored: score_champion kept both
    scope = f"on {int(holdout.sum())} held-out offers"
    if champ.candidate_logloss is not None:  # only the offers newer than the champion's data
        cand_ll, scope = champ.candidate_logloss, champ.scope
    ll_ok = cand_ll <= champ_ll + margin
    ll_reason = (
        f"log loss {cand_ll:.5f} {'<=' if ll_ok else '>'} champion v{version} {champ_ll:.5f} "
        f"+ margin {margin:g} {scope}"
    )
    result = GateResult(ll_ok, ll_reason, version, cand_ll, champ_ll)
    unseen = unseen_users(champion.meta, held_out_users)  # a refitted champion: new users only
    if unseen is not None and unseen.empty:
        result.ope_status = f"abstained: {no_unseen_users(champion.meta, version)}"
        result.reason += f"; OPE {result.ope_status}"
    else:
        users = held_out_users if unseen is None else unseen
        _ope_check(result, candidate, champion, users, catalog, margin, seed)
    result.promote = ll_ok and result.ope_status != "refused"
    return result


def _walks_of(bundle: ModelBundle, frame: pd.DataFrame, catalog: Catalog) -> Any:
    scorer = ModelScorer(bundle, catalog)
    policy = build_policy(POLICY, catalog, scorer)[1]
    dec = evaluate_log(
        frame,
        catalog,
        {POLICY: policy},
        scorer=scorer,
        context_columns=bundle.spec.context_columns,
        missing_propensity="organic",  # the service's organic outcomes are history, not offers
        source="held-out users",
    )
    return policy_walks(dec, POLICY), dec.max_goal_reward


def _ope_check(
    result: GateResult,
    candidate: ModelBundle,
    champion: ModelBundle,
    held_out_users: pd.DataFrame,
    catalog: Catalog,
    margin: float,
    seed: int,
) -> None:
    """Fill in the OPE part of ``result`` (status, numbers, reason)."""
    try:
        wc, top = _walks_of(candidate, held_out_users, catalog)
        wk, _ = _walks_of(champion, held_out_users, catalog)
        d = difference(wc, wk, n_boot=N_BOOT, seed=seed, max_reward=top)
    except InputError as exc:
        result.ope_status = f"abstained: the held-out log cannot be valued ({str(exc)[:200]})"
        result.reason += f"; OPE {result.ope_status}"
        return
    oc, ok_ = overlap(wc), overlap(wk)
    result.ope = d
    result.ope_values = {
        "ope_users": float(d.users),
        "ope_candidate": d.a,
        "ope_champion": d.b,
        "ope_ess_candidate": oc.ess,
        "ope_ess_champion": ok_.ess,
    }
    if oc.low_overlap or ok_.low_overlap:
        note = oc.reason if oc.low_overlap else ok_.reason
        result.ope_status = f"abstained: {note}"
        result.reason += (
            f"; OPE abstains (difference {d.value:+.4f}, paired 95% interval "
            f"[{d.low:+.4f}, {d.high:+.4f}] not trusted: {note})"
        )
        return
    refused = ope_refuses(d, margin)
    result.ope_status = "refused" if refused else "passed"
    result.reason += (
        f"; planner value difference ({d.estimator}) {d.value:+.4f}, paired 95% interval "
        f"[{d.low:+.4f}, {d.high:+.4f}], upper bound {'<' if refused else '>='} -{margin:g} "
        f"on {d.users} users"
    )


def ope_refuses(d: Difference, margin: float) -> bool:
    """Whether OPE's ``candidate - champion`` difference is evidence of harm (module
    docstring): the whole interval lies below ``-margin``."""
    return d.high < -margin

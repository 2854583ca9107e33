"""Candidate policies valued on a training run's holdout users (``nextstep train``).

The holdout users were not used to fit the models, so the trajectory estimates of
``evaluation.offpolicy`` on them are out of sample for the model-based candidates too. The table and
chart go to the training run; ``evaluation.policy_choice.recommend`` picks the policy the model
version should be served with (the planner, unless another candidate is confidently better).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.offpolicy import Trajectory, build_policy, evaluate_log, trajectory
from evaluation.policy_choice import CANDIDATES, Bounds, Recommendation, recommend
from features.catalog import Catalog
from features.errors import InputError
from models.bundle import ModelScorer
from training import tracking
from training.modelio import load_model_bundle
from training.refit_scope import no_unseen_users, unseen_users

N_BOOT = 200
META_KEY = "recommended_policy"  # in the bundle meta and as a model-version tag
TABLE = "policy_ope.csv"
CHART = "policy_ope.png"


@dataclass
class PolicyEvaluation:
    """Trajectory estimates of every candidate on the holdout, and the recommendation."""

    results: dict[str, Trajectory]
    recommendation: Recommendation
    users: int

    def table(self) -> pd.DataFrame:
        rows = []
        for name, r in self.results.items():
            h = r.headline
            bounds = Bounds.of(r)
            rows.append(
                {
                    "policy": name,
                    "estimator": h.estimator,
                    "value": h.value,
                    "low": h.low,
                    "high": h.high,
                    "ess": r.ess,
                    "low_overlap": r.low_overlap,
                    "selection_low": bounds.selection_low,
                    "selection_high": bounds.selection_high,
                    "recommended": name == self.recommendation.policy,
                }
            )
        return pd.DataFrame.from_records(rows)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"ope_users": float(self.users)}
        for name, r in self.results.items():
            h = r.headline
            out.update(
                {
                    f"ope_{name}": h.value,
                    f"ope_{name}_low": h.low,
                    f"ope_{name}_high": h.high,
                    f"ope_{name}_ess": r.ess,
                }
            )
        return out


def evaluate_candidates(
    frame: pd.DataFrame,
    catalog: Catalog,
    scorer: Any,
    *,
    context_columns: Sequence[str],
    candidates: Sequence[str] = CANDIDATES,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> PolicyEvaluation:
    """Value ``candidates`` on the users of ``frame`` (a validated event frame); users with an
    offer lacking a logged propensity are left out. Raises ``InputError`` when none is left."""
    built = {name: build_policy(name, catalog, scorer)[1] for name in candidates}
    dec = evaluate_log(
        frame,
        catalog,
        built,
        scorer=scorer,
        context_columns=context_columns,
        missing_propensity="exclude",
        source="holdout",
    )
    results = {name: trajectory(dec, name, n_boot=n_boot, seed=seed) for name in candidates}
    return PolicyEvaluation(results, recommend(results), dec.n_users)


def try_evaluate(frame: pd.DataFrame, catalog: Catalog, scorer: Any, **kw: Any) -> Any:
    """``evaluate_candidates``, or the reason it cannot run (a log without propensities)."""
    try:
        return evaluate_candidates(frame, catalog, scorer, **kw)
    except InputError as exc:
        return f"no policy evaluation: {exc}"


def plot(evaluation: PolicyEvaluation, path: Path) -> Path:
    """Bars with 95% interval whiskers per candidate; untrusted ones hatched (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = evaluation.table()
    x = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(7, 4))
    err = np.vstack([t["value"] - t["low"], t["high"] - t["value"]]).clip(0, None)
    colors = ["#55a868" if r else "#4c72b0" for r in t["recommended"]]
    bars = ax.bar(x, t["value"], yerr=err, capsize=4, color=colors, alpha=0.85)
    for bar, untrusted in zip(bars, t["low_overlap"], strict=True):
        if untrusted:
            bar.set_hatch("//")
    ax.set_xticks(x, t["policy"])
    ax.set_ylabel("conversion (expected goal worth)")
    ax.set_title(
        f"holdout trajectory OPE ({t['estimator'].iloc[0]}), {evaluation.users} users; "
        f"recommended: {evaluation.recommendation.policy}",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def champion_policy_value(
    frame: pd.DataFrame, catalog: Catalog, *, context_columns: Sequence[str], seed: int = 0
) -> tuple[str | None, str | None, Trajectory | None, str | None, pd.DataFrame | None]:
    """``(version, policy, estimate, problem, users)`` of the current champion served with its
    recommended policy (``planner`` when it records none), valued on these holdout users.

    A ``train --refit`` champion was fitted on the start of these users' histories wherever the
    logs overlap, so it is valued only on the users who arrived after its data
    (``training.refit_scope.unseen_users``); ``users`` is then their events, for the candidate
    to be valued on the same walks, and None otherwise."""

    version = tracking.alias_version(tracking.CHAMPION)
    if version is None:
        return None, None, None, None, None
    users = None
    try:
        bundle, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{version}")
        policy = str(bundle.meta.get(META_KEY) or "planner")
        users = unseen_users(bundle.meta, frame)
        if users is not None and users.empty:
            return version, policy, None, no_unseen_users(bundle.meta, version), users
        ev = evaluate_candidates(
            frame if users is None else users,
            catalog,
            ModelScorer(bundle, catalog),
            context_columns=context_columns,
            candidates=[policy],
            seed=seed,
        )
    except Exception as exc:  # unloadable champion, or a log without propensities
        return version, None, None, f"{type(exc).__name__}: {str(exc)[:200]}", users
    return version, policy, ev.results[policy], None, users


def policy_gate(
    candidate: PolicyEvaluation, champion: Trajectory | None, champion_version: str | None
) -> tuple[bool, str]:
    """The OPE gate: refuse when the candidate's recommended policy is clearly worse than the
    champion's, i.e. its 95% upper bound is below the champion's estimate."""
    rec = candidate.recommendation
    if champion is None:
        return True, "policy gate: no champion estimate to compare with"
    cand = candidate.results[rec.policy].headline
    ok = cand.high >= champion.headline.value
    rel = ">=" if ok else "<"
    return ok, (
        f"policy gate: {rec.policy} upper bound {cand.high:.4f} {rel} champion "
        f"v{champion_version} ({champion.headline.estimator} {champion.headline.value:.4f})"
    )

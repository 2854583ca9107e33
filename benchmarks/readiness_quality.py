"""Readiness quality per built-in world, against what any model could reach.

Trains the bundle on the exploring log of ``--train-users`` users and scores a separate log of
new users. Reports, on that test log: AUC / log loss / ECE of LightGBM and of the
logistic-regression baseline, the AUC of the simulator's *true* probabilities (which use the hidden
type: the ceiling no model reaches) and of the *type-blind* posterior-predictive probabilities
(what a model that knows the dynamics but not the type reaches; docs/design.md section 7a).

    .venv/bin/python -m benchmarks.readiness_quality [--train-users 20000] [--test-users 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from features.offline import build_offline_features
from features.spec import FeatureSpec
from models.readiness import LogisticBaseline, fit_bundle
from simulation.simulate import START, Dynamics, TypeBlindReference, generate_log
from simulation.worlds import STATIONARY, World, load_world

ROOT = Path(__file__).resolve().parents[1]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(total)


def type_blind_probabilities(world: World, log: pd.DataFrame) -> np.ndarray:
    """Posterior-predictive P(accept) of every row from the user's context and earlier rows."""
    ref = TypeBlindReference(world)
    dyn = Dynamics(world)
    types = world.types
    cat = world.catalog
    out = np.empty(len(log))
    for _, g in log.groupby("user_id", sort=False):
        idx = g.index.to_numpy()
        post = ref.prior({"channel": g["channel"].iloc[0], "device": g["device"].iloc[0]})
        state = START
        prev = None
        for k, r in zip(idx, g.itertuples(index=False), strict=True):
            if prev is not None:
                pstate, pstep, poutcome, pts = prev
                post = ref.update(post, pstate, pstep, poutcome, (r.ts - pts) / 3600.0)
            step = cat.index[r.step]
            out[k] = sum(post[j] * dyn.p_accept(t, state, step) for j, t in enumerate(types))
            prev = (state, step, r.outcome, r.ts)
            state = (
                dyn.after_accept(state, step)
                if r.outcome == "accepted"
                else dyn.after_decline(state)
            )
    return out


def evaluate_world(name: str, train_users: int, test_users: int, seed: int) -> dict:
    world = load_world(name)
    cat = world.catalog
    train = pd.DataFrame(generate_log(world, train_users, seed))
    train["row"] = np.arange(1, len(train) + 1)
    test = pd.DataFrame(generate_log(world, test_users, seed + 7919, with_truth=True))
    test["row"] = np.arange(1, len(test) + 1)
    spec = FeatureSpec.from_frame(train, ["channel", "device"])
    tr = build_offline_features(train, cat, spec)
    te = build_offline_features(test, cat, spec)
    is_goal = ((cat.goal_mask >> tr.step_index) & 1).astype(bool)
    bundle = fit_bundle(
        tr.X,
        tr.accepted,
        tr.dropped,
        tr.came_back,
        is_goal,
        spec,
        typical_gap_hours=24.0,
        seed=seed,
        ts=tr.ts,
        users=pd.factorize(train["user_id"])[0],
    )
    y = te.accepted.astype(int)
    p_lgbm = bundle.readiness.predict_proba(te.X)[:, 1]
    p_lr = (
        LogisticBaseline(categorical_features=tuple(spec.categorical_indices))
        .fit(tr.X, tr.accepted.astype(int))
        .predict_proba(te.X)[:, 1]
    )
    p_true = test["true_p_accept"].to_numpy()
    p_blind = type_blind_probabilities(world, test)
    row = {
        "rows_train": len(train),
        "rows_test": len(test),
        "auc_lgbm": roc_auc_score(y, p_lgbm),
        "auc_logreg": roc_auc_score(y, p_lr),
        "auc_true": roc_auc_score(y, p_true),
        "auc_type_blind": roc_auc_score(y, p_blind),
        "logloss_lgbm": log_loss(y, p_lgbm),
        "logloss_logreg": log_loss(y, p_lr),
        "ece_lgbm": expected_calibration_error(y, p_lgbm),
        "ece_logreg": expected_calibration_error(y, p_lr),
    }
    row["gap_to_true"] = row["auc_true"] - row["auc_lgbm"]
    row["gap_to_type_blind"] = row["auc_type_blind"] - row["auc_lgbm"]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default=",".join(STATIONARY))
    ap.add_argument("--train-users", type=int, default=20_000)
    ap.add_argument("--test-users", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "readiness_quality.json")
    args = ap.parse_args(argv)
    res = {
        w: evaluate_world(w, args.train_users, args.test_users, args.seed)
        for w in args.worlds.split(",")
    }
    args.out.write_text(json.dumps(res, indent=2))
    cols = [
        "auc_lgbm",
        "auc_logreg",
        "auc_true",
        "auc_type_blind",
        "gap_to_true",
        "ece_lgbm",
        "logloss_lgbm",
        "logloss_logreg",
    ]
    print(f"{'world':10} " + " ".join(f"{c:>14}" for c in cols))
    for w, r in res.items():
        print(f"{w:10} " + " ".join(f"{r[c]:14.4f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())

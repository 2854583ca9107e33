"""Coverage of the trajectory conversion intervals, and policy selection, over random worlds.

``python -m benchmarks.ope_coverage --family 30`` draws worlds ``random:0`` .. ``random:29``
(``simulation.world_family``: exploration 10-70%, ladder/big_ask/random incumbents) and in each:

1. fits the outcome models on one simulated log (``--train-users``) and evaluates the candidate
   policies (``ladder``, ``big_ask``, ``greedy``, ``planner``) on another (``--users``) with the
   trajectory estimators of ``evaluation.trajectory_ope``, exactly as ``nextstep compare`` does;
2. computes every policy's true value: exactly (``ExactSolver``) for the fixed rules, by Monte
   Carlo with the service's ``Decider`` (``--mc-users``, standard error reported) for the
   model-based ones;
3. records whether each headline interval covers the truth, whether a miss is flagged
   ``low_overlap`` or lies within 1.5 interval widths, and the policy the training run would
   recommend (``evaluation.policy_choice``) against the best candidate's true value. The
   selection summary re-applies the current rule to the stored estimates, so re-running with
   an ``--out`` file whose worlds are all measured re-summarises without recomputing.

Prints a table per policy and exploration band and writes the rows as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.offpolicy import build_policy, evaluate_log, trajectory
from evaluation.policy_choice import CANDIDATES, Bounds, choose, recommend
from features.events import validate_frame
from features.state import UserState
from models.bundle import ModelScorer
from models.decide import Decider, DecisionRequest
from models.policies import PolicyConfig
from simulation.compare import exact_policy
from simulation.simulate import START, Dynamics, ExactSolver, generate_log, make_user
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world

CONTEXT = ("channel", "device")
BANDS = ((0.1, 0.3), (0.3, 0.5), (0.5, 0.7))


def band_of(explore: float) -> str:
    for lo, hi in BANDS:
        if explore < hi or hi == BANDS[-1][1]:
            return f"{lo:.1f}-{hi:.1f}"
    return "?"


def truth_of(world: Any, name: str, scorer: Any, mc_users: int, seed: int) -> tuple[float, float]:
    """True value of a policy in ``world`` and its standard error (0 when exact)."""
    config = PolicyConfig.parse(name)
    policy = config.build()
    if not policy.needs_model:
        solver = ExactSolver(world)
        fn = exact_policy(policy)
        value = sum(
            w * solver.policy_value_fn(t, fn)(START)
            for t, w in zip(world.types, world.weights, strict=True)
        )
        return float(value), 0.0
    decider = Decider(world.catalog, config, scorer=scorer, seed=seed)
    return lockstep_value(world, decider, mc_users, seed)


def lockstep_value(world: Any, decider: Decider, users: int, seed: int) -> tuple[float, float]:
    """``simulation.rollout.run_users`` with ``InProcess``, all users walked in lockstep.

    Each round asks ``Decider.decide_many`` for every active user at once (one planner pass, one
    model call per level), which gives each user exactly the decision ``decide`` would; every
    user draws from its own RNG stream, so the walks are the ones the sequential loop makes.
    """
    catalog = world.catalog
    dyn = Dynamics(world)
    walkers = [make_user(world, dyn, seed, i, prefix="mc") for i in range(users)]
    states = [UserState() for _ in walkers]
    active = list(range(users))
    while active:
        reqs = [
            DecisionRequest(walkers[i].user_id, states[i], walkers[i].ts, walkers[i].context)
            for i in active
        ]
        nxt = []
        for i, res in zip(active, decider.decide_many(reqs, scores=False), strict=True):
            u = walkers[i]
            if isinstance(res, Exception) or res.step is None:
                continue
            step = catalog.index[res.step]
            outcome = u.respond(step)
            states[i].apply(catalog, step, outcome, u.ts, u.context)
            if u.done:
                continue
            u.advance_clock()
            nxt.append(i)
        active = nxt
    reward = np.array([u.reward for u in walkers])
    return float(reward.mean()), float(reward.std(ddof=1) / math.sqrt(users))


def one_world(k: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    world = load_world(f"random:{k}")
    cat = world.catalog
    train = validate_frame(
        pd.DataFrame(generate_log(world, args.train_users, 7000 + k)), cat, source="train"
    )
    bundle = bundle_from_frame(train.frame, cat, CONTEXT, params={"n_estimators": 60})
    scorer = ModelScorer(bundle, cat)
    log = validate_frame(pd.DataFrame(generate_log(world, args.users, 9000 + k)), cat, source="log")
    built = {name: build_policy(name, cat, scorer)[1] for name in CANDIDATES}
    dec = evaluate_log(log.frame, cat, built, scorer=scorer, context_columns=CONTEXT)
    results = {name: trajectory(dec, name, n_boot=args.n_boot, seed=k) for name in CANDIDATES}
    rec = recommend(results)
    rows = []
    for name, r in results.items():
        known = args.known_truths.get((k, name))
        truth, se = known or truth_of(world, name, scorer, args.mc_users, seed=11 + k)
        h = r.headline
        raw = r.estimates[h.estimator]
        width = raw["high"] - raw["low"]
        covered = raw["low"] <= truth <= raw["high"]
        dist = 0.0 if covered else min(abs(truth - raw["low"]), abs(truth - raw["high"]))
        rows.append(
            {
                "world": k,
                "explore": world.logging_uniform,
                "band": band_of(world.logging_uniform),
                "logging_base": world.logging_base,
                "policy": name,
                "truth": truth,
                "truth_se": se,
                "estimator": h.estimator,
                "value": raw["value"],
                "low": raw["low"],
                "high": raw["high"],
                "ess": r.ess,
                "low_overlap": r.low_overlap,
                "covered": covered,
                "covered_reported": h.low <= truth <= h.high,
                "miss_within_1_5_widths": (not covered) and dist <= 1.5 * width,
                "recommended": name == rec.policy,
                **{f"{e}_covered": d["low"] <= truth <= d["high"] for e, d in r.estimates.items()},
            }
        )
    return rows


def summarise(rows: list[dict[str, Any]]) -> str:
    df = pd.DataFrame(rows)
    # a Monte Carlo truth is itself uncertain: covered when within 2 of its SEs of the interval
    slack = 2 * df["truth_se"]
    df["covered_mc"] = (df["low"] - slack <= df["truth"]) & (df["truth"] <= df["high"] + slack)
    df["covered_reported_mc"] = df["covered_reported"] | df["covered_mc"]
    out = []
    g = df.groupby(["policy", "band"])
    table = g.agg(
        pairs=("covered", "size"),
        flagged=("low_overlap", "sum"),
        covered_raw=("covered", "mean"),
        covered_reported=("covered_reported", "mean"),
        covered_reported_mc=("covered_reported_mc", "mean"),
    )
    trusted = df[~df["low_overlap"]].groupby(["policy", "band"])["covered"].mean()
    table["covered_trusted"] = trusted
    out.append(table.round(3).to_string())
    per_policy = df.groupby("policy").agg(
        pairs=("covered", "size"),
        flagged=("low_overlap", "sum"),
        covered_raw=("covered", "mean"),
        covered_reported=("covered_reported", "mean"),
        covered_reported_mc=("covered_reported_mc", "mean"),
    )
    per_policy["covered_trusted"] = df[~df["low_overlap"]].groupby("policy")["covered"].mean()
    out.append(per_policy.round(3).to_string())
    miss = df[~df["covered"]]
    bad = miss[~miss["low_overlap"] & ~miss["miss_within_1_5_widths"]]
    out.append(
        f"misses: {len(miss)}; flagged {int(miss['low_overlap'].sum())}; "
        f"unflagged beyond 1.5 widths: {len(bad)}"
    )
    est_cols = [c for c in df.columns if c.endswith("_covered") and c != "covered"]
    out.append("per estimator (all pairs): " + str(df[est_cols].mean().round(3).to_dict()))
    # selection, by the rule of evaluation.policy_choice on the measured estimates
    sel = []
    for k, w in df.groupby("world"):
        best = w.loc[w["truth"].idxmax()]
        by_name = w.set_index("policy")
        rec = by_name.loc[
            choose(
                {
                    n: Bounds(r.value, r.low, r.high, r.ess, bool(r.low_overlap))
                    for n, r in by_name.iterrows()
                }
            )
        ]
        rec["policy"] = rec.name
        fixed = w[w["policy"].isin(["ladder", "big_ask"])]
        best_fixed = fixed.loc[fixed["truth"].idxmax()]
        mc = rec["truth_se"] ** 2
        se_best = math.sqrt(((best["high"] - best["low"]) / 3.92) ** 2 + best["truth_se"] ** 2 + mc)
        se_fixed = math.sqrt(((best_fixed["high"] - best_fixed["low"]) / 3.92) ** 2 + mc)
        sel.append(
            {
                "world": k,
                "recommended": rec["policy"],
                "trusted": not rec["low_overlap"],
                "best": best["policy"],
                "regret": best["truth"] - rec["truth"],
                "within_2se_of_best": best["truth"] - rec["truth"] <= 2 * se_best,
                "below_best_fixed_by": best_fixed["truth"] - rec["truth"],
                "not_below_fixed_2se": best_fixed["truth"] - rec["truth"] <= 2 * se_fixed,
            }
        )
    s = pd.DataFrame(sel)
    out.append(
        f"selection over {len(s)} worlds: "
        f"within 2 SE of the best {s['within_2se_of_best'].mean():.3f}; "
        f"never below best fixed by > 2 SE: {bool(s['not_below_fixed_2se'].all())} "
        f"({int((~s['not_below_fixed_2se']).sum())} worlds); mean regret {s['regret'].mean():.4f}; "
        f"recommended {s['recommended'].value_counts().to_dict()}; "
        f"trusted recommendations {int(s['trusted'].sum())}"
    )
    out.append(s.round(4).to_string())
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", type=int, default=30, help="number of random worlds")
    p.add_argument("--first", type=int, default=0, help="first world seed")
    p.add_argument("--users", type=int, default=3000, help="users in each evaluated log")
    p.add_argument("--train-users", type=int, default=3000, help="users in each training log")
    p.add_argument("--mc-users", type=int, default=20000, help="Monte Carlo users per model policy")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    p.add_argument(
        "--truths",
        type=Path,
        nargs="*",
        default=[],
        help="earlier --out files whose true values to reuse (same worlds, models and seeds: "
        "the Monte Carlo values are deterministic), so only the estimates are recomputed; "
        "valid only while the policies' code is unchanged (drop a policy's rows to redo it)",
    )
    args = p.parse_args(argv)
    args.known_truths = {
        (r["world"], r["policy"]): (r["truth"], r["truth_se"])
        for f in args.truths
        for r in json.loads(f.read_text(encoding="utf-8"))
    }
    rows: list[dict[str, Any]] = []
    if args.out is not None and args.out.exists():  # resume: worlds already measured
        rows = json.loads(args.out.read_text(encoding="utf-8"))
    done = {r["world"] for r in rows}
    for k in range(args.first, args.first + args.family):
        if k in done:
            continue
        t0 = time.perf_counter()
        rows.extend(one_world(k, args))
        print(f"world random:{k} done in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(rows, indent=1, default=_json), encoding="utf-8")
    print(summarise(rows))


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(type(x))


if __name__ == "__main__":
    main()

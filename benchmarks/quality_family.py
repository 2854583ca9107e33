"""The planner over the random world family, beside its peers (``benchmarks.quality --family``).

Per world: one exploring log of the world's own incumbent, the planner's models and the peers
fitted on it in process (``--fit``: on every row, or exactly as ``nextstep train`` fits them),
then the same new simulated users walked by each policy. Reference values are exact (optimum,
fixed baselines) or the type-blind reference by Monte Carlo on the same new users. Each walk is
also scored decision by decision (``simulation.regret``): what the policy gave up per user
against the exact values under the user's belief, a second measure of the same users with far
less Monte Carlo noise than their conversion.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.peers import PeerWalk, conversion_model, greedy_value
from features.catalog import Catalog
from features.events import EventLog
from models.bundle import ModelBundle, ModelScorer
from models.decide import Decider
from models.policies import PolicyConfig
from simulation.regret import RegretMeter, fixed_rule_choosers, paired_gap
from simulation.rollout import InProcess, Metered, reference_table, run_users
from simulation.simulate import TypeBlindReference, generate_log
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world
from training.pipeline import fit_and_evaluate

POLICIES = ("planner", "bandit", "greedy_value", "conversion_model")
FIXED = ("ladder", "big_ask", "random")


FITS = ("every-row", "served")
CONTEXT = ["channel", "device"]


def fitted_bundle(frame: pd.DataFrame, catalog: Catalog, seed: int, fit: str) -> ModelBundle:
    """The planner's models on a world's log. ``every-row``: every row, no step-id feature
    (``simulation.synthetic``), the fit the stored family figures use. ``served``: exactly as
    ``nextstep train`` fits the bundle it registers (the newest fifth held out, the step-id
    feature, seed 0), so the figures describe what a user is served."""
    if fit == "served":
        return fit_and_evaluate(EventLog(frame, "simulated", CONTEXT), catalog, seed=0).bundle
    return bundle_from_frame(frame, catalog, CONTEXT, seed=seed, n_jobs=1)


def one_world(seed: int, train_users: int, users: int, fit: str = "every-row") -> dict[str, Any]:
    """Every policy's value in world ``random:seed``, with the references."""
    t0 = time.perf_counter()
    name = f"random:{seed}"
    world = load_world(name)
    cat = world.catalog
    frame = pd.DataFrame(generate_log(world, train_users, seed))
    frame["row"] = np.arange(1, len(frame) + 1)
    scorer = ModelScorer(fitted_bundle(frame, cat, seed, fit), cat)
    walks = {
        "planner": InProcess(world, Decider(cat, PolicyConfig("planner"), scorer=scorer)),
        "bandit": InProcess(world, Decider(cat, PolicyConfig("greedy"), scorer=scorer)),
        "greedy_value": PeerWalk(world, greedy_value(scorer, cat)),
        "conversion_model": PeerWalk(world, conversion_model(frame, cat, scorer, seed=seed)),
    }
    row: dict[str, Any] = {"world": name, "description": world.description}
    reference = TypeBlindReference(world)
    meters = {}
    for policy, walk in walks.items():
        meter = meters[policy] = RegretMeter(world, reference)  # each decision scored too
        res = run_users(world, users, seed + 1000, Metered(world, walk.choose, meter), prefix="q")
        regret, regret_se = meter.summary()
        row[policy] = {
            "value": res.conversion,
            "se": res.se,
            "invalid": res.invalid,
            "regret": regret,
            "regret_se": regret_se,
        }
    # the fixed rules on the same users: the planner against each, paired user by user
    row["planner"]["regret_minus_fixed"] = {}
    for rule, choose in fixed_rule_choosers(world, seed).items():
        meter = RegretMeter(world, reference)
        run_users(world, users, seed + 1000, Metered(world, choose, meter), prefix="q")
        gap, gap_se = paired_gap(meters["planner"], meter)
        row["planner"]["regret_minus_fixed"][rule] = {"mean": gap, "se": gap_se}
    # the type-blind reference walks the same users as the policies (common random numbers):
    # with independent users, its own Monte Carlo error (about 2.5% of its value at 2,000
    # users) went into every world's ratio
    ref = reference_table(world, users, seed, blind_seed=seed + 1000, solver=reference.solver)
    row["reference"] = {k: ref[k] for k in ("optimum", "type_blind", "type_blind_se", *FIXED)}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and worst decile of each policy's ratio to the type-blind reference and the
    optimum; the planner's margin over the best fixed baseline in standard errors."""
    out: dict[str, Any] = {"worlds": len(rows)}
    for policy in POLICIES:
        blind = np.array([r[policy]["value"] / r["reference"]["type_blind"] for r in rows])
        opt = np.array([r[policy]["value"] / r["reference"]["optimum"] for r in rows])
        out[policy] = {
            "to_type_blind": {"median": float(np.median(blind)), "p10": _p10(blind)},
            "to_optimum": {"median": float(np.median(opt)), "p10": _p10(opt)},
        }
        lost = np.array([r[policy]["regret"] / r["reference"]["type_blind"] for r in rows])
        out[policy]["regret_to_type_blind"] = {
            "mean": float(lost.mean()),
            "median": float(np.median(lost)),
            "p90": float(np.percentile(lost, 90)),
        }
    # per world, what each peer gives up beyond the planner: the paired, low-noise lead
    out["planner"]["regret_lead_over"] = {
        peer: float(
            np.median(
                [
                    (r[peer]["regret"] - r["planner"]["regret"]) / r["reference"]["type_blind"]
                    for r in rows
                ]
            )
        )
        for peer in POLICIES[1:]
    }
    # the same question as the margins below, asked of the same users decision by decision:
    # does the planner give up more than some fixed rule, beyond the pairing's own error?
    out["planner"]["regret_above_a_fixed_rule_by_more_than_2se"] = int(
        sum(
            any(g["mean"] > 2 * g["se"] for g in r["planner"]["regret_minus_fixed"].values())
            for r in rows
        )
    )
    margins = [
        (r["planner"]["value"] - max(r["reference"][k] for k in FIXED))
        / max(r["planner"]["se"], 1e-9)
        for r in rows
    ]
    out["planner"]["below_best_fixed_by_more_than_1se"] = int(sum(m < -1 for m in margins))
    return out


def _p10(x: np.ndarray) -> float:
    return float(np.percentile(x, 10))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [[r[p]["value"] / r["reference"]["type_blind"] for r in rows] for p in POLICIES]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(POLICIES) + 1), POLICIES)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("value / type-blind reference")
    ax.set_title(f"{len(rows)} random worlds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_family(
    seeds: Iterable[int],
    train_users: int,
    users: int,
    http_worlds: int,
    out: Path,
    run_world: Callable[[str, int, int, int, Path], dict],
    fit: str = "every-row",
) -> int:
    rows = []
    for k, seed in enumerate(seeds):
        row = one_world(seed, train_users, users, fit)
        if k < http_worlds:  # the served planner, trained and asked like a user would
            with tempfile.TemporaryDirectory() as tmp:
                served = run_world(f"random:{seed}", train_users, users, seed, Path(tmp))
            row["served_planner"] = {
                "value": served["result"]["conversion"],
                "se": served["result"]["se"],
                "invalid": served["result"]["invalid"],
                "errors": served["result"]["errors"],
            }
        rows.append(row)
        ref = row["reference"]
        print(
            f"{row['world']:>10} planner {row['planner']['value']:.3f} "
            f"blind {ref['type_blind']:.3f} opt {ref['optimum']:.3f} "
            + " ".join(f"{p} {row[p]['value']:.3f}" for p in POLICIES[1:])
            + f" ({row['seconds']} s)",
            flush=True,
        )
    summary = summarise(rows)
    out.write_text(json.dumps({"summary": summary, "worlds": rows}, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    worst = sorted(rows, key=lambda r: r["planner"]["value"] / r["reference"]["type_blind"])[:5]
    print("worst five (planner / type-blind):")
    for r in worst:
        ratio = r["planner"]["value"] / r["reference"]["type_blind"]
        print(f"  {r['world']}: {ratio:.3f}  {r['description']}")
    return 0

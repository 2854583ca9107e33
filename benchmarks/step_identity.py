"""Does the readiness model gain from knowing the step id (``train --step-feature``)?

For each built-in world and the ``twin_steps`` world (``tests/training/worlds/twin_steps.yaml``:
two steps alike in every attribute, one taken far more readily), trains the bundle with and
without the ``step_id`` feature on the same simulated log and scores both on the same calendar
holdout (the last 20% of the offers, ``training.holdout``). Several seeds per world.

    .venv/bin/python -m benchmarks.step_identity [--users 4000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from features.events import validate_frame
from simulation.simulate import generate_log
from simulation.worlds import STATIONARY, load_world
from training.pipeline import fit_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
TWINS = ROOT / "tests" / "training" / "worlds" / "twin_steps.yaml"
METRICS = ("auc", "logloss", "ece")


def measure(world_name: str, users: int, seeds: int) -> dict[str, dict[str, float]]:
    world = load_world(world_name)
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for seed in range(seeds):
        frame = pd.DataFrame(generate_log(world, users, 100 + seed))
        log = validate_frame(frame, world.catalog, source=f"{world.name}-{seed}")
        for label, on in (("without", False), ("with", True)):
            out = fit_and_evaluate(log, world.catalog, seed=seed, step_feature=on)
            runs[label].append({m: out.metrics["lgbm"][m] for m in METRICS})
    return {
        label: {m: float(np.mean([r[m] for r in rs])) for m in METRICS}
        for label, rs in runs.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "step_identity.json")
    args = ap.parse_args(argv)
    res = {name: measure(name, args.users, args.seeds) for name in [*STATIONARY, str(TWINS)]}
    res = {Path(k).stem: v for k, v in res.items()}
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'world':12} {'':8} " + " ".join(f"{m:>9}" for m in METRICS))
    for w, r in res.items():
        for label in ("without", "with"):
            print(f"{w:12} {label:8} " + " ".join(f"{r[label][m]:9.4f}" for m in METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())

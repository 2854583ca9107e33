"""Decision quality, end to end: the planner against the optimum, the baselines and its peers.

Built-in worlds (``--worlds``): simulate the exploring log of ``--train-users`` users,
``nextstep train --promote`` on it, start ``nextstep serve`` on a free port, then ``nextstep
rollout --base`` with ``--users`` new simulated users over HTTP. That is done twice on the same
model and the same new users: as shipped (exploring on 5% of decisions) and with
``NEXTSTEP_EXPLORATION=none``, so what exploring costs is its own column. The table compares the
served planner with the exact type-aware optimum, the type-blind reference and each fixed
baseline. Results go to ``benchmarks/quality.json``.

The random family (``--family N``): worlds ``random:0`` .. ``random:N-1``
(``simulation.world_family``). The first ``--http-worlds`` of them go through the same
train-serve-rollout path over HTTP; in every world the planner and its peers
(``benchmarks.peers``) are also fitted in process on the same log and walked with the same new
users. The summary gives, per policy, the median and worst decile of the ratio to the
type-blind reference and to the optimum, and the worst five worlds; the rows go to
``benchmarks/quality_family.json`` and a plot of the ratio distribution beside it. In process
the models are fitted on every row without the step-id feature; ``--fit served`` fits them
exactly as ``nextstep train`` does (``benchmarks/quality_family_served.json`` holds that run for
``random:0..29``, ``benchmarks/quality_family_served_F_L.json`` for ``--first F``).

    .venv/bin/python -m benchmarks.quality [--worlds ladder,eager,two_goals] [--users 2000]
    .venv/bin/python -m benchmarks.quality --family 30 [--http-worlds 5] [--fit served]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.quality_family import FITS, run_family

ROOT = Path(__file__).resolve().parents[1]
NS = str(ROOT / ".venv" / "bin" / "nextstep")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("server did not become ready")


def ns(env: dict[str, str], *args: str) -> None:
    """Run one ``nextstep`` command in ``env``; a failure stops the benchmark."""
    subprocess.run([NS, *args], env=env, check=True)


def run_world(
    world: str,
    train_users: int,
    users: int,
    seed: int,
    work: Path,
    explorations: tuple[str | None, ...] = (None,),
) -> dict:
    """Train once on the world's exploring log, then serve and roll out once per entry of
    ``explorations`` (``None``: the service's default, else ``NEXTSTEP_EXPLORATION``), with the
    same new users each time. The first rollout is the result; the others go under
    ``"exploration"`` by setting, so the cost of exploring is measured on the same model."""
    home = work / world
    env = {**os.environ, "NEXTSTEP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("NEXTSTEP_DATABASE_URL", None)
    env.pop("NEXTSTEP_EXPLORATION", None)
    data = home / "data"
    ns(
        env,
        "simulate",
        "--world",
        world,
        "--users",
        str(train_users),
        "--seed",
        str(seed),
        "--out",
        str(data),
    )
    ns(
        env,
        "train",
        "--events",
        str(data / "events.csv"),
        "--catalog",
        str(data / "catalog.yaml"),
        "--promote",
    )
    results = []
    for k, exploration in enumerate(explorations):
        # each service gets its own user-state database: the same new users walk each time
        serve_env = {**env, "NEXTSTEP_DATABASE_URL": f"sqlite:///{home / f'service{k}.db'}"}
        if exploration is not None:
            serve_env["NEXTSTEP_EXPLORATION"] = exploration
        results.append(
            serve_and_roll_out(world, data, home / f"rollout{k}.json", users, seed, serve_env)
        )
    first = results[0]
    if len(explorations) > 1:
        first["exploration"] = {
            (e or "default"): {
                "conversion": r["result"]["conversion"],
                "se": r["result"]["se"],
                "ratio_to_optimum": r["ratio_to_optimum"],
            }
            for e, r in zip(explorations, results, strict=True)
        }
    return first


def serve_and_roll_out(
    world: str, data: Path, out: Path, users: int, seed: int, env: dict[str, str]
) -> dict:
    """Start ``nextstep serve`` on the promoted model, walk ``users`` new users through it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [NS, "serve", "--catalog", str(data / "catalog.yaml"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(base, proc)
        ns(
            env,
            "rollout",
            "--world",
            world,
            "--base",
            base,
            "--users",
            str(users),
            "--seed",
            str(seed + 1000),
            "--json",
            str(out),
        )
        return json.loads(out.read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="ladder,eager,two_goals")
    ap.add_argument("--family", type=int, default=0, help="random worlds 0..N-1 instead")
    ap.add_argument("--first", type=int, default=0, help="first random world's seed")
    ap.add_argument("--http-worlds", type=int, default=5, help="random worlds served over HTTP")
    ap.add_argument("--train-users", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--fit",
        choices=FITS,
        default="every-row",
        help="family: the models fitted on every row, or as `nextstep train` fits them",
    )
    args = ap.parse_args(argv)
    if args.family:
        out = args.out or ROOT / "benchmarks" / "quality_family.json"
        seeds = range(args.first, args.first + args.family)
        return run_family(
            seeds, args.train_users, args.users, args.http_worlds, out, run_world, args.fit
        )
    args.out = args.out or ROOT / "benchmarks" / "quality.json"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds.split(","):
            results[world] = run_world(
                world,
                args.train_users,
                args.users,
                args.seed,
                Path(tmp),
                explorations=(None, "none"),
            )
    args.out.write_text(json.dumps(results, indent=2))
    print(
        f"\n{'world':10} {'planner':>16} {'optimum':>8} {'blind':>8} {'ladder':>8} "
        f"{'big_ask':>8} {'random':>8} {'ratio':>6} {'+SE':>6} inv err {'no-explore':>10}"
    )
    for world, r in results.items():
        res, ref = r["result"], r["reference"]
        print(
            f"{world:10} {res['conversion']:.4f} ± {res['se']:.4f} {ref['optimum']:8.4f} "
            f"{ref['type_blind']:8.4f} {ref['ladder']:8.4f} {ref['big_ask']:8.4f} "
            f"{ref['random']:8.4f} {r['ratio_to_optimum']:6.3f} "
            f"{r['margin_over_best_fixed_se']:6.1f} {res['invalid']:3d} {res['errors']:3d} "
            f"{r['exploration']['none']['ratio_to_optimum']:10.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

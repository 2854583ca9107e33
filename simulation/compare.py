"""``nextstep compare``: offline comparison of policies on a log, one MLflow run per policy.

For every policy (``planner``, ``greedy``, ``ladder``, ``big_ask``, ``random``, each optionally
with exploration, e.g. ``greedy+epsilon=0.1``) ``evaluation.offpolicy`` replays the log user by
user and asks the policy for its distribution at every logged offer. Then:

(a) **accept rate**, one step: IPW and SNIPW (and DM, DR, SNDR with the readiness model as the
    reward model) from ``evaluation.ope`` with bootstrap intervals. Headline: **SNIPW**. It needs
    no model, so it stays honest when the model was trained on this very log (DR's correction
    term is biased by an in-sample model). With an out-of-sample model on simulator logs, DR
    had the same spread as SNIPW (about 0.014 over 20 seeds, 1,200 offers each); DR is still
    logged next to it.
(b) **conversion** (expected goal worth; the conversion rate when goals carry no value) over
    whole user trajectories: per-decision IS, weighted PDIS and, with a readiness model, the
    doubly robust DR and WDR (``evaluation.trajectory_ope``), a bootstrap over users and the
    effective sample size. Headline: **WDR** with a model, else **WPDIS**. When the weights leave
    too few effective users the estimate is flagged ``low_overlap``: its reported interval is
    then everything the log allows ([0, the largest goal worth]), never a tight, wrong one.
(c) with ``world``: the same policies in the simulator. Policies that need no model are valued
    exactly by dynamic programming (``simulation.simulate.ExactSolver``); model-based ones by
    Monte Carlo with the service's ``Decider`` (``simulation.rollout``); both next to the
    world's exact optimum.

MLflow: a parent run in experiment ``nextstep-compare`` (params, data fingerprint, the chart
``comparison.png``, the table ``comparison.csv`` and the contract JSON ``comparison.json``) with
one nested run per policy (params: the policy config; metrics ``accept_rate*``,
``conversion*``, ``ess``). ``--json`` writes the contract shape,
``{"policies": {name: {"accept_rate": {estimator, value, low, high},
"conversion": {estimator, value, low, high, ess, low_overlap}}}}``.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.offpolicy import (
    MAX_WEIGHT,
    Decisions,
    OneStep,
    Trajectory,
    build_policy,
    evaluate_log,
    needs_model,
    one_step,
    trajectory,
)
from features.catalog import Catalog, load_catalog
from features.errors import InputError
from features.events import EventLog, load_events
from features.state import UserState
from models.decide import Decider
from models.policies import PolicyConfig
from models.policy_base import DecisionInput
from models.registry import DEFAULT_MODEL_URI
from simulation.regret import RegretMeter
from simulation.rollout import InProcess, Metered, run_users
from simulation.simulate import START, ExactSolver, TypeBlindReference
from simulation.worlds import load_world
from training import tracking
from training.modelio import ModelNotFoundError, load_scorer
from training.pipeline import fingerprint
from training.truth import feature_context_columns

ROLLOUT_USERS = 2000  # simulated users per model-based policy with --world
CHART = "comparison.png"
TABLE = "comparison.csv"
RESULT = "comparison.json"

Progress = Callable[[str, int, int], None]  # (what, done, total)


class CompareError(InputError):
    """The comparison cannot run as asked (bad policy list, world and catalog differ...)."""


# -- results -----------------------------------------------------------------------------------
@dataclass
class PolicyResult:
    """Everything measured for one policy."""

    name: str
    config: PolicyConfig
    accept_rate: OneStep
    conversion: Trajectory
    simulated: dict[str, Any] | None = None  # conversion, se, method, users (+ regret, regret_se)

    def params(self) -> dict[str, Any]:
        c = self.config
        return {
            "policy": self.name,
            "policy_name": c.name,
            "exploration": c.exploration or "none",
            "exploration_value": c.value if c.exploration else 0.0,
            "accept_rate_estimator": self.accept_rate.headline.estimator,
            "conversion_estimator": self.conversion.headline.estimator,
            "max_weight": self.conversion.max_weight,
        }

    def metrics(self) -> dict[str, float]:
        a, c = self.accept_rate, self.conversion
        out = {
            "accept_rate": a.headline.value,
            "accept_rate_low": a.headline.low,
            "accept_rate_high": a.headline.high,
            "accept_rate_ess": a.ess,
            "conversion": c.headline.value,
            "conversion_low": c.headline.low,
            "conversion_high": c.headline.high,
            "conversion_clipped_share": c.clipped_share,
            "conversion_supported_share": c.supported_share,
            "conversion_low_overlap": float(c.low_overlap),
            "ess": c.ess,
        }
        for name, est in a.estimates.items():
            out.update({f"accept_rate_{name}{s}": est[k] for k, s in _SUFFIX.items()})
        for name, est in c.estimates.items():
            out.update({f"conversion_{name}{s}": est[k] for k, s in _SUFFIX.items()})
        if self.simulated is not None:
            out["conversion_simulated"] = self.simulated["conversion"]
            out["conversion_simulated_se"] = self.simulated["se"]
            if "regret" in self.simulated:  # Monte Carlo only: an exact value needs none
                out["regret_simulated"] = self.simulated["regret"]
                out["regret_simulated_se"] = self.simulated["regret_se"]
        return out


_SUFFIX = {"value": "", "low": "_low", "high": "_high"}


@dataclass
class Comparison:
    """The result of ``compare_log``: per policy, plus what the log looked like."""

    policies: dict[str, PolicyResult]
    rows: int
    users: int
    excluded_rows: int
    excluded_users: int
    ineligible_rows: int  # logged offers the catalog rules make ineligible (no policy makes them)
    logged_accept_rate: float
    logged_conversion: float
    reward_model: bool
    n_boot: int
    seed: int
    max_weight: float
    world: str | None = None
    optimum: float | None = None
    model_version: str | None = None
    organic_rows: int = 0  # organic outcomes folded into states, not evaluated

    def to_json(self) -> dict[str, Any]:
        """The contract shape (docs/design.md section 5), nothing more."""
        return {
            "policies": {
                name: {
                    "accept_rate": r.accept_rate.headline.as_dict(),
                    "conversion": r.conversion.headline.as_dict(),
                }
                for name, r in self.policies.items()
            }
        }

    def table(self) -> pd.DataFrame:
        """One row per policy: headline estimates, every estimator, ESS, simulated values."""
        records = []
        for name, r in self.policies.items():
            a, c = r.accept_rate, r.conversion
            rec: dict[str, Any] = {
                "policy": name,
                "accept_rate_estimator": a.headline.estimator,
                "conversion_estimator": c.headline.estimator,
                **r.metrics(),
            }
            if r.simulated is not None:
                rec["simulated_method"] = r.simulated["method"]
                rec["simulated_users"] = r.simulated.get("users")
                rec["optimum"] = self.optimum
            records.append(rec)
        return pd.DataFrame.from_records(records)


# -- the comparison ------------------------------------------------------------------------------
def parse_policies(texts: Sequence[str]) -> list[str]:
    """Strip, drop empties, reject duplicates and an empty list; validate every name."""
    names = [t.strip() for t in texts if t and t.strip()]
    if not names:
        raise CompareError("give at least one policy, e.g. --policies planner,ladder")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CompareError(f"--policies: {name!r} is listed twice")
        seen.add(name)
    needs_model(names)  # raises a clear error for unknown names or bad exploration values
    return names


def compare_log(
    log: EventLog,
    catalog: Catalog,
    policies: Sequence[str],
    *,
    scorer: Any | None = None,
    model_version: str | None = None,
    context_columns: Sequence[str] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    max_weight: float = MAX_WEIGHT,
    world: Any | None = None,
    rollout_users: int = ROLLOUT_USERS,
    missing_propensity: str = "error",
    progress: Progress | None = None,
) -> Comparison:
    """Off-policy estimates (and, with ``world``, simulated values) of every policy.

    No MLflow, no printing: usable from notebooks and tests. ``world`` is a
    ``simulation.worlds.World`` (or its name) whose catalog must be ``catalog``.
    """
    names = parse_policies(policies)
    if world is not None and isinstance(world, str):
        world = load_world(world)
    if world is not None:
        check_world_catalog(world, catalog)
    built = {name: build_policy(name, catalog, scorer) for name in names}
    if context_columns is None:
        context_columns = default_context_columns(log)
    step_progress = None if progress is None else (lambda d, t: progress("replaying the log", d, t))
    dec = evaluate_log(
        log.frame,
        catalog,
        {name: policy for name, (_config, policy) in built.items()},
        scorer=scorer,
        context_columns=context_columns,
        missing_propensity=missing_propensity,
        source=log.source,
        progress=step_progress,
    )
    results: dict[str, PolicyResult] = {}
    for name, (config, _policy) in built.items():
        results[name] = PolicyResult(
            name=name,
            config=config,
            accept_rate=one_step(dec, name, n_boot=n_boot, seed=seed),
            conversion=trajectory(dec, name, n_boot=n_boot, seed=seed, max_weight=max_weight),
        )
    comp = _summary(dec, results, n_boot=n_boot, seed=seed, max_weight=max_weight)
    comp.model_version = model_version
    if world is not None:
        sims, optimum = simulate_policies(
            world,
            {name: config for name, (config, _p) in built.items()},
            scorer,
            users=rollout_users,
            seed=seed,
            progress=progress,
        )
        for name, sim in sims.items():
            results[name].simulated = sim
        comp.world, comp.optimum = world.name, optimum
    return comp


def _summary(
    dec: Decisions, results: dict[str, PolicyResult], *, n_boot: int, seed: int, max_weight: float
) -> Comparison:
    any_result = next(iter(results.values()))
    return Comparison(
        policies=results,
        rows=dec.n_rows,
        users=dec.n_users,
        excluded_rows=dec.excluded_rows,
        excluded_users=dec.excluded_users,
        organic_rows=dec.organic_rows,
        ineligible_rows=int((~dec.logged_eligible).sum()),
        logged_accept_rate=float(dec.reward.mean()),
        logged_conversion=any_result.conversion.extra["logged_conversion"],
        reward_model=dec.has_reward_model,
        n_boot=n_boot,
        seed=seed,
        max_weight=max_weight,
    )


def default_context_columns(log: EventLog) -> list[str]:
    """The log's context columns, without the simulator's truth columns."""
    return feature_context_columns(log.context_columns)


def check_world_catalog(world: Any, catalog: Catalog) -> None:
    """The world's catalog must be the evaluated catalog (ids, stages, efforts, requires)."""

    def key(c: Catalog) -> list[tuple[Any, ...]]:
        return [(s.id, s.stage, float(s.effort), float(s.value), tuple(s.requires)) for s in c]

    if getattr(world, "shift", None) is not None:
        raise CompareError(
            f"--world {world.name}: its users change part-way (shift:), so no single value "
            "compares the policies; compare in a world without a shift"
        )
    if key(world.catalog) != key(catalog):
        raise CompareError(
            f"--world {world.name}: its catalog differs from --catalog; simulate the log "
            "with this world or pass the matching catalog"
        )


# -- simulated rollouts --------------------------------------------------------------------------
def exact_policy(policy: Any) -> Callable[[Catalog, Any, list[int]], list[tuple[int, float]]]:
    """A ``models.policy_base`` policy that needs no model, as ``ExactSolver``'s policy type.

    Such policies only look at the catalog and the eligible steps, so the accepted-steps mask
    of the simulator's state is all they need.
    """

    def choose(catalog: Catalog, state: Any, eligible: list[int]) -> list[tuple[int, float]]:
        inp = DecisionInput(catalog, UserState(accepted_mask=state[0]), list(eligible), 0.0)
        probs = policy(inp).probs
        return [(s, float(p)) for s, p in zip(eligible, probs, strict=True) if p > 0]

    return choose


def simulate_policies(
    world: Any,
    configs: Mapping[str, PolicyConfig],
    scorer: Any | None,
    *,
    users: int = ROLLOUT_USERS,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[dict[str, dict[str, Any]], float]:
    """``({name: {conversion, se, method, users}}, exact optimum)`` in ``world``."""
    solver = ExactSolver(world)
    reference = TypeBlindReference(world, solver)
    weights = world.weights
    optimum = sum(
        w * solver.optimal_value_fn(t)(START) for t, w in zip(world.types, weights, strict=True)
    )
    out: dict[str, dict[str, Any]] = {}
    label = f"simulating in world {world.name}"
    for k, (name, config) in enumerate(configs.items()):
        if progress is not None:
            progress(label, k, len(configs))
        policy = config.build()
        if not policy.needs_model:
            fn = exact_policy(policy)
            value = sum(
                w * solver.policy_value_fn(t, fn)(START)
                for t, w in zip(world.types, weights, strict=True)
            )
            out[name] = {"conversion": float(value), "se": 0.0, "method": "exact", "users": None}
            continue
        if scorer is None:
            raise CompareError(f"--policies: {name!r} needs a model to be simulated")
        decider = Decider(world.catalog, config, scorer=scorer, seed=seed)
        meter = RegretMeter(world, reference)  # every decision scored too (simulation.regret)
        walk = Metered(world, InProcess(world, decider).choose, meter)
        res = run_users(world, users, seed, walk, prefix="c")
        regret, regret_se = meter.summary()
        out[name] = {
            "conversion": res.conversion,
            "se": res.se,
            "method": "monte_carlo",
            "users": users,
            "regret": regret,
            "regret_se": regret_se,
        }
    if progress is not None:
        progress(label, len(configs), len(configs))
    return out, float(optimum)


# -- chart and MLflow ----------------------------------------------------------------------------
def plot_comparison(comp: Comparison, path: Path) -> Path:
    """Bars with 95% interval whiskers: accept rate and conversion per policy (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(comp.policies)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) + 4), 4.5))
    panels = (
        ("accept rate (one step)", [comp.policies[n].accept_rate.headline for n in names]),
        ("conversion (trajectories)", [comp.policies[n].conversion.headline for n in names]),
    )
    for ax, (title, ests) in zip(axes, panels, strict=True):
        values = np.array([e.value for e in ests])
        err = np.array([[e.value - e.low for e in ests], [e.high - e.value for e in ests]])
        ax.bar(x, values, yerr=np.clip(err, 0, None), capsize=4, color="#4c72b0", alpha=0.85)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(f"{title}: {ests[0].estimator}")
        ax.set_ylim(0, max(1.0, float(np.max(values + err[1])) * 1.05))
        ax.grid(axis="y", alpha=0.3)
    conv_ax = axes[1]
    sims = [(i, comp.policies[n].simulated) for i, n in enumerate(names)]
    sims = [(i, s) for i, s in sims if s is not None]
    if sims:
        conv_ax.errorbar(
            [i for i, _ in sims],
            [s["conversion"] for _, s in sims],
            yerr=[1.96 * s["se"] for _, s in sims],
            fmt="D",
            color="black",
            label=f"simulated ({comp.world})",
        )
    if comp.optimum is not None:
        conv_ax.axhline(comp.optimum, ls="--", color="#c44e52", label="optimum (exact)")
    if sims or comp.optimum is not None:
        conv_ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"nextstep compare: {comp.rows} offers of {comp.users} users")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_comparison(
    comp: Comparison,
    *,
    fingerprint: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    run_name: str = "compare",
) -> str:
    """One parent run with the chart and table, one nested run per policy; the parent's id."""
    mlflow = tracking.setup()
    exp_id = tracking.experiment_id(tracking.EXPERIMENT_COMPARE)
    fp = dict(fingerprint or {})
    parent_params: dict[str, Any] = {
        "policies": ",".join(comp.policies)[:500],
        "n_policies": len(comp.policies),
        "n_boot": comp.n_boot,
        "seed": comp.seed,
        "max_weight": comp.max_weight,
        "accept_rate_estimator": "snipw",
        "conversion_estimator": _conversion_estimator(comp),
        "reward_model": comp.reward_model,
        "model_version": comp.model_version or "-",
        "world": comp.world or "-",
        "rows": comp.rows,
        "users": comp.users,
        "excluded_rows": comp.excluded_rows,
        "excluded_users": comp.excluded_users,
        **{f"data_{k}": str(v)[:480] for k, v in fp.items()},
        **dict(params or {}),
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as parent:
        mlflow.set_tags({"nextstep.kind": "compare", "nextstep.data_sha256": fp.get("sha256", "-")})
        mlflow.log_params(parent_params)
        parent_metrics = {
            "logged_accept_rate": comp.logged_accept_rate,
            "logged_conversion": comp.logged_conversion,
            "ineligible_rows": float(comp.ineligible_rows),
        }
        if comp.optimum is not None:
            parent_metrics["conversion_optimum"] = comp.optimum
        mlflow.log_metrics(parent_metrics)
        for name, r in comp.policies.items():
            with mlflow.start_run(experiment_id=exp_id, run_name=name, nested=True):
                mlflow.set_tags({"nextstep.kind": "compare-policy", "nextstep.policy": name})
                mlflow.log_params(
                    {
                        **r.params(),
                        "model_version": comp.model_version or "-",
                        "world": comp.world or "-",
                    }
                )
                metrics = r.metrics()
                if comp.optimum is not None and r.simulated is not None:
                    metrics["conversion_optimum"] = comp.optimum
                mlflow.log_metrics(_finite(metrics))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            plot_comparison(comp, folder / CHART)
            comp.table().to_csv(folder / TABLE, index=False)
            (folder / RESULT).write_text(json.dumps(comp.to_json(), indent=2), encoding="utf-8")
            for name in (CHART, TABLE, RESULT):
                mlflow.log_artifact(str(folder / name))
        return str(parent.info.run_id)


def _conversion_estimator(comp: Comparison) -> str:
    """The conversion headline's estimator name (the same for every policy of a comparison)."""
    return next(iter(comp.policies.values())).conversion.headline.estimator


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


# -- printing and the command ----------------------------------------------------------------------
def print_table(comp: Comparison, console: Any | None = None) -> None:
    """A rich table of the headline estimates (and simulated values with a world)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:  # piped output has no width: do not squeeze the table into 80 columns
        console = Console() if sys.stdout.isatty() else Console(width=140)
    t = Table(title=f"nextstep compare: {comp.rows} offers of {comp.users} users")
    t.add_column("policy")
    t.add_column("accept rate (snipw) [95% CI]", justify="right")
    if comp.reward_model:
        t.add_column("accept rate (dr)", justify="right")
    t.add_column(f"conversion ({_conversion_estimator(comp)}) [95% CI]", justify="right")
    t.add_column("ESS users", justify="right")
    if comp.world is not None:
        t.add_column(f"simulated in {comp.world}", justify="right")
        t.add_column("vs optimum", justify="right")
        t.add_column("regret per user", justify="right")
    for name, r in comp.policies.items():
        a, c = r.accept_rate.headline, r.conversion.headline
        row = [name, f"{a.value:.3f} [{a.low:.3f}, {a.high:.3f}]"]
        if comp.reward_model:
            row.append(f"{r.accept_rate.estimates['dr']['value']:.3f}")
        conv = (
            f"{c.value:.3f} untrusted: low overlap"
            if r.conversion.low_overlap
            else f"{c.value:.3f} [{c.low:.3f}, {c.high:.3f}]"
        )
        row += [conv, f"{r.conversion.ess:.1f}"]
        if comp.world is not None:
            s = r.simulated or {}
            se = f" ± {s['se']:.3f}" if s.get("method") == "monte_carlo" else " (exact)"
            row.append(f"{s.get('conversion', math.nan):.3f}{se}")
            ratio = s.get("conversion", math.nan) / comp.optimum if comp.optimum else math.nan
            row.append(f"{ratio:.2f}")
            row.append(f"{s['regret']:.4f} ± {s['regret_se']:.4f}" if "regret" in s else "")
        t.add_row(*row)
    if comp.world is not None and comp.optimum is not None:
        filler = [""] * (3 + int(comp.reward_model))
        t.add_row("optimum (type-aware)", *filler, f"{comp.optimum:.3f} (exact)", "1.00", "")
    console.print(t)
    notes = [
        f"logged: accept rate {comp.logged_accept_rate:.3f}, "
        f"conversion {comp.logged_conversion:.3f}",
    ]
    if math.isfinite(comp.max_weight):
        notes.append(f"trajectory weights clipped at {comp.max_weight:g}")
    untrusted = [n for n, r in comp.policies.items() if r.conversion.low_overlap]
    if untrusted:
        notes.append(
            f"conversion of {', '.join(untrusted)} cannot be trusted: too little overlap with "
            "the logged policy (ESS below the minimum); its interval is reported as [0, max]"
        )
    if comp.excluded_rows:
        notes.append(
            f"left out {comp.excluded_users} users ({comp.excluded_rows} offers) with an offer "
            "lacking a logged propensity"
        )
    if comp.ineligible_rows:
        notes.append(f"{comp.ineligible_rows} logged offers were not eligible under the catalog")
    if not comp.reward_model:
        notes.append("no readiness model: DM, DR and SNDR not computed")
    console.print("; ".join(notes))


def compare_command(
    events: Path,
    catalog: Path,
    policies: Sequence[str],
    json_out: Path | None = None,
    world: str | None = None,
    model: str = DEFAULT_MODEL_URI,
    n_boot: int = 200,
    seed: int = 0,
    skip_invalid: bool = False,
    rollout_users: int = ROLLOUT_USERS,
    max_weight: float = MAX_WEIGHT,
) -> Comparison:
    """CLI entry point (``nextstep compare``).

    The table is printed and ``--json`` written before anything is sent to MLflow, so a
    tracking problem never loses the numbers. Rows without a logged propensity are an error;
    with ``--skip-invalid`` their users are left out (and counted).
    """
    from rich.console import Console

    names = parse_policies(policies)
    if json_out is not None and not Path(json_out).parent.exists():
        raise CompareError(f"--json: directory {Path(json_out).parent} does not exist")
    err = Console(stderr=True)
    cat = load_catalog(catalog)
    w = None
    if world is not None:
        w = load_world(world)
        check_world_catalog(w, cat)
    log = load_events(events, cat, skip_invalid=skip_invalid)
    if log.n_skipped:
        detail = ", ".join(f"{k} {v}" for k, v in log.skipped.items())
        err.print(f"skipped {log.n_skipped} invalid rows ({detail})")
    scorer, version = None, None
    try:
        scorer, version = load_scorer(model, cat)
    except ModelNotFoundError as exc:
        if needs_model(names):
            raise
        err.print(f"no readiness model ({exc}); estimating without a reward model")
    with _progress(err) as progress:
        comp = compare_log(
            log,
            cat,
            names,
            scorer=scorer,
            model_version=version,
            n_boot=n_boot,
            seed=seed,
            world=w,
            rollout_users=rollout_users,
            max_weight=max_weight,
            missing_propensity="exclude" if skip_invalid else "error",
            progress=progress,
        )
    print_table(comp)
    if json_out is not None:
        Path(json_out).write_text(
            json.dumps(comp.to_json(), indent=2, allow_nan=False), encoding="utf-8"
        )
        print(f"wrote {json_out}")
    run_id = log_comparison(
        comp,
        fingerprint=fingerprint(log, cat),
        params={"model_uri": model, "skip_invalid": skip_invalid, "rollout_users": rollout_users},
    )
    print(f"logged to MLflow experiment nextstep-compare, run {run_id}")
    return comp


class _progress:
    """A transient rich progress bar on stderr, driven by ``(what, done, total)`` callbacks."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def __enter__(self) -> Progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress(
            *Progress.get_default_columns()[:1],
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.__enter__()
        self.tasks: dict[str, Any] = {}
        return self._update

    def _update(self, what: str, done: int, total: int) -> None:
        task = self.tasks.get(what)
        if task is None:
            task = self.tasks[what] = self.bar.add_task(what, total=total)
        self.bar.update(task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

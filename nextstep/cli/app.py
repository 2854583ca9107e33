"""The ``nextstep`` command line (docs/design.md section 5, a contract).

Every command imports its implementation lazily, so ``nextstep --help`` stays fast (MLflow,
LightGBM and pandas cost seconds to import). Every deliberate error is an ``InputError``
subclass and becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from features.errors import NextstepError  # imports nothing
from models.registry import DEFAULT_MODEL_URI  # a constant: imports nothing

app = typer.Typer(
    name="nextstep",
    help="Adaptive next-step recommender: simulate, train, evaluate, compare and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nextstep")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"nextstep {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    trust_registry: Annotated[
        bool,
        typer.Option(
            "--trust-registry",
            help=(
                "Allow loading a model's pickled (joblib) bundle when it has no serving "
                "artifact. Unpickling runs code: only for a registry only you can write to."
            ),
        ),
    ] = False,
) -> None:
    """Adaptive next-step recommender: simulate, train, evaluate, compare and serve."""
    from training import modelio  # start-up: only when a command runs, not for --help

    modelio.TRUST_REGISTRY = trust_registry


def _friendly_errors(fn: F) -> F:
    """Turn nextstep's own errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NextstepError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


REFUSED_EXIT_CODE = 1


def _exit_if_refused(decision: str) -> None:
    """One rule for ``train --promote``, ``retrain`` and ``promote``: a refused promotion is not
    an input error, but a script must be able to tell it from success, so it exits 1 (the
    reason is already printed)."""
    if decision == "refused":
        raise typer.Exit(code=REFUSED_EXIT_CODE)


EventsOpt = Annotated[Path, typer.Option("--events", help="Event log (CSV or Parquet).")]
CatalogOpt = Annotated[Path, typer.Option("--catalog", help="Step catalog (YAML or JSON).")]
SkipOpt = Annotated[
    bool, typer.Option("--skip-invalid", help="Drop and count invalid rows instead of failing.")
]
DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask",
        help="Run on Dask: 'local' (a LocalCluster) or a scheduler address; --events may then "
        "be a directory or glob of Parquet/CSV files.",
    ),
]


@app.command()
@_friendly_errors
def simulate(
    world: Annotated[
        str,
        typer.Option(
            help="Built-in world name, random:SEED (the random family) or a world YAML file."
        ),
    ],
    users: Annotated[int, typer.Option(min=1, help="Number of simulated users.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("data"),
    exact: Annotated[bool, typer.Option(help="Also print the exact policy values.")] = False,
) -> None:
    """Write events.csv and catalog.yaml from the built-in funnel simulator."""
    from simulation.simulate import simulate_command  # start-up: imported when the command runs

    simulate_command(world=world, users=users, seed=seed, out=out, exact=exact)


@app.command()
@_friendly_errors
def validate(
    events: EventsOpt,
    catalog: CatalogOpt,
    skip_invalid: SkipOpt = False,
) -> None:
    """Check a catalog and an event log against the contract and print a summary."""
    from nextstep.cli.validate import validate_command  # start-up: imported when the command runs

    validate_command(events=events, catalog=catalog, skip_invalid=skip_invalid)


@app.command()
@_friendly_errors
def train(
    events: EventsOpt,
    catalog: CatalogOpt,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "nextstep-train",
    promote: Annotated[
        bool, typer.Option(help="Move alias 'champion' to the new version if it passes the gate.")
    ] = False,
    dask: Annotated[
        str | None, typer.Option(help="Train on Dask: 'local' or a scheduler address.")
    ] = None,
    skip_invalid: SkipOpt = False,
    tolerance: Annotated[
        float, typer.Option(help="Promotion gate: allowed holdout log-loss increase.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    policy_gate: Annotated[
        bool,
        typer.Option(
            help="Promotion gate: also require the recommended policy to be no worse than the "
            "champion's by trajectory OPE on the holdout."
        ),
    ] = False,
    holdout_from: Annotated[
        str | None,
        typer.Option(
            help="Calendar cut (ISO-8601 or epoch seconds): offers at or after it are the "
            "holdout, none of them trains."
        ),
    ] = None,
    holdout_fraction: Annotated[
        float | None,
        typer.Option(
            help="Holdout size: the cut is the time that starts the last F of the offers "
            "(default 0.2); with --holdout-by arrival, the latest users making up F of the rows."
        ),
    ] = None,
    holdout_by: Annotated[
        str,
        typer.Option(help="'time' (calendar cut) or 'arrival' (the latest-arriving whole users)."),
    ] = "time",
    step_feature: Annotated[
        bool,
        typer.Option(
            help="Give the readiness model the step id as a categorical feature, next to the "
            "step's attributes (a step new to the log keeps the attributes' prior)."
        ),
    ] = True,
    readiness_model: Annotated[
        str,
        typer.Option(
            help="Readiness model the bundle serves: 'lightgbm' (default), 'logistic', or "
            "'auto' (the logistic baseline when its holdout log loss is lower than LightGBM's; "
            "the planner can decide much worse with it)."
        ),
    ] = "lightgbm",
    refit: Annotated[
        bool,
        typer.Option(
            help="After the holdout has measured the models, fit the served ones again on every "
            "row, holdout included. The champion then has seen the next run's holdout, so the "
            "gate favours it; for one-off fits, not for retraining on overlapping logs."
        ),
    ] = False,
) -> None:
    """Build features, fit and evaluate the models, log to MLflow and register a version."""
    from nextstep.cli.commands import train_command  # start-up: imported when the command runs

    result = train_command(
        policy_gate=policy_gate,
        events=events,
        catalog=catalog,
        experiment=experiment,
        promote=promote,
        dask=dask,
        skip_invalid=skip_invalid,
        tolerance=tolerance,
        seed=seed,
        holdout_by=holdout_by,
        holdout_fraction=holdout_fraction,
        holdout_from=holdout_from,
        step_feature=step_feature,
        readiness_model=readiness_model,
        refit=refit,
    )
    _exit_if_refused(result.decision)


@app.command()
@_friendly_errors
def predict(
    events: EventsOpt,
    catalog: CatalogOpt,
    out: Annotated[Path, typer.Option(help="Output CSV or Parquet.")],
    model: Annotated[str, typer.Option(help="Model URI.")] = DEFAULT_MODEL_URI,
    skip_invalid: SkipOpt = False,
    dask: DaskOpt = None,
) -> None:
    """Readiness of every logged offer from that user's earlier rows only."""
    from nextstep.cli.commands import predict_command  # start-up: imported when the command runs

    predict_command(
        events=events, catalog=catalog, out=out, model=model, skip_invalid=skip_invalid, dask=dask
    )


@app.command()
@_friendly_errors
def recommend(
    events: EventsOpt,
    catalog: CatalogOpt,
    out: Annotated[Path, typer.Option(help="Output CSV or Parquet.")],
    policy: Annotated[str, typer.Option(help="Policy name.")] = "planner",
    model: Annotated[str, typer.Option(help="Model URI.")] = DEFAULT_MODEL_URI,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    skip_invalid: SkipOpt = False,
    dask: DaskOpt = None,
    candidates_column: Annotated[
        str | None,
        typer.Option(
            help="Log column with each user's allowed step ids ('a|b', 'a,b' or a JSON list); "
            "the latest non-empty value per user restricts the choice."
        ),
    ] = None,
) -> None:
    """Batch decisions: for each user, the state after their history and the next step."""
    from nextstep.cli.commands import recommend_command  # start-up: imported when the command runs

    recommend_command(
        events=events,
        catalog=catalog,
        out=out,
        policy=policy,
        model=model,
        seed=seed,
        skip_invalid=skip_invalid,
        dask=dask,
        candidates_column=candidates_column,
    )


@app.command()
@_friendly_errors
def ope(
    input: Annotated[Path, typer.Option("--input", help="CSV or Parquet with per-row columns.")],
    n_boot: Annotated[int, typer.Option(min=0, help="Bootstrap resamples.")] = 200,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Off-policy estimates (IPW, SNIPW, DM, DR, SNDR) with bootstrap intervals, as JSON."""
    from evaluation.ope import ope_command  # start-up: imported when the command runs

    ope_command(input=input, n_boot=n_boot, seed=seed)


@app.command()
@_friendly_errors
def compare(
    events: EventsOpt,
    catalog: CatalogOpt,
    policies: Annotated[str, typer.Option(help="Comma-separated policy names.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    world: Annotated[
        str | None, typer.Option(help="Also run exact simulated rollouts in this world.")
    ] = None,
    model: Annotated[str, typer.Option(help="Model URI.")] = DEFAULT_MODEL_URI,
    n_boot: Annotated[int, typer.Option(min=0, help="Bootstrap resamples.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    skip_invalid: SkipOpt = False,
    max_weight: Annotated[
        float,
        typer.Option(
            min=1.0, help="Clip of a user's trajectory importance weight (default: no clip)."
        ),
    ] = math.inf,
    rollout_users: Annotated[
        int, typer.Option(min=1, help="Simulated users per model policy with --world.")
    ] = 2000,
) -> None:
    """Offline comparison of policies on a log, one MLflow run per policy."""
    from simulation.compare import compare_command  # start-up: imported when the command runs

    compare_command(
        events=events,
        catalog=catalog,
        policies=[p.strip() for p in policies.split(",") if p.strip()],
        json_out=json_out,
        world=world,
        model=model,
        n_boot=n_boot,
        seed=seed,
        skip_invalid=skip_invalid,
        max_weight=max_weight,
        rollout_users=rollout_users,
    )


@app.command()
@_friendly_errors
def report(
    since: Annotated[str | None, typer.Option(help="Only decisions at or after this time.")] = None,
    control: Annotated[str | None, typer.Option(help="Control arm (default: the first).")] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog YAML (goals); default: the catalog the service served (kept in its "
            "store), else NEXTSTEP_CATALOG."
        ),
    ] = None,
) -> None:
    """Online experiment report from the service's decision log, logged to MLflow."""
    from loop.report import report_command  # start-up: imported when the command runs

    report_command(since=since, control=control, catalog=catalog)


@app.command()
@_friendly_errors
def serve(
    catalog: CatalogOpt,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow a non-loopback --host without NEXTSTEP_API_KEYS (refused otherwise).",
        ),
    ] = False,
) -> None:
    """The HTTP service, using the registered model's champion."""
    from service.run import serve_command  # start-up: imported when the command runs

    serve_command(catalog=catalog, host=host, port=port, workers=workers, insecure=insecure)


@app.command()
@_friendly_errors
def rollout(
    world: Annotated[
        str,
        typer.Option(
            help="Built-in world name, random:SEED (the random family) or a world YAML file."
        ),
    ],
    users: Annotated[int, typer.Option(min=1, help="Number of simulated users.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    base: Annotated[
        str | None,
        typer.Option(
            help="Base URL of a live service; its X-API-Key is read from NEXTSTEP_API_KEY."
        ),
    ] = None,
    policy: Annotated[str | None, typer.Option(help="Run this policy in process instead.")] = None,
    model: Annotated[str, typer.Option(help="Model URI (in-process policies).")] = (
        DEFAULT_MODEL_URI
    ),
    # No key option: a key given on the command line shows in the process list and the shell
    # history, so the client key comes from the environment only.
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel HTTP users.")] = 8,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Simulated users against a live service or an in-process policy, next to the optimum."""
    import os

    from simulation.rollout import rollout_command  # start-up: imported when the command runs

    rollout_command(
        world=world,
        users=users,
        seed=seed,
        base=base,
        policy=policy,
        model=model,
        api_key=os.environ.get("NEXTSTEP_API_KEY") or None,
        concurrency=concurrency,
        json_out=json_out,
    )


@app.command()
@_friendly_errors
def promote(
    version: Annotated[str, typer.Option(help="Model version to promote.")],
    evidence: Annotated[
        str | None, typer.Option(help="'ope' or 'online': require evidence it is not worse.")
    ] = None,
    margin: Annotated[float, typer.Option(help="Allowed loss (lower bound of difference).")] = 0.0,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog YAML for --evidence; default: the catalog the service served (kept in "
            "its store), else NEXTSTEP_CATALOG."
        ),
    ] = None,
) -> None:
    """Move alias 'champion' to a version when the evidence says it is not worse."""
    from loop.promote import promote_command  # start-up: imported when the command runs

    promote_command(version=version, evidence=evidence, margin=margin, catalog=catalog)


@app.command()
@_friendly_errors
def export(
    out: Annotated[Path, typer.Option(help="Output event log (CSV or Parquet).")],
    since: Annotated[str | None, typer.Option(help="Only rows at or after this time.")] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog YAML to validate against (default: the catalog the service served, "
            "kept in its store, else NEXTSTEP_CATALOG)."
        ),
    ] = None,
    wait_hours: Annotated[
        float, typer.Option(help="Hours after which a decision without outcome is 'no response'.")
    ] = 72.0,
    no_response: Annotated[
        str, typer.Option(help="No-response rule: 'ignore' (leave out) or 'declined'.")
    ] = "ignore",
) -> None:
    """The service's decisions and outcomes as an event log (section 4 format)."""
    from loop.export import export_command  # start-up: imported when the command runs

    export_command(
        out=out, since=since, catalog=catalog, wait_hours=wait_hours, no_response=no_response
    )


@app.command()
@_friendly_errors
def retrain(
    catalog: CatalogOpt,
    since: Annotated[str | None, typer.Option(help="Only rows at or after this time.")] = None,
    tolerance: Annotated[float, typer.Option(help="Promotion gate tolerance.")] = 0.0,
) -> None:
    """Export, train, gate and promote in one step."""
    from nextstep.cli.retrain import retrain_command  # start-up: imported when the command runs

    _exit_if_refused(retrain_command(catalog=catalog, since=since, tolerance=tolerance).decision)


@app.command()
@_friendly_errors
def learn(
    catalog: CatalogOpt,
    every: Annotated[
        str, typer.Option(help="Run a cycle when this much time passed since the last (6h, 30m).")
    ] = "6h",
    min_outcomes: Annotated[
        int | None,
        typer.Option(help="... or when this many outcomes arrived after the last data window."),
    ] = None,
    window: Annotated[
        str, typer.Option(help="Train on this much event time back from the newest event.")
    ] = "14d",
    max_cycles: Annotated[
        int | None, typer.Option(help="Stop after this many cycles (default: run until stopped).")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run one cycle now and exit (1 when it failed).")
    ] = False,
    margin: Annotated[
        float, typer.Option(help="Gate margin: log loss and planner value may be this much worse.")
    ] = 0.02,
    poll: Annotated[str, typer.Option(help="How often to check whether a cycle is due.")] = "30s",
    backoff: Annotated[
        str, typer.Option(help="Wait after a failed cycle; doubles per failure in a row.")
    ] = "60s",
    backoff_cap: Annotated[str, typer.Option(help="Longest wait after failures.")] = "1h",
    readiness_model: Annotated[
        str,
        typer.Option(
            help="As train --readiness-model (lightgbm, logistic or auto); LightGBM by default."
        ),
    ] = "lightgbm",
    refit: Annotated[
        bool,
        typer.Option(
            "--refit",
            help="As train --refit: register the models fitted again on the whole window once "
            "the holdout has measured them.",
        ),
    ] = False,
) -> None:
    """Retrain, gate and promote on a schedule: the loop without a person in it."""
    from loop.learner import LearnerConfig, learn_command  # start-up

    config = LearnerConfig.from_options(
        every=every,
        min_outcomes=min_outcomes,
        window=window,
        margin=margin,
        poll=poll,
        max_cycles=max_cycles,
        backoff=backoff,
        backoff_cap=backoff_cap,
        readiness_model=readiness_model,
        refit=refit,
    )
    code = learn_command(catalog, config, once=once)
    if code:
        raise typer.Exit(code=code)


@app.command()
@_friendly_errors
def demo(
    world: Annotated[str, typer.Option(help="Built-in world for the demo data.")] = "ladder",
    users: Annotated[int, typer.Option(min=100, help="Simulated users for the demo log.")] = 4000,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    fresh: Annotated[
        bool,
        typer.Option(
            help="Start over: remove the demo data, the local MLflow store and the service store "
            "under NEXTSTEP_HOME first."
        ),
    ] = False,
) -> None:
    """Simulate demo data if missing, train and promote if there is no champion, then serve."""
    from nextstep.cli.demo import demo_command  # start-up: imported when the command runs

    demo_command(world=world, users=users, host=host, port=port, fresh=fresh)


@app.command()
@_friendly_errors
def ui(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """The MLflow UI on nextstep's tracking store (NEXTSTEP_HOME or MLFLOW_TRACKING_URI)."""
    from nextstep.cli.ui import ui_command  # start-up: imported when the command runs

    ui_command(host=host, port=port)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.exit(130)


if __name__ == "__main__":
    main()

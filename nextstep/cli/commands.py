"""The commands ``nextstep train``, ``predict`` and ``recommend``: each reads its inputs, runs
on one machine or on a Dask cluster (``--dask``), then writes and reports.

They sit above both engines: the single-machine code (``training.pipeline``,
``training.predict``, ``training.recommend``) and the Dask code (``training.dask_train``, which
reuses the former's pieces) never import each other's commands, so neither engine depends on
the other.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from evaluation.policy_choice import DEFAULT as DEFAULT_POLICY
from features.catalog import load_catalog
from features.errors import NextstepError
from features.events import load_events
from models.decide import Decider
from models.policies import PolicyConfig
from models.registry import DEFAULT_MODEL_URI
from service.heap import frozen_heap
from training.dask_train import predict_on_dask, recommend_on_dask, train_on_dask
from training.holdout import Holdout
from training.modelio import load_scorer
from training.pipeline import (
    DEFAULT_READINESS,
    STEP_FEATURE,
    Progress,
    TrainResult,
    check_readiness_choice,
    train_log,
)
from training.predict import check_output, predict_frame, write_table
from training.recommend import MODEL_POLICIES, recommend_frame, user_candidates
from training.train_warnings import record_warnings, training_warnings
from training.truth import feature_context_columns


def train_command(
    events: Path,
    catalog: Path,
    experiment: str = "nextstep-train",
    promote: bool = False,
    dask: str | None = None,
    skip_invalid: bool = False,
    tolerance: float = 0.0,
    seed: int = 0,
    policy_gate: bool = False,
    holdout_by: str = "time",
    holdout_fraction: float | None = None,
    holdout_from: str | None = None,
    step_feature: bool = STEP_FEATURE,
    readiness_model: str = DEFAULT_READINESS,
    refit: bool = False,
) -> TrainResult:
    """CLI entry point (``nextstep train``); ``dask`` (``local`` or a scheduler address) trains
    on a Dask cluster instead (``training.dask_train``), logging the same run."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise NextstepError("--tolerance must be a finite number >= 0")
    if policy_gate and dask:
        raise NextstepError("--policy-gate is not available with --dask yet")
    if refit and dask:
        raise NextstepError("--refit is not available with --dask")
    check_readiness_choice(readiness_model)
    split = Holdout.of(holdout_by, holdout_fraction, holdout_from)
    console = Console(stderr=True)
    with _steps(console) as say:
        say("loading the catalog and the event log")
        cat = load_catalog(catalog)
        if dask:
            result, skipped = train_on_dask(
                events,
                cat,
                dask,
                experiment=experiment,
                promote=promote,
                tolerance=tolerance,
                seed=seed,
                skip_invalid=skip_invalid,
                holdout=split,
                step_feature=step_feature,
                progress=say,
                readiness_model=readiness_model,
            )
        else:
            log = load_events(events, cat, skip_invalid=skip_invalid)
            result = train_log(
                log,
                cat,
                experiment=experiment,
                promote=promote,
                tolerance=tolerance,
                seed=seed,
                holdout=split,
                step_feature=step_feature,
                progress=say,
                policy_gate=policy_gate,
                readiness_model=readiness_model,
                refit=refit,
            )
            skipped = log.skipped
    if skipped:
        detail = ", ".join(f"{k} {v}" for k, v in skipped.items())
        console.print(f"skipped {sum(skipped.values())} invalid rows ({detail})")
    _print_summary(result)
    warnings = training_warnings(result.metrics, result.fingerprint, result.readiness_model)
    for w in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(w)}", highlight=False)
    record_warnings(result.run_id, warnings)
    return result


def predict_command(
    events: Path,
    catalog: Path,
    out: Path,
    model: str = DEFAULT_MODEL_URI,
    skip_invalid: bool = False,
    dask: str | None = None,
) -> pd.DataFrame:
    """CLI entry point (``nextstep predict``); ``dask`` (``local`` or a scheduler address)
    reads a file, directory or glob of files and scores it on a Dask cluster."""
    cat = load_catalog(catalog)
    check_output(Path(out))
    scorer, version = load_scorer(model, cat)
    if dask:
        result, n_skipped = predict_on_dask(
            events, cat, scorer.bundle, dask, skip_invalid=skip_invalid
        )
    else:
        log = load_events(events, cat, skip_invalid=skip_invalid)
        result, n_skipped = predict_frame(log.frame, cat, scorer), log.n_skipped
    write_table(result, Path(out), ts_columns=("ts",))
    skipped = f", skipped {n_skipped} invalid rows" if n_skipped else ""
    label = f"version {version}" if version else model
    print(f"wrote {len(result)} predictions ({label}) to {out}{skipped}")
    return result


def recommend_command(
    events: Path,
    catalog: Path,
    out: Path,
    policy: str = "planner",
    model: str = DEFAULT_MODEL_URI,
    seed: int = 0,
    skip_invalid: bool = False,
    dask: str | None = None,
    candidates_column: str | None = None,
) -> pd.DataFrame:
    """CLI entry point (``nextstep recommend``); ``dask`` (``local`` or a scheduler address)
    reads a file, directory or glob of files and decides on a Dask cluster."""
    if candidates_column and dask:
        raise NextstepError("--candidates-column is not available with --dask")
    try:
        config = PolicyConfig.parse(policy)
    except ValueError as exc:
        raise NextstepError(f"--policy: {exc}") from None
    cat = load_catalog(catalog)
    scorer, version = None, None
    if config.name in MODEL_POLICIES:
        scorer, version = load_scorer(model, cat)
    decider = Decider(cat, config, scorer=scorer, model_version=version, seed=seed)
    if dask:
        check_output(Path(out))
        bundle = None if scorer is None else scorer.bundle
        result = recommend_on_dask(
            events, cat, policy, bundle, version, dask, seed=seed, skip_invalid=skip_invalid
        )
        write_table(result, Path(out))
        _say_written(result, decider.policy_name, version, out)
        return result
    log = load_events(events, cat, skip_invalid=skip_invalid)
    ctx = feature_context_columns(log.context_columns)
    per_user = None
    if candidates_column:
        per_user = user_candidates(log.frame, cat, candidates_column, log.source)
        ctx = [c for c in ctx if c != candidates_column]
    n_users = int(log.frame["user_id"].nunique())
    with RichProgress(
        *RichProgress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("deciding", total=n_users)
        with frozen_heap():  # the frame and the model live to the end: GC passes skip them
            result = recommend_frame(
                log.frame,
                cat,
                decider,
                ctx,
                progress=lambda k: bar.update(task, completed=k),
                candidates=per_user,
            )
    write_table(result, Path(out))
    _say_written(result, decider.policy_name, version, out)
    return result


class _steps:
    """A rich progress display of named steps (spinner + elapsed time) on stderr."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def __enter__(self) -> Progress:
        self.progress = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=None)
        return self._say

    def _say(self, message: str) -> None:
        self.progress.update(self.task, description=message)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)


def _print_summary(result: TrainResult) -> None:
    cols = [m for m in ("lgbm", "logreg", "truth") if m in result.metrics]
    t = Table(title=f"nextstep train: holdout of {int(result.metrics['lgbm']['rows'])} offers")
    t.caption = f"holdout: {result.holdout}" if result.holdout else None
    t.add_column("metric")
    for c in cols:
        t.add_column(c, justify="right")
    keys = ["auc", "logloss", "brier", "ece"]
    keys += sorted(k for k in result.metrics["lgbm"] if k.startswith("auc_stage_"))
    for k in keys:
        t.add_row(k, *(_fmt(result.metrics[c].get(k)) for c in cols))
    console = Console()
    console.print(t)
    for col, note in result.context.items():
        console.print(f"context {col}: {note}", markup=False, highlight=False)
    fp = result.fingerprint
    console.print(
        f"data: {fp['rows']} rows, {fp['users']} users, {fp['ts_min']} .. {fp['ts_max']}, "
        f"sha256 {fp['sha256'][:12]}"
    )
    console.print(f"run {result.run_id}, registered model nextstep version {result.version}")
    if result.readiness_model != "lightgbm":
        console.print(
            f"readiness model served: {result.readiness_model}, as --readiness-model asked "
            "(LightGBM by default)"
        )
    alias = f" (alias {', '.join(result.aliases)})" if result.aliases else ""
    console.print(f"promotion: {result.decision}{alias}: {result.reason}")
    if result.recommended_policy is not None:
        trust = (
            ""
            if result.recommended_trusted or result.recommended_policy == DEFAULT_POLICY
            else " (untrusted: too little overlap; the service keeps the planner)"
        )
        console.print(
            "recommended policy (holdout trajectory OPE: the planner unless another is "
            f"confidently better): {result.recommended_policy}{trust}"
        )


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"


def _say_written(result: pd.DataFrame, policy: str, version: str | None, out: Path) -> None:
    offered = int(result["step"].notna().sum())
    label = f", model version {version}" if version else ""
    print(f"wrote {len(result)} decisions ({offered} offers, policy {policy}{label}) to {out}")

"""``nextstep train``: event log -> point-in-time features -> models -> holdout evaluation ->
MLflow run, registered model version and (with ``--promote``) the champion gate.

Choices, so they are written down once:

* **Holdout by calendar time** (``training.holdout``): offers at or after a cut are held out,
  the rest train; the cut is ``--holdout-from`` or the time that starts the last
  ``--holdout-fraction`` of the offers. ``--holdout-by arrival`` holds out the latest-arriving
  whole users instead.
  Features are point-in-time, so computing them on the whole log first leaks nothing: each row
  only sees that user's earlier rows, and a held-out offer keeps its full history.
* **The registered model is the evaluated model** unless ``--refit`` asks otherwise. It is
  fitted on the training rows only; the numbers in the run describe exactly the artifact that
  may be promoted, and a champion never has seen the next run's holdout. ``--refit`` fits the
  served models again on every row once measured (``refit_on_every_row``): in the built-in
  worlds the planner decides better with them (on the random family no better than noise).
  Such a champion has been fitted on most of a later run's holdout, so gates score it only on
  the held-out offers newer than its data (``training.refit_scope``).
* **Promotion gate** (``--promote``): with no champion the new version always becomes
  ``champion``. Otherwise the current champion's bundle is loaded and scored on *this run's*
  holdout; the new version is promoted when its holdout log loss is at most the champion's plus
  ``tolerance``, else it gets alias ``challenger``. The decision and the reason are run tags
  (``nextstep.promotion``, ``nextstep.promotion_reason``), printed, and tags on the version.
  A ``--refit`` champion is scored only on the held-out offers newer than its data, the
  candidate on the same ones (``score_champion``). Caveat: with ``--holdout-by arrival`` a
  plain champion trained on a log containing these holdout users has an optimistic number,
  which errs on the side of keeping the champion.
* **Simulator truth.** A column ``true_p_accept`` (from ``generate_log(with_truth=True)``) is
  never a feature (nor ``user_type`` next to it); it is scored as the reference model ``truth``,
  the best any model could do.
* LightGBM runs single-threaded on fits below ``models.boosting.PARALLEL_ROWS`` rows: on a busy
  2-core machine ``num_threads=2`` was measured 18x slower (OpenMP spin-waiting), for no gain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation import evaluate as ev
from features.catalog import Catalog
from features.drift import META_KEY as DRIFT_META_KEY
from features.errors import NextstepError
from features.events import EventLog, write_events
from features.offline import OfflineFeatures, build_offline_features, typical_gap_hours
from features.spec import FeatureSpec
from features.timeutil import iso_seconds
from features.transitions import goal_worth_earned, logged_transitions
from models.bundle import ModelBundle, ModelScorer, value_model
from models.event_scoring import readiness_of_events
from models.linear import LinearReadiness, is_linear
from models.readiness import LogisticBaseline, fit_bundle
from models.serving import DIGEST_TAG, SERVING_DIR, save_bundle, serving_digest
from training import policy_eval, tracking
from training.context_reference import context_reference
from training.holdout import HOLDOUT_FRACTION, Holdout, arrival_mask, users_with
from training.modelio import load_model_bundle
from training.pyfunc_signature import events_example, events_signature
from training.refit_scope import REFIT_UNTIL, fair_rows
from training.truth import TRUTH_COLUMN, feature_context_columns

# The step_id feature (features.spec), on unless ``--no-step-feature``: on held-out data it
# lowered log loss in every built-in world, in a world of steps alike in attributes and on a
# real log of new cohorts (benchmarks/step_identity.py, benchmarks/real_log.py).
STEP_FEATURE = True
HOLDOUT_ARTIFACT_ROWS = 200_000
MODELS = ("lgbm", "logreg")

Progress = Callable[[str], None]


# -- data preparation ---------------------------------------------------------------------------
def holdout_mask(frame: pd.DataFrame, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """The arrival-order holdout (``training.holdout.arrival_mask``), kept under its old name."""
    return arrival_mask(frame, fraction)


def logged_steps(frame: pd.DataFrame, catalog: Catalog) -> tuple[str, ...]:
    """The steps offered in the log, in catalog order: the values of the ``step_id`` feature."""
    seen = set(frame["step"].unique().tolist())
    return tuple(s for s in catalog.ids if s in seen)


def fingerprint(log: EventLog, catalog: Catalog) -> dict[str, Any]:
    """Rows, users, time range and a SHA-256 of the validated frame's content (any format the
    same frame came from gives the same hash) and of the catalog."""
    frame = log.frame
    body = frame.drop(columns=["row"], errors="ignore")
    h = hashlib.sha256()
    h.update(json.dumps([[c, str(body[c].dtype)] for c in body.columns]).encode())
    h.update(pd.util.hash_pandas_object(body, index=False).to_numpy().tobytes())
    ts = frame["ts"].to_numpy(dtype=np.float64)
    return {
        "rows": len(frame),
        "users": int(frame["user_id"].nunique()),
        "ts_min": iso_seconds(float(ts.min())),
        "ts_max": iso_seconds(float(ts.max())),
        "sha256": h.hexdigest(),
        "catalog_sha256": catalog_hash(catalog),
        "skipped": int(log.n_skipped),
        "source": log.source,
    }


def catalog_hash(catalog: Catalog) -> str:
    text = json.dumps(catalog.to_list(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def features_for(frame: pd.DataFrame, catalog: Catalog, spec: FeatureSpec) -> OfflineFeatures:
    """Point-in-time features with ``spec``'s layout; context columns the frame lacks are
    missing values (a model trained with a context field still scores a log without it)."""
    missing = [c for c in spec.context_columns if c not in frame.columns]
    if missing:
        frame = frame.assign(**{c: pd.Series([None] * len(frame), dtype=object) for c in missing})
    return build_offline_features(frame, catalog, spec)


def score_bundle(
    bundle: ModelBundle, frame: pd.DataFrame, catalog: Catalog, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, p_accept, stage)`` of a bundle on (some rows of) a validated frame."""
    F = features_for(frame, catalog, bundle.spec)
    X, y, step = F.X, F.accepted, F.step_index
    if rows is not None:
        X, y, step = X[rows], y[rows], step[rows]
    p = bundle.readiness.positive_proba(np.ascontiguousarray(X))
    stage = np.asarray(catalog.stage_indices)[step]
    return y.astype(np.int64), p, stage


# -- fitting and evaluation ---------------------------------------------------------------------
@dataclass
class TrainingOutcome:
    """Everything fitted and measured, before anything is logged."""

    bundle: ModelBundle
    baseline: LogisticBaseline
    spec: FeatureSpec
    holdout: np.ndarray  # bool per row of the frame
    metrics: dict[str, dict[str, float]]  # model -> metric -> value ("lgbm", "logreg", "truth")
    y: np.ndarray  # holdout outcomes
    predictions: dict[str, np.ndarray]  # model -> holdout probabilities
    stage: np.ndarray  # holdout stage index per row
    params: dict[str, Any]
    typical_gap_hours: float
    example: pd.DataFrame  # a few holdout feature rows: the pyfunc's input example
    seconds: dict[str, float] = field(default_factory=dict)
    # how the split was made (``Holdout.describe``): recorded in the run and the bundle
    holdout_info: dict[str, Any] = field(
        default_factory=lambda: {"strategy": "time", "fraction": HOLDOUT_FRACTION}
    )
    # fits the served models again on every row, holdout included (``refit_on_every_row``),
    # given the readiness model served; None: the models fitted on the training rows are served.
    # Set only when asked: it keeps the log's whole feature matrix alive until the run is logged
    refit: Callable[[str], ModelBundle] | None = None

    @property
    def train_rows(self) -> int:
        return int((~self.holdout).sum())

    @property
    def holdout_rows(self) -> int:
        return int(self.holdout.sum())


def fit_and_evaluate(
    log: EventLog,
    catalog: Catalog,
    *,
    seed: int = 0,
    holdout: Holdout | None = None,
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    step_feature: bool = STEP_FEATURE,
    refit: bool = False,
) -> TrainingOutcome:
    """Features, holdout split, the bundle (LightGBM) and the logistic baseline, both scored on
    the holdout. No MLflow: usable from notebooks, tests and other commands. With ``refit`` the
    outcome can fit the served models again on every row (``TrainingOutcome.refit``)."""
    say = progress or (lambda _msg: None)
    frame = log.frame
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    say("building point-in-time features")
    split = holdout or Holdout()
    ho = split.mask(frame)
    tr = ~ho
    # the layout is learned from the training rows only: a category or a step first seen in
    # the holdout is new to the model there, as it would be in production
    train_frame = frame.loc[tr]
    spec = FeatureSpec.from_frame(train_frame, feature_context_columns(log.context_columns))
    if step_feature:
        spec = dataclasses.replace(spec, step_ids=logged_steps(train_frame, catalog))
    F = build_offline_features(frame, catalog, spec)
    cut = split.cut(frame["ts"].to_numpy(dtype=np.float64)) if split.strategy == "time" else None
    y_tr = F.accepted[tr]
    if y_tr.min() == y_tr.max():
        raise NextstepError("the training rows have only one outcome; readiness needs both")
    seconds["features"] = time.perf_counter() - t

    fit_params = {**(params or {})}
    t = time.perf_counter()
    say("fitting LightGBM readiness, drop and come-back models and the value model")
    F_tr = F.subset(tr)
    # the value of offers backs up along the training rows' own users (features.transitions)
    bundle = fit_on_every_row(
        train_frame,
        catalog,
        spec,
        F_tr,
        seed=seed,
        params=fit_params,
        users=pd.factorize(frame["user_id"])[0][tr],
    )
    gap = bundle.typical_gap_hours
    seconds["fit_lgbm"] = time.perf_counter() - t
    _store_drift_reference(bundle, F_tr.X, spec)
    t = time.perf_counter()
    say("fitting the logistic-regression baseline")
    baseline = _logistic_baseline(F_tr.X, y_tr, spec, seed)
    seconds["fit_logreg"] = time.perf_counter() - t

    say("evaluating on the holdout")
    X_ho = np.ascontiguousarray(F.X[ho])
    y = F.accepted[ho].astype(np.int64)
    stage = np.asarray(catalog.stage_indices)[F.step_index[ho]]
    preds = {
        "lgbm": bundle.readiness.positive_proba(X_ho),
        "logreg": baseline.predict_proba(X_ho)[:, 1],
    }
    if TRUTH_COLUMN in frame.columns:
        truth = pd.to_numeric(frame[TRUTH_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
        if np.isfinite(truth[ho]).all():
            preds["truth"] = truth[ho]
    metrics = {name: ev.evaluate(y, p, stage) for name, p in preds.items()}
    model_params = {
        k: v for k, v in bundle.readiness.get_params().items() if k not in ("categorical_features",)
    }
    refit_all = (
        functools.partial(refit_on_every_row, frame, catalog, spec, F, seed=seed, params=fit_params)
        if refit
        else None
    )
    finite_rows = np.flatnonzero(np.isfinite(X_ho).all(axis=1))
    pick = finite_rows[:5] if len(finite_rows) >= 5 else np.arange(min(5, len(X_ho)))
    example = pd.DataFrame(X_ho[pick], columns=spec.names)
    return TrainingOutcome(
        bundle=bundle,
        baseline=baseline,
        spec=spec,
        holdout=ho,
        metrics=metrics,
        y=y,
        predictions=preds,
        stage=stage,
        params=model_params,
        typical_gap_hours=gap,
        example=example,
        seconds=seconds,
        holdout_info=split.describe(cut),
        refit=refit_all,
    )


def refit_on_every_row(
    frame: pd.DataFrame,
    catalog: Catalog,
    spec: FeatureSpec,
    F: OfflineFeatures,
    served: str,
    *,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> ModelBundle:
    """The bundle ``train --refit`` serves: the models of ``fit_and_evaluate`` fitted again on
    every row of the log, holdout included, once the holdout has measured them (``served``:
    ``"lgbm"`` or ``"logreg"``, the readiness model ``serve_better_readiness`` chose).

    The holdout is the newest fifth of the log by default, so a model fitted without it ignores
    the offers most like tomorrow's. Paired with the model fitted on the training rows (same
    logs, same new users, planner walked in process), the refit converted 0.014, 0.001 and 0.012
    of the optimum more in the ladder, eager and two_goals worlds (4 logs each; SE 0.007, 0.005,
    0.005), but over ``random:0..59`` only 0.0035 of the type-blind reference more (SE 0.0031;
    better in 20 worlds, worse in 15) and its worst decile there was lower (0.877 against
    0.906): in a world that does not drift, a fifth more of the same data buys little. The
    holdout's metrics and the policy values describe the model fitted without it,
    the honest estimate for this one; the layout (``spec``) stays the training rows', so those
    numbers, the signature and this model read the same columns.

    The bundle's meta records ``REFIT_UNTIL`` (the log's newest offer): a refitted champion has
    been fitted on most of a later run's holdout whenever the logs overlap (``retrain``, the
    learning loop's sliding windows), so gates score it only on newer offers
    (``training.refit_scope``).
    """
    bundle = fit_on_every_row(frame, catalog, spec, F, seed=seed, params=params)
    _store_drift_reference(bundle, F.X, spec)
    if served == "logreg":
        baseline = _logistic_baseline(F.X, F.accepted, spec, seed)
        bundle.readiness = LinearReadiness.from_baseline(baseline)
    return bundle


def _logistic_baseline(
    X: np.ndarray, accepted: np.ndarray, spec: FeatureSpec, seed: int
) -> LogisticBaseline:
    return LogisticBaseline(
        categorical_features=tuple(spec.categorical_indices), random_state=seed
    ).fit(X, accepted.astype(int))


def _store_drift_reference(bundle: ModelBundle, X: np.ndarray, spec: FeatureSpec) -> None:
    """What the service's drift watch compares live contexts with: the fitted rows' contexts."""
    reference = context_reference(X, spec)
    if reference:
        bundle.meta[DRIFT_META_KEY] = reference


def fit_on_every_row(
    frame: pd.DataFrame,
    catalog: Catalog,
    spec: FeatureSpec,
    F: OfflineFeatures,
    *,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    n_jobs: int | None = None,
    users: np.ndarray | None = None,
) -> ModelBundle:
    """``fit_bundle`` on every row of a validated event frame whose features are ``F``: the
    frame's median return gap, each offer's time and user (so readiness backtests its
    calibration slice) and the value model's transitions along the frame's own users.
    ``fit_and_evaluate`` fits it on the training rows, ``train --refit`` on the whole log, the
    simulator (``simulation.synthetic``) on a log and a layout of its own. ``users``: each row's
    user code (default: the frame's own)."""
    return fit_bundle(
        np.ascontiguousarray(F.X),
        F.accepted,
        F.dropped,
        F.came_back,
        catalog.arrays["is_goal"][F.step_index] > 0,
        spec,
        typical_gap_hours=typical_gap_hours(frame),
        seed=seed,
        params=params,
        n_jobs=n_jobs,
        ts=F.ts,
        users=pd.factorize(frame["user_id"])[0] if users is None else users,
        transitions=logged_transitions(frame, catalog, spec, F),
        earned=goal_worth_earned(catalog, F),
    )


SERVED_TAG = "nextstep.readiness_model"
SERVED_NAMES = {"lgbm": "lightgbm", "logreg": "logistic"}
READINESS_CHOICES = ("auto", "lightgbm", "logistic")
# What ``train``, the Dask engine and ``learn`` serve unless told otherwise. Not ``auto``: the
# baseline's lower log loss does not predict better decisions. Over 99 random worlds (20,000-user
# logs) it had the lower holdout log loss in 49; served there, the planner gained up to 0.15 of
# type-blind in some and lost up to 0.70 in others, so the rule lowers the worst decile (0.894
# against 0.908 on LightGBM everywhere) for no gain at the median (docs/design.md).
DEFAULT_READINESS = "lightgbm"


def check_readiness_choice(choice: str) -> str:
    """``choice`` when it is a ``--readiness-model`` value; else the one-line error (exit 2)."""
    if choice not in READINESS_CHOICES:
        raise NextstepError(
            f"--readiness-model must be one of {', '.join(READINESS_CHOICES)}, not {choice!r}"
        )
    return choice


def serve_better_readiness(out: TrainingOutcome, choice: str) -> str:
    """Which fitted readiness model the bundle serves (``nextstep train --readiness-model``):
    ``"lgbm"`` for ``lightgbm``; ``"logreg"`` for ``logistic``, and for ``auto`` when the
    logistic baseline has the strictly lower holdout log loss. Serving the baseline swaps the
    bundle's readiness for it, flattened (``models.linear``); drop and come-back stay LightGBM
    (the baseline models acceptance only).

    ``auto`` serves the model with the better probabilities, which is not the model the planner
    decides better with (``DEFAULT_READINESS``); it stays for a team that measured otherwise.
    """
    if check_readiness_choice(choice) == "lightgbm":
        return "lgbm"
    lgbm = out.metrics.get("lgbm", {}).get("logloss", math.nan)
    logreg = out.metrics.get("logreg", {}).get("logloss", math.nan)
    if choice == "auto" and not (math.isfinite(lgbm) and math.isfinite(logreg) and logreg < lgbm):
        return "lgbm"
    if not is_linear(out.bundle.readiness):
        out.bundle.readiness = LinearReadiness.from_baseline(out.baseline)
    return "logreg"


# -- promotion gate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    champion_version: str | None = None
    champion_logloss: float | None = None


@dataclass(frozen=True)
class ChampionScore:
    """The current champion on this run's holdout (``score_champion``).

    ``version`` is None when there is no champion; ``problem`` says why it could not be scored.
    When the champion was refitted on offers of this holdout (``train --refit``), both models
    are scored on the held-out offers newer than its data only: ``candidate_logloss`` is then the
    candidate's log loss on those rows and ``scope`` names them; ``unfair`` says why no fair
    comparison is possible (too few such offers)."""

    version: str | None
    logloss: float | None = None
    problem: str | None = None
    candidate_logloss: float | None = None
    scope: str = "on the same holdout"
    unfair: str | None = None
    bundle: ModelBundle | None = field(default=None, repr=False, compare=False)  # when loaded


def gate(
    candidate_logloss: float,
    champion_logloss: float | None,
    tolerance: float,
    champion_version: str | None,
    scope: str = "on the same holdout",
) -> GateDecision:
    """Log-loss gate: promote when candidate <= champion + tolerance (lower is better)."""
    if champion_version is None or champion_logloss is None:
        return GateDecision(True, "no champion yet: the first version becomes champion")
    ok = candidate_logloss <= champion_logloss + tolerance
    rel = "<=" if ok else ">"
    reason = (
        f"holdout log loss {candidate_logloss:.5f} {rel} champion v{champion_version} "
        f"{champion_logloss:.5f} + tolerance {tolerance:g} {scope}"
    )
    return GateDecision(ok, reason, champion_version, champion_logloss)


def champion_on_holdout(
    frame: pd.DataFrame, catalog: Catalog, holdout: np.ndarray, candidate: ModelBundle
) -> ChampionScore:
    """The current champion scored on these holdout rows of a validated frame, against the
    ``candidate`` where the champion was refitted on some of them (``score_champion``)."""
    ts = frame["ts"].to_numpy(dtype=np.float64)[holdout]
    return score_champion(
        lambda bundle: (*score_bundle(bundle, frame, catalog, holdout)[:2], ts), candidate
    )


def score_champion(
    score: Callable[[ModelBundle], tuple[np.ndarray, np.ndarray, np.ndarray]],
    candidate: ModelBundle,
    *,
    candidate_p: np.ndarray | None = None,
) -> ChampionScore:
    """``champion_on_holdout`` for a holdout wherever it lives: ``score(bundle)`` returns the
    held-out outcomes, the bundle's probabilities and the offers' times, always in the same row
    order (the Dask engine scores on its workers).

    A champion fitted on the training rows of an earlier log never saw this run's holdout as
    long as the holdout is newer, which ``--holdout-by time`` (the default) makes it. A
    ``--refit`` champion was fitted on every row of its log, so where the logs overlap
    (``retrain``, the learning loop's sliding windows) its log loss on this holdout would be
    in-sample and candidates would lose. Such a champion is therefore compared only on the
    held-out offers newer than its data, with the ``candidate`` (the bundle fitted on this
    run's training rows) scored on the same rows; with too few of them, or only one outcome among
    them, no fair comparison exists and the candidate is refused (``training.refit_scope``).

    ``candidate_p``: the candidate's probabilities on the holdout, in ``score``'s row order,
    when the caller has them (the learner's gate), so the candidate is not scored twice. The
    loaded champion is kept in ``bundle`` for callers that walk it too (the learner's OPE)."""
    version = tracking.alias_version(tracking.CHAMPION)
    if version is None:
        return ChampionScore(None)
    try:
        bundle, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{version}")
        y, p, ts = score(bundle)
    except Exception as exc:  # unloadable or incompatible champion: say so, do not crash
        return ChampionScore(version, problem=f"{type(exc).__name__}: {str(exc)[:200]}")
    fair = fair_rows(bundle.meta, version, y, ts)
    if fair.rows is None and fair.unfair is None:
        return ChampionScore(version, ev.log_loss(y, p), bundle=bundle)
    if fair.rows is None:
        return ChampionScore(version, unfair=fair.unfair, bundle=bundle)
    p_c = score(candidate)[1] if candidate_p is None else candidate_p
    cand_ll, champ_ll = fair.log_losses(y, p_c, p)
    return ChampionScore(
        version, champ_ll, candidate_logloss=cand_ll, scope=fair.scope, bundle=bundle
    )


# -- the command -----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_id: str
    version: str
    promoted: bool
    decision: str  # "promoted" | "refused" | "not_requested"
    reason: str
    metrics: dict[str, dict[str, float]]
    fingerprint: dict[str, Any]
    aliases: list[str] = field(default_factory=list)
    champion_logloss: float | None = None
    recommended_policy: str | None = None  # by holdout trajectory OPE; None when not evaluable
    recommended_trusted: bool = False  # the recommendation rests on trusted estimates
    holdout: str = ""  # how the split was made, in words
    context: dict[str, str] = field(default_factory=dict)  # what became of each context column
    readiness_model: str = "lightgbm"  # what the bundle serves: "lightgbm" or "logistic"


def train_log(
    log: EventLog,
    catalog: Catalog,
    *,
    experiment: str = "nextstep-train",
    promote: bool = False,
    tolerance: float = 0.0,
    seed: int = 0,
    holdout: Holdout | None = None,
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    policy_gate: bool = False,
    step_feature: bool = STEP_FEATURE,
    readiness_model: str = DEFAULT_READINESS,
    refit: bool = False,
) -> TrainResult:
    """Fit, evaluate, log one MLflow run, register a version and apply the gate; with ``refit``
    the registered models are fitted again on every row once measured (``refit_on_every_row``)."""
    say = progress or (lambda _msg: None)
    fp = fingerprint(log, catalog)
    out = fit_and_evaluate(
        log,
        catalog,
        seed=seed,
        holdout=holdout,
        params=params,
        progress=say,
        step_feature=step_feature,
        refit=refit,
    )
    return log_training(
        out,
        fp,
        catalog,
        holdout_events=lambda: log.frame.loc[users_with(log.frame, out.holdout)],
        score_champion=lambda candidate: champion_on_holdout(
            log.frame, catalog, out.holdout, candidate
        ),
        experiment=experiment,
        promote=promote,
        tolerance=tolerance,
        seed=seed,
        progress=say,
        policy_gate=policy_gate,
        readiness_model=readiness_model,
    )


def log_training(
    out: TrainingOutcome,
    fp: Mapping[str, Any],
    catalog: Catalog,
    *,
    holdout_events: Callable[[], pd.DataFrame],
    score_champion: Callable[[ModelBundle], ChampionScore],
    experiment: str = "nextstep-train",
    promote: bool = False,
    tolerance: float = 0.0,
    seed: int = 0,
    engine: str = "local",
    progress: Progress | None = None,
    policy_gate: bool = False,
    readiness_model: str = DEFAULT_READINESS,
) -> TrainResult:
    """Log one MLflow run for a fitted ``out``, register a version and apply the gate.

    Shared by the single-machine and the Dask engine (``training.dask_train``), so both record
    exactly the same run; only where the data lives differs: ``holdout_events()`` returns the
    validated events of the users with held-out offers, their whole history (for the run's
    ``data/holdout.parquet``; ``data/holdout.json`` says which of them are held out) and
    ``score_champion(candidate)`` scores the current champion on this run's holdout, against the
    candidate fitted on this run's training rows where that must be rescored (the contract of
    ``champion_on_holdout``).

    The candidate policies are valued on the holdout users by trajectory OPE
    (``training.policy_eval``); the recommended one is recorded in the bundle's meta (the service
    serves it unless configured otherwise) and as the version's ``recommended_policy`` tag. With
    ``policy_gate`` the promotion also requires it to be no worse than the champion's policy.
    """
    say = progress or (lambda _msg: None)
    say("logging the run to MLflow")
    mlflow = tracking.setup()
    exp_id = tracking.experiment_id(experiment)
    served = serve_better_readiness(out, readiness_model)
    if served == "logreg":
        say(f"the bundle serves the logistic baseline (--readiness-model {readiness_model})")
    lgbm = out.metrics[served]  # the served readiness model's holdout metrics: the gate's
    with mlflow.start_run(experiment_id=exp_id) as run, tempfile.TemporaryDirectory() as tmp:
        run_id = run.info.run_id
        mlflow.log_params(_run_params(out, fp, seed, tolerance, promote, engine))
        mlflow.set_tags(
            {
                "nextstep.kind": "train",
                SERVED_TAG: SERVED_NAMES[served],
                "nextstep.data_sha256": fp["sha256"],
                "nextstep.holdout": _holdout_tag(out.holdout_info),
            }
        )
        metrics: dict[str, float] = {}
        for name, values in out.metrics.items():
            metrics.update({f"{name}_{k}": v for k, v in ev.finite(values).items()})
        metrics.update(
            train_rows=float(out.train_rows),
            holdout_rows=float(out.holdout_rows),
            typical_gap_hours=out.typical_gap_hours,
            **{f"seconds_{k}": v for k, v in out.seconds.items()},
        )
        mlflow.log_metrics(metrics)
        mlflow.log_dict(out.spec.describe(), "context_columns.json")
        plots = _plots(out, Path(tmp) / "plots")
        mlflow.log_artifacts(str(plots), artifact_path="plots")
        held_out = holdout_events()
        data_dir = _holdout_artifacts(held_out, catalog, fp, out.holdout_info, Path(tmp) / "data")
        mlflow.log_artifacts(str(data_dir), artifact_path="data")
        say("valuing candidate policies on the holdout users")
        t_ope = time.perf_counter()
        evaluation = _evaluate_policies(out, held_out, catalog, seed, Path(tmp) / "policies")
        mlflow.log_metric("seconds_policy_ope", time.perf_counter() - t_ope)
        rec = None if isinstance(evaluation, str) else evaluation.recommendation
        recommended = None if rec is None else rec.policy
        bundle = out.bundle
        if out.refit is not None:
            say("refitting the served models on every row, holdout included")
            t_refit = time.perf_counter()
            bundle = out.refit(served)
            bundle.meta[REFIT_UNTIL] = fp["ts_max"]  # what a later gate must not score it on
            mlflow.log_metric("seconds_refit", time.perf_counter() - t_refit)
        if rec is not None and rec.trusted:  # what the service serves unless configured
            bundle.meta[policy_eval.META_KEY] = rec.policy

        bundle.meta.update(
            run_id=run_id,
            trained_at=iso_seconds(time.time()),
            data=fp,
            holdout=dict(out.holdout_info),
            metrics={k: ev.finite(v) for k, v in out.metrics.items()},
            params=out.params,
            readiness_model=SERVED_NAMES[served],
        )
        bundle_dir = save_bundle(bundle, Path(tmp) / "bundle")
        _write_catalog(catalog, bundle_dir / "catalog.yaml")
        say("registering the model")
        version = _log_model(mlflow, out.spec, bundle, bundle_dir, held_out, catalog)

        decision, reason, champ_ll, aliases = "not_requested", "--promote not given", None, []
        if promote:
            say("promotion gate: scoring the champion on this holdout")
            champ = score_champion(out.bundle)
            champ_version, champ_ll = champ.version, champ.logloss
            if champ.problem is not None:
                g = GateDecision(
                    True,
                    f"current champion v{champ_version} cannot be scored by this code "
                    f"({champ.problem}); the new version replaces it",
                    champ_version,
                )
            elif champ.unfair is not None:
                g = GateDecision(False, champ.unfair, champ_version)
            else:
                own = champ.candidate_logloss
                ll = lgbm["logloss"] if own is None else own
                g = gate(ll, champ_ll, tolerance, champ_version, champ.scope)
            if policy_gate and g.promote and champ_version is not None:
                g = _gate_policy(g, evaluation, held_out, catalog, out, seed)
            alias = tracking.CHAMPION if g.promote else tracking.CHALLENGER
            tracking.set_alias(alias, version)
            if g.promote and tracking.alias_version(tracking.CHALLENGER) == version:
                tracking.delete_alias(tracking.CHALLENGER)
            decision = "promoted" if g.promote else "refused"
            reason = g.reason
            aliases = [alias]
            if champ_ll is not None:
                mlflow.log_metric("champion_logloss_on_holdout", champ_ll)
        mlflow.set_tags(
            {
                "nextstep.promotion": decision,
                "nextstep.promotion_reason": reason,
                "nextstep.model_version": version,
                "nextstep.recommended_policy": recommended or "-",
            }
        )
        client = tracking.client()
        for k, v in {
            "promotion": decision,
            "promotion_reason": reason,
            "readiness_model": SERVED_NAMES[served],
            "holdout_logloss": f"{lgbm['logloss']:.6f}",
            "holdout_auc": f"{lgbm['auc']:.6f}",
            "data_sha256": fp["sha256"],
            policy_eval.META_KEY: recommended or "-",
            f"{policy_eval.META_KEY}_trusted": str(rec is not None and rec.trusted).lower(),
            # what the service checks the served artifact against (models.serving)
            DIGEST_TAG: serving_digest(bundle_dir / SERVING_DIR),
        }.items():
            client.set_model_version_tag(tracking.MODEL_NAME, version, k, v)
    return TrainResult(
        run_id=run_id,
        version=version,
        promoted=decision == "promoted",
        decision=decision,
        reason=reason,
        metrics=out.metrics,
        fingerprint=fp,
        aliases=aliases,
        champion_logloss=champ_ll,
        recommended_policy=recommended,
        recommended_trusted=rec is not None and rec.trusted,
        holdout=_holdout_tag(out.holdout_info),
        context=out.spec.describe(),
        readiness_model=SERVED_NAMES[served],
    )


def _evaluate_policies(
    out: TrainingOutcome, holdout: pd.DataFrame, catalog: Catalog, seed: int, folder: Path
) -> policy_eval.PolicyEvaluation | str:
    """Value the candidates on the holdout and log table, chart and metrics to the active run;
    the reason instead when the log cannot be evaluated (no propensities)."""
    import mlflow

    evaluation = _candidate_values(out, holdout, catalog, seed)
    if isinstance(evaluation, str):
        mlflow.set_tag("nextstep.policy_evaluation", evaluation[:500])
        return evaluation
    folder.mkdir(parents=True, exist_ok=True)
    evaluation.table().to_csv(folder / policy_eval.TABLE, index=False)
    policy_eval.plot(evaluation, folder / policy_eval.CHART)
    mlflow.log_artifacts(str(folder), artifact_path="policies")
    mlflow.log_metrics(ev.finite(evaluation.metrics()))
    return evaluation


def _candidate_values(
    out: TrainingOutcome, users: pd.DataFrame, catalog: Catalog, seed: int
) -> policy_eval.PolicyEvaluation | str:
    """The candidate policies on the fitted models, valued on these users' walks."""
    scorer = ModelScorer(out.bundle, catalog)
    context = out.spec.context_columns
    return policy_eval.try_evaluate(users, catalog, scorer, context_columns=context, seed=seed)


def _gate_policy(
    g: GateDecision,
    evaluation: policy_eval.PolicyEvaluation | str,
    holdout: pd.DataFrame,
    catalog: Catalog,
    out: TrainingOutcome,
    seed: int,
) -> GateDecision:
    """The log-loss gate's decision, refused when the OPE gate refuses."""
    if isinstance(evaluation, str):
        return GateDecision(False, f"{g.reason}; {evaluation}", g.champion_version)
    version, _policy, champ, problem, users = policy_eval.champion_policy_value(
        holdout, catalog, context_columns=out.spec.context_columns, seed=seed
    )
    if problem is None and users is not None:  # a refitted champion: value both on new users
        evaluation = _candidate_values(out, users, catalog, seed)
        if isinstance(evaluation, str):
            problem = f"the candidate cannot be valued on the users new to it: {evaluation}"
    if problem is not None:
        reason = f"policy gate: champion v{version} cannot be valued ({problem})"
        return GateDecision(True, f"{g.reason}; {reason}", g.champion_version, g.champion_logloss)
    ok, reason = policy_eval.policy_gate(evaluation, champ, version)
    return GateDecision(ok, f"{g.reason}; {reason}", g.champion_version, g.champion_logloss)


# -- helpers --------------------------------------------------------------------------------------
def _run_params(
    out: TrainingOutcome,
    fp: Mapping[str, Any],
    seed: int,
    tolerance: float,
    promote: bool,
    engine: str = "local",
) -> dict[str, Any]:
    return {
        **{f"model_{k}": v for k, v in out.params.items()},
        "engine": engine,
        # the value model's backups (models.fitted_q); 0: the bundle has none (Dask engine)
        "value_backups": getattr(value_model(out.bundle), "n_iterations_", 0),
        "seed": seed,
        "rows": fp["rows"],
        "train_rows": out.train_rows,
        "holdout_rows": out.holdout_rows,
        # the rows the served models were fitted on: every row when refitted after the holdout
        "served_rows": len(out.holdout) if out.refit is not None else out.train_rows,
        "holdout_fraction": out.holdout_info["fraction"],
        "holdout_strategy": _STRATEGY_PARAM[out.holdout_info["strategy"]],
        "holdout_from": out.holdout_info.get("from") or "-",
        "features": ",".join(out.spec.names),
        "context_columns": ",".join(out.spec.context_columns) or "-",
        "step_feature": bool(out.spec.step_ids),
        "promote": promote,
        "tolerance": tolerance,
        "data_rows": fp["rows"],
        "data_users": fp["users"],
        "data_ts_min": fp["ts_min"],
        "data_ts_max": fp["ts_max"],
        "data_sha256": fp["sha256"],
        "data_skipped": fp["skipped"],
        "data_source": str(fp["source"])[:480],
        "catalog_sha256": fp["catalog_sha256"],
        "typical_gap_hours": round(out.typical_gap_hours, 4),
    }


def _plots(out: TrainingOutcome, folder: Path) -> Path:
    labels = {"lgbm": "LightGBM", "logreg": "logistic", "truth": "true p (simulator)"}
    curves = {labels[k]: (out.y, p) for k, p in out.predictions.items()}
    ev.plot_calibration(curves, folder / "calibration.png")
    ev.plot_feature_importance(
        out.spec.names, out.bundle.readiness.feature_importance(), folder / "feature_importance.png"
    )
    by_stage = {labels[k]: ev.auc_by_stage(out.y, p, out.stage) for k, p in out.predictions.items()}
    ev.plot_auc_by_stage(by_stage, folder / "auc_by_stage.png")
    return folder


_STRATEGY_PARAM = {"time": "time", "arrival": "users_by_first_event"}


def _holdout_tag(info: Mapping[str, Any]) -> str:
    if info["strategy"] == "time":
        return f"offers at or after {info.get('from')} (calendar cut)"
    return "latest-arriving users by first event"


def _holdout_artifacts(
    frame: pd.DataFrame,
    catalog: Catalog,
    fp: Mapping[str, Any],
    holdout_info: Mapping[str, Any],
    folder: Path,
) -> Path:
    """The raw events of the users with held-out offers (whole users, history included, capped
    at ``HOLDOUT_ARTIFACT_ROWS`` rows), the split (``holdout.json``: with a calendar cut only
    the offers at or after it are scored) and the catalog, so ``nextstep promote`` can score any
    two versions on the same rows later."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(frame) > HOLDOUT_ARTIFACT_ROWS:
        codes, _ = pd.factorize(frame["user_id"], sort=False)
        size = np.bincount(codes)
        keep_users = np.cumsum(size) <= HOLDOUT_ARTIFACT_ROWS
        frame = frame.loc[keep_users[codes]]
    write_events(frame, folder / "holdout.parquet")
    _write_catalog(catalog, folder / "catalog.yaml")
    (folder / "fingerprint.json").write_text(json.dumps(fp, indent=2), encoding="utf-8")
    (folder / "holdout.json").write_text(json.dumps(dict(holdout_info), indent=2), encoding="utf-8")
    return folder


def _write_catalog(catalog: Catalog, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump({"steps": catalog.to_list()}, sort_keys=False), encoding="utf-8")


def pinned_requirements() -> list[str]:
    """Exact versions of what loading a bundle needs, from the running environment."""
    from importlib.metadata import version

    pkgs = ("lightgbm", "scikit-learn", "numpy", "pandas", "joblib", "scipy", "pyyaml")
    return [f"{p}=={version(p)}" for p in pkgs]


def _log_model(
    mlflow: Any,
    spec: FeatureSpec,
    bundle: ModelBundle,
    bundle_dir: Path,
    events: pd.DataFrame,
    catalog: Catalog,
) -> str:
    """Log the bundle as a pyfunc ("models from code", ``training/pyfunc_model.py``) with the
    ``features`` and ``models`` packages, register it as ``nextstep`` and return the version.
    Its signature and input example are raw events in the contract's columns
    (``training.pyfunc_signature``), which is what its ``predict`` takes."""
    root = Path(__file__).resolve().parent.parent
    example = events_example(events, spec)
    output = readiness_of_events(bundle.readiness, spec, catalog, example)
    # MLflow prints "Successfully registered model ..." straight to stderr; we print our own.
    with contextlib.redirect_stderr(io.StringIO()):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(root / "features"), str(root / "models")],
            signature=events_signature(example, output, spec),
            input_example=example,
            pip_requirements=pinned_requirements(),
            registered_model_name=tracking.MODEL_NAME,
            metadata={"features": spec.names},
        )
    version = getattr(info, "registered_model_version", None)
    if version is None:
        raise NextstepError("MLflow did not return a registered model version")
    return str(version)

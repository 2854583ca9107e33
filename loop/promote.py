"""``nextstep promote --version V``: move alias ``champion`` to V when the evidence says it is
not worse.

Evidence today is the holdout log loss: every training run stores the raw events of the users
with held-out offers, the split (``data/holdout.json``: with a calendar cut only the offers at or
after it are scored, their earlier events are history) and the catalog (run artifacts
``data/holdout.parquet``, ``data/catalog.yaml``), so V
and the current champion are scored on exactly the same rows, from the raw events, each with its
own feature layout. V is promoted when ``logloss(V) <= logloss(champion) + margin``. With no
champion, V is promoted. Bundles made by ``train --refit`` were fitted on their own holdout:
see ``_holdout_gate``.

``--evidence online``: from the service's store (``loop.report``), the candidate arm (the
arm whose decisions carry model version V) against the control arm (the arm serving the current
champion, else the first arm): V is promoted only when the lower 95% bound of
``conversion(candidate) - conversion(control)`` (Wald) is above ``-margin``.

``--evidence ope``: the service's log is exported (``loop.export``) and
``simulation.compare.compare_log`` evaluates the planner on V and on the champion; V is promoted
only when the conservative lower bound of the difference of the headline accept-rate estimates,
``low(V) - high(champion)``, is above ``-margin``. Organic outcomes (reported without a
``decision_id``) are not decisions of any policy: they are folded into the users' states and
left out of the estimate (``evaluation.offpolicy``, ``missing_propensity="organic"``).

Evidence is logged as a run of MLflow experiment ``nextstep-online`` (``promote-evidence``). A
refused promotion prints the reason and exits with code 1 (not an input error).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.evaluate import log_loss
from features.catalog import load_catalog
from features.errors import NextstepError
from features.events import load_events
from loop.export import export_log, read_store, resolve_catalog, store_url
from loop.report import build_report
from models.bundle import ModelScorer
from simulation.compare import compare_log
from training import tracking
from training.modelio import load_model_bundle
from training.pipeline import GateDecision, gate, score_bundle
from training.refit_scope import REFIT_UNTIL, fair_rows


class PromotionError(NextstepError):
    """The promotion cannot be decided (unknown version, no holdout data...)."""


def promote_version(version: str, margin: float = 0.0) -> GateDecision:
    """Apply the log-loss gate to ``version`` and move the aliases when it passes."""
    from mlflow.exceptions import MlflowException

    if not tracking.registry_exists():
        raise PromotionError(f"no model registry at {tracking.tracking_uri()}: train a model first")
    version = str(version).strip()
    client = tracking.client()
    try:
        mv = client.get_model_version(tracking.MODEL_NAME, version)
    except MlflowException:
        raise PromotionError(
            f"registered model {tracking.MODEL_NAME!r} has no version {version!r}"
        ) from None
    champion = tracking.alias_version(tracking.CHAMPION)
    if champion == version:
        return GateDecision(True, f"version {version} is already the champion", champion)
    if champion is None:
        decision = GateDecision(True, "no champion yet: this version becomes champion")
    else:
        decision = _holdout_gate(client, mv, version, champion, margin)
    if decision.promote:
        tracking.set_alias(tracking.CHAMPION, version)
        if tracking.alias_version(tracking.CHALLENGER) == version:
            tracking.delete_alias(tracking.CHALLENGER)
    client.set_model_version_tag(
        tracking.MODEL_NAME, version, "promotion", "promoted" if decision.promote else "refused"
    )
    client.set_model_version_tag(
        tracking.MODEL_NAME, version, "promotion_reason", f"nextstep promote: {decision.reason}"
    )
    return decision


def _holdout_gate(client, mv, version: str, champion: str, margin: float) -> GateDecision:  # type: ignore[no-untyped-def]
    """The log-loss gate for ``version`` against the champion on the candidate's run holdout.

    A ``--refit`` bundle was fitted on the holdout it would be scored on, so such a candidate
    is represented by its run's own holdout log loss (that of the model fitted without those
    rows), and a refitted champion is scored only on the offers newer than its data
    (``training.refit_scope``), which needs the candidate rescored on them."""
    import mlflow.artifacts

    if not mv.run_id:
        raise PromotionError(f"version {version} has no training run to take a holdout from")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id,
                    artifact_path="data",
                    dst_path=tmp,
                    tracking_uri=tracking.tracking_uri(),
                )
            )
        except Exception:
            raise PromotionError(
                f"version {version}: its run {mv.run_id} has no holdout data (data/holdout.parquet)"
            ) from None
        catalog = load_catalog(local / "catalog.yaml")
        log = load_events(local / "holdout.parquet", catalog)
        rows = _held_out_rows(log.frame, local / "holdout.json")
    ts = log.frame["ts"].to_numpy(dtype=np.float64)
    ts = ts if rows is None else ts[rows]
    champ, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{champion}")
    y, p_champ, _stage = score_bundle(champ, log.frame, catalog, rows)
    fair = fair_rows(champ.meta, champion, y, ts)
    if fair.unfair is not None:
        return GateDecision(False, fair.unfair, champion)
    cand, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{version}")
    if REFIT_UNTIL not in cand.meta:  # fitted without this holdout: score it on the fair rows
        _, p_cand, _stage = score_bundle(cand, log.frame, catalog, rows)
        return gate(*fair.log_losses(y, p_cand, p_champ), margin, champion, fair.scope)
    if fair.rows is not None:  # each model was fitted on some of these offers: none is left
        return GateDecision(
            False,
            f"version {version} was refitted on its own holdout (train --refit) and "
            f"{fair.seen}: no held-out offer is left that neither was fitted on",
            champion,
        )
    recorded = mv.tags.get("holdout_logloss")
    if recorded is None:
        raise PromotionError(
            f"version {version} was refitted on its own holdout (train --refit) and its run "
            "recorded no holdout log loss of the model fitted without it"
        )
    return gate(float(recorded), log_loss(y, p_champ), margin, champion, _RECORDED)


_RECORDED = "on the same holdout (the candidate's number is its run's: it was refitted on it)"


def _held_out_rows(frame: Any, split_file: Path) -> Any:
    """With a calendar cut the artifact holds the held-out offers' history too: score only the
    offers at or after the cut. Runs without ``holdout.json`` hold whole held-out users."""
    import json

    if not split_file.exists():
        return None
    info = json.loads(split_file.read_text(encoding="utf-8"))
    if info.get("strategy") != "time" or info.get("from_ts") is None:
        return None
    return frame["ts"].to_numpy(dtype=np.float64) >= float(info["from_ts"])


@dataclass(frozen=True)
class Evidence:
    kind: str
    candidate: float
    control: float
    low: float  # lower 95% bound of candidate - control
    margin: float
    detail: dict[str, Any]

    @property
    def passes(self) -> bool:
        return math.isfinite(self.low) and self.low > -self.margin

    def reason(self) -> str:
        verdict = ">" if self.passes else "<="
        return (
            f"{self.kind} evidence: candidate {self.candidate:.4f} vs control {self.control:.4f}, "
            f"lower 95% bound of the difference {self.low:.4f} {verdict} -{self.margin:g}"
        )


def _check_version(version: str) -> None:
    from mlflow.exceptions import MlflowException

    if not tracking.registry_exists():
        raise PromotionError(f"no model registry at {tracking.tracking_uri()}: train a model first")
    try:
        tracking.client().get_model_version(tracking.MODEL_NAME, version)
    except MlflowException:
        raise PromotionError(
            f"registered model {tracking.MODEL_NAME!r} has no version {version!r}"
        ) from None


def online_evidence(
    version: str, margin: float, *, catalog: Path | None = None, url: str | None = None
) -> Evidence:
    """Candidate arm (serving ``version``) vs the champion's arm, from the service's store."""
    cat = resolve_catalog(catalog, url)
    decisions, outcomes = read_store(store_url(url))
    if decisions.empty:
        raise PromotionError("the service's store has no decisions: no online evidence")
    versions = decisions["model_version"].astype("string")
    by_arm = decisions.assign(v=versions).groupby("arm")["v"].agg(lambda x: set(x.dropna()))
    cand = [a for a, vs in by_arm.items() if version in vs]
    if not cand:
        raise PromotionError(f"no experiment arm served model version {version}")
    champion = tracking.alias_version(tracking.CHAMPION) if tracking.registry_exists() else None
    ctl = [
        a for a, vs in by_arm.items() if champion is not None and champion in vs and a not in cand
    ]
    report = build_report(decisions, outcomes, cat)
    others = [a.arm for a in report.arms if a.arm not in cand]
    if not ctl and not others:
        raise PromotionError("no control arm to compare with (every arm served this version)")
    control = ctl[0] if ctl else others[0]
    report = build_report(decisions, outcomes, cat, control=control)
    c = report.arm(cand[0])
    k = report.arm(control)
    vs = c.vs_control
    return Evidence(
        "online",
        c.conversion,
        k.conversion,
        float(vs["low"]),
        margin,
        {
            "candidate_arm": c.arm,
            "control_arm": k.arm,
            "candidate_users": c.users,
            "control_users": k.users,
            "diff": vs["diff"],
            "high": vs["high"],
            "p_value": vs["p"],
        },
    )


def ope_evidence(
    version: str, margin: float, *, catalog: Path | None = None, url: str | None = None
) -> Evidence:
    """Planner on V vs planner on the champion, off-policy on the exported service log."""
    cat = resolve_catalog(catalog, url)
    champion = tracking.alias_version(tracking.CHAMPION)
    if champion is None:
        raise PromotionError("no champion to compare with: promote without --evidence")
    log = export_log(cat, url=url).log
    if log.n_rows == 0:
        raise PromotionError("the service's store has no outcomes: no off-policy evidence")
    est = {}
    organic = 0
    for v in (version, champion):
        bundle, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{v}")
        comp = compare_log(
            log,
            cat,
            ["planner"],
            scorer=ModelScorer(bundle, cat),
            model_version=v,
            missing_propensity="organic",  # organic outcomes are history, not policy decisions
        )
        est[v] = next(iter(comp.policies.values())).accept_rate.headline
        organic = comp.organic_rows
    c, k = est[version], est[champion]
    return Evidence(
        "ope",
        float(c.value),
        float(k.value),
        float(c.low) - float(k.high),
        margin,
        {
            "estimator": c.estimator,
            "champion_version": champion,
            "candidate_low": c.low,
            "candidate_high": c.high,
            "control_low": k.low,
            "control_high": k.high,
            "rows": log.n_rows,
            "organic_rows": organic,
        },
    )


def log_evidence(version: str, ev: Evidence, promoted: bool) -> None:
    mlflow = tracking.setup()
    exp_id = tracking.experiment_id(tracking.EXPERIMENT_ONLINE)
    with mlflow.start_run(experiment_id=exp_id, run_name="promote-evidence"):
        mlflow.log_params({"version": version, "evidence": ev.kind, "margin": ev.margin})
        for k, v in ev.detail.items():
            if isinstance(v, str):
                mlflow.set_tag(k, v)
        metrics = {"candidate": ev.candidate, "control": ev.control, "diff_low": ev.low}
        metrics.update({k: float(v) for k, v in ev.detail.items() if isinstance(v, int | float)})
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.set_tag("decision", "promoted" if promoted else "refused")
        mlflow.set_tag("reason", ev.reason())


def promote_with_evidence(
    version: str,
    kind: str,
    margin: float,
    *,
    catalog: Path | None = None,
    url: str | None = None,
) -> GateDecision:
    """Promote ``version`` only when the online or off-policy evidence says it is not worse."""
    version = str(version).strip()
    tracking.setup()
    _check_version(version)
    if kind == "online":
        ev = online_evidence(version, margin, catalog=catalog, url=url)
    else:
        ev = ope_evidence(version, margin, catalog=catalog, url=url)
    decision = GateDecision(ev.passes, ev.reason(), tracking.alias_version(tracking.CHAMPION))
    if decision.promote:
        tracking.set_alias(tracking.CHAMPION, version)
        if tracking.alias_version(tracking.CHALLENGER) == version:
            tracking.delete_alias(tracking.CHALLENGER)
    client = tracking.client()
    client.set_model_version_tag(
        tracking.MODEL_NAME, version, "promotion", "promoted" if decision.promote else "refused"
    )
    client.set_model_version_tag(
        tracking.MODEL_NAME, version, "promotion_reason", f"nextstep promote: {decision.reason}"
    )
    log_evidence(version, ev, decision.promote)
    return decision


def promote_command(
    version: str,
    evidence: str | None = None,
    margin: float = 0.0,
    *,
    catalog: Path | None = None,
) -> None:
    """CLI entry point (``nextstep promote``)."""
    kind = None
    if evidence is not None:
        kind = evidence.strip().lower()
        if kind not in ("ope", "online"):
            raise PromotionError(f"--evidence must be 'ope' or 'online', got {evidence!r}")
    if not math.isfinite(margin) or margin < 0:
        raise PromotionError("--margin must be a finite number >= 0")
    tracking.setup()
    if kind is None:
        decision = promote_version(version, margin)
    else:
        decision = promote_with_evidence(version, kind, margin, catalog=catalog)
    if decision.promote:
        print(f"version {version} is champion: {decision.reason}")
        return
    print(f"promotion of version {version} refused: {decision.reason}")
    raise SystemExit(1)

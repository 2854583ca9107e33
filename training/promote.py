"""``nextstep promote --version V``: move alias ``champion`` to V when the evidence says it is
not worse.

Evidence today is the holdout log loss: every training run stores its holdout users' raw
events and the catalog (run artifacts ``data/holdout.parquet``, ``data/catalog.yaml``), so V
and the current champion are scored on exactly the same rows, from the raw events, each with its
own feature layout. V is promoted when ``logloss(V) <= logloss(champion) + margin``. With no
champion, V is promoted. ``--evidence ope`` / ``online`` are not implemented yet and say so.
A refused promotion prints the reason and exits with code 1 (not an input error).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from features.errors import NextstepError
from training import tracking
from training.pipeline import GateDecision, gate


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
        cand_ll, champ_ll = _holdout_loglosses(client, mv, version, champion)
        decision = gate(cand_ll, champ_ll, margin, champion)
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


def _holdout_loglosses(client, mv, version: str, champion: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Log loss of the candidate and of the champion on the candidate's run holdout."""
    import mlflow.artifacts

    from features.catalog import load_catalog
    from features.events import load_events
    from training.evaluate import log_loss
    from training.modelio import load_model_bundle
    from training.pipeline import score_bundle

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
    out = []
    for v in (version, champion):
        bundle, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{v}")
        y, p, _stage = score_bundle(bundle, log.frame, catalog)
        out.append(log_loss(y, p))
    return out[0], out[1]


def promote_command(version: str, evidence: str | None = None, margin: float = 0.0) -> None:
    """CLI entry point (``nextstep promote``)."""
    if evidence is not None:
        kind = evidence.strip().lower()
        if kind in ("ope", "online"):
            raise PromotionError(
                f"--evidence {kind} is not implemented yet; without --evidence the gate compares "
                "holdout log loss"
            )
        raise PromotionError(f"--evidence must be 'ope' or 'online', got {evidence!r}")
    if not math.isfinite(margin) or margin < 0:
        raise PromotionError("--margin must be a finite number >= 0")
    tracking.setup()
    decision = promote_version(version, margin)
    if decision.promote:
        print(f"version {version} is champion: {decision.reason}")
        return
    print(f"promotion of version {version} refused: {decision.reason}")
    raise SystemExit(1)

"""Quality of predicted probabilities: ranking, likelihood, calibration, per funnel stage.

Every function takes plain arrays (outcome 0/1, probability) so the same numbers come out of
training, ``nextstep predict`` output, notebooks and tests. Plots use matplotlib's Agg backend
(no display) and are written as PNG files, ready to log as MLflow artifacts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from features.catalog import STAGES

EPS = 1e-15
N_BINS = 10


def _arrays(y: object, p: object) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y, dtype=np.float64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"y and p differ in length ({len(yy)} vs {len(pp)})")
    return yy, pp


def auc(y: object, p: object) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    yy, pp = _arrays(y, p)
    if len(yy) == 0 or yy.min() == yy.max():
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(yy, pp))


def log_loss(y: object, p: object) -> float:
    """Mean negative log-likelihood (probabilities clipped to [1e-15, 1 - 1e-15])."""
    yy, pp = _arrays(y, p)
    if len(yy) == 0:
        return math.nan
    pp = np.clip(pp, EPS, 1 - EPS)
    return float(-np.mean(yy * np.log(pp) + (1 - yy) * np.log1p(-pp)))


def brier(y: object, p: object) -> float:
    yy, pp = _arrays(y, p)
    return float(np.mean((pp - yy) ** 2)) if len(yy) else math.nan


def calibration_bins(
    y: object, p: object, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of predicted probability: (mean prediction, outcome rate, count).

    Bins are ``[0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]``; empty bins have NaN means and count 0.
    """
    yy, pp = _arrays(y, p)
    idx = np.clip((pp * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=pp, minlength=n_bins)
    sum_y = np.bincount(idx, weights=yy, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_p / count, sum_y / count, count


def expected_calibration_error(y: object, p: object, n_bins: int = N_BINS) -> float:
    """ECE: sum over equal-width bins of (share of rows) * |mean prediction - outcome rate|."""
    mean_p, rate, count = calibration_bins(y, p, n_bins)
    total = count.sum()
    if total == 0:
        return math.nan
    used = count > 0
    return float(np.sum(count[used] / total * np.abs(mean_p[used] - rate[used])))


def binary_metrics(y: object, p: object) -> dict[str, float]:
    """``auc``, ``logloss``, ``brier``, ``ece`` of probabilities ``p`` for outcomes ``y``."""
    return {
        "auc": auc(y, p),
        "logloss": log_loss(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
    }


def auc_by_stage(y: object, p: object, stage: object) -> dict[str, float]:
    """AUC within each funnel stage (``stage`` = stage index per row); NaN where undefined."""
    yy, pp = _arrays(y, p)
    st = np.asarray(stage).astype(np.int64).ravel()
    out: dict[str, float] = {}
    for i, name in enumerate(STAGES):
        m = st == i
        if m.any():
            out[name] = auc(yy[m], pp[m])
    return out


def evaluate(y: object, p: object, stage: object | None = None) -> dict[str, float]:
    """All metrics of one model, flat: ``auc``, ``logloss``, ``brier``, ``ece``,
    ``auc_stage_<stage>`` (stages with both outcomes only), ``rows``, ``accept_rate``."""
    yy, pp = _arrays(y, p)
    out = binary_metrics(yy, pp)
    out["rows"] = float(len(yy))
    out["accept_rate"] = float(yy.mean()) if len(yy) else math.nan
    out["mean_p"] = float(pp.mean()) if len(pp) else math.nan
    if stage is not None:
        for name, v in auc_by_stage(yy, pp, stage).items():
            if not math.isnan(v):
                out[f"auc_stage_{name}"] = v
    return out


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """Only the finite values (MLflow and JSON readers handle NaN badly)."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


# -- plots ----------------------------------------------------------------------------------
def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(
    curves: Mapping[str, tuple[object, object]], path: str | Path, n_bins: int = N_BINS
) -> Path:
    """Reliability diagram: outcome rate against mean prediction per bin, one line per model
    (``curves`` maps a label to ``(y, p)``), with a histogram of predictions below."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(6, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for label, (y, p) in curves.items():
        mean_p, rate, count = calibration_bins(y, p, n_bins)
        ok = count > 0
        ece = expected_calibration_error(y, p, n_bins)
        ax.plot(mean_p[ok], rate[ok], marker="o", label=f"{label} (ECE {ece:.3f})")
        hist.hist(np.asarray(p, dtype=float), bins=n_bins, range=(0, 1), alpha=0.5, label=label)
    ax.set_ylabel("observed accept rate")
    ax.set_title("Calibration on the holdout")
    ax.legend(loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    hist.set_xlabel("predicted P(accept)")
    hist.set_ylabel("offers")
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_feature_importance(
    names: Sequence[str], importance: object, path: str | Path, top: int = 25
) -> Path:
    """Horizontal bars of LightGBM gain importance, largest first."""
    plt = _pyplot()
    imp = np.asarray(importance, dtype=np.float64)
    order = np.argsort(imp)[::-1][:top][::-1]
    total = imp.sum() or 1.0
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(order) + 1.2))
    ax.barh([names[i] for i in order], imp[order] / total)
    ax.set_xlabel("share of total gain")
    ax.set_title("Readiness model: feature importance")
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_auc_by_stage(by_model: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Grouped bars: AUC per funnel stage, one bar per model."""
    plt = _pyplot()
    stages = [s for s in STAGES if any(s in m for m in by_model.values())]
    x = np.arange(len(stages))
    width = 0.8 / max(1, len(by_model))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, (label, values) in enumerate(by_model.items()):
        ys = [values.get(s, math.nan) for s in stages]
        ax.bar(x + k * width - 0.4 + width / 2, ys, width, label=label)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xticks(x, stages)
    ax.set_ylim(0.0, 1.0)  # every bar visible: a stage can score below 0.5 (worse than chance)
    ax.set_ylabel("AUC")
    ax.set_title("Holdout AUC by funnel stage")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:  # type: ignore[no-untyped-def]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p

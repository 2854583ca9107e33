"""``nextstep report``: the online experiment report from the service's store (docs/design.md §8).

Decisions and outcomes are joined; each user belongs to the arm of their first decision in the
window (assignment is sticky). Per arm:

* ``decisions`` (all decisions, including "offer nothing") and ``users``;
* ``accept_rate`` = accepted outcomes of the arm's decisions / decisions that offered a step
  (Wilson 95% interval);
* ``conversion`` = users who accepted a goal step (through a decision or organically, after
  their first decision) / users (Wilson 95% interval);
* ``asks_per_conversion`` = offers / converted users (95% percentile bootstrap over users);
* against the control arm (``--control``; default the arm of the earliest decision, normally the
  champion): the difference in conversion with a 95% Wald interval and the pooled
  two-proportion z-test p-value.

Printed as a rich table and logged as one run of MLflow experiment ``nextstep-online``: metrics
per arm (``<arm>.conversion``...), the table as ``report.json``/``report.csv`` and a bar chart of
conversion with its intervals (``conversion.png``).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.intervals import Z95, wilson
from features.catalog import Catalog
from features.errors import NextstepError
from loop.export import _parse_since, read_shadows, read_store, resolve_catalog, store_url
from loop.watch_report import (
    Calibration,
    Drift,
    ExplorationCost,
    calibration,
    context_drift,
    exploration_costs,
)
from training import tracking
from training.modelio import load_model_bundle


class ReportError(NextstepError):
    """The report cannot be built (no decisions, unknown control arm...)."""


def two_proportion(x1: float, n1: float, x0: float, n0: float) -> dict[str, float]:
    """Difference p1 - p0 with a 95% Wald interval and the pooled two-sided z-test p-value."""
    if n1 <= 0 or n0 <= 0:
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "z": math.nan, "p": math.nan}
    p1, p0 = x1 / n1, x0 / n0
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    pooled = (x1 + x0) / (n1 + n0)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    z = diff / se0 if se0 > 0 else 0.0
    p = math.erfc(abs(z) / math.sqrt(2))
    return {"diff": diff, "low": diff - Z95 * se, "high": diff + Z95 * se, "z": z, "p": p}


@dataclass
class ArmReport:
    arm: str
    policy: str
    model_versions: list[str]
    decisions: int
    users: int
    offers: int
    accepted: int
    converted: int
    accept_rate: float
    accept_rate_low: float
    accept_rate_high: float
    conversion: float
    conversion_low: float
    conversion_high: float
    asks_per_conversion: float
    asks_per_conversion_low: float
    asks_per_conversion_high: float
    vs_control: dict[str, float] = field(default_factory=dict)


@dataclass
class ShadowReport:
    """A shadow arm against the arm it shadowed, on that arm's served decisions.

    ``agreement`` is the share of decisions where the shadow would have offered the same step.
    The off-policy estimate of the shadow's accept rate uses the served arm's logged
    propensities: a deterministic shadow has probability 1 on its own step, so each served offer
    weighs 1[shadow step == served step] / propensity (IPW and self-normalised SNIPW).
    """

    arm: str
    shadow_of: str
    policy: str
    decisions: int
    agreement: float
    served_accept_rate: float
    ipw_accept_rate: float
    snipw_accept_rate: float
    ipw_low: float
    ipw_high: float
    matched_offers: int


@dataclass
class OnlineReport:
    control: str
    arms: list[ArmReport]
    shadows: list[ShadowReport] = field(default_factory=list)
    # the live watch from the store (loop.watch_report)
    exploration: list[ExplorationCost] = field(default_factory=list)
    calibration: list[Calibration] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)

    def arm(self, name: str) -> ArmReport:
        for a in self.arms:
            if a.arm == name:
                return a
        raise ReportError(f"no arm {name!r} in the report (arms: {[a.arm for a in self.arms]})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "arms": [asdict(a) for a in self.arms],
            "shadows": [asdict(s) for s in self.shadows],
            "exploration": [asdict(e) for e in self.exploration],
            "calibration": [asdict(c) for c in self.calibration],
            "drift": [asdict(d) for d in self.drift],
        }


def build_shadow_reports(
    decisions: pd.DataFrame,
    outcomes: pd.DataFrame,
    shadows: pd.DataFrame,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> list[ShadowReport]:
    """Agreement and off-policy accept rate of every shadow arm (see ``ShadowReport``)."""
    if shadows.empty:
        return []
    accepted = set(outcomes.loc[outcomes["outcome"] == "accepted", "decision_id"].dropna())
    served = decisions.set_index("decision_id")
    rng = np.random.default_rng(seed)
    out: list[ShadowReport] = []
    for name, sh in shadows.groupby("arm", sort=True):
        sh = sh[sh["decision_id"].isin(served.index)]
        if sh.empty:
            continue
        d = served.loc[sh["decision_id"]]
        same = (sh["step"].to_numpy() == d["step"].to_numpy()) & d["step"].notna().to_numpy()
        offered = d["step"].notna().to_numpy()
        reward = np.array([i in accepted for i in sh["decision_id"]], dtype=float)
        prop = d["propensity"].to_numpy(dtype=float)
        w = np.where(offered & same, 1.0 / np.where(offered, prop, 1.0), 0.0)[offered]
        r = reward[offered]
        n = len(r)
        ipw = float(np.mean(w * r)) if n else math.nan
        snipw = float(np.sum(w * r) / np.sum(w)) if n and np.sum(w) > 0 else math.nan
        lo = hi = math.nan
        if n:
            idx = rng.integers(0, n, size=(n_boot, n))
            boots = (w[idx] * r[idx]).mean(axis=1)
            lo, hi = (float(x) for x in np.quantile(boots, [0.025, 0.975]))
        out.append(
            ShadowReport(
                arm=str(name),
                shadow_of=str(d["arm"].mode().iloc[0]),
                policy=str(sh["policy"].mode().iloc[0]),
                decisions=len(sh),
                agreement=float(same.mean()),
                served_accept_rate=float(r.mean()) if n else math.nan,
                ipw_accept_rate=ipw,
                snipw_accept_rate=snipw,
                ipw_low=lo,
                ipw_high=hi,
                matched_offers=int((w > 0).sum()),
            )
        )
    return out


def per_user(decisions: pd.DataFrame, outcomes: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """One row per user: arm, offers, accepted (of decisions), converted (0/1)."""
    dec = decisions.sort_values(["ts", "created_at"], kind="stable")
    first = dec.groupby("user_id", sort=False).agg(arm=("arm", "first"), start=("ts", "first"))
    offered = dec[dec["step"].notna()]
    offers = offered.groupby("user_id").size()
    acc = outcomes[outcomes["outcome"] == "accepted"]
    acc_dec = acc[acc["decision_id"].isin(set(dec["decision_id"]))]
    accepted = acc_dec.groupby("user_id").size()
    goals = {s.id for s in catalog.goals}
    goal_acc = acc[acc["step"].isin(goals)].merge(first, left_on="user_id", right_index=True)
    goal_acc = goal_acc[goal_acc["ts"] >= goal_acc["start"]]
    conv_users = set(goal_acc["user_id"])
    users = first.copy()
    users["offers"] = offers.reindex(users.index).fillna(0).astype(int)
    users["accepted"] = accepted.reindex(users.index).fillna(0).astype(int)
    users["converted"] = users.index.isin(conv_users).astype(int)
    return users


def _ratio_ci(
    offers: np.ndarray, conv: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    total_c = conv.sum()
    value = offers.sum() / total_c if total_c > 0 else math.nan
    n = len(offers)
    if n == 0 or total_c == 0:
        return value, math.nan, math.nan
    idx = rng.integers(0, n, size=(n_boot, n))
    num = offers[idx].sum(axis=1).astype(float)
    den = conv[idx].sum(axis=1).astype(float)
    ratios = np.where(den > 0, num / np.where(den > 0, den, 1), np.inf)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return value, float(low), float(high)


def build_report(
    decisions: pd.DataFrame,
    outcomes: pd.DataFrame,
    catalog: Catalog,
    *,
    since: float | None = None,
    control: str | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> OnlineReport:
    dec = decisions
    if since is not None:
        dec = dec[dec["ts"] >= since]
        outcomes = outcomes[outcomes["ts"] >= since]
    if dec.empty:
        raise ReportError("the store has no decisions in this window")
    users = per_user(dec, outcomes, catalog)
    order = list(dict.fromkeys(dec.sort_values(["ts", "created_at"])["arm"]))
    control = control or order[0]
    if control not in order:
        raise ReportError(f"control arm {control!r} has no decisions (arms: {', '.join(order)})")
    rng = np.random.default_rng(seed)
    arms: list[ArmReport] = []
    for name in order:
        d = dec[dec["arm"] == name]
        u = users[users["arm"] == name]
        offers = int(d["step"].notna().sum())
        accepted = int(
            (
                outcomes["decision_id"].isin(set(d["decision_id"]))
                & (outcomes["outcome"] == "accepted")
            ).sum()
        )
        n_users, conv = len(u), int(u["converted"].sum())
        ar_lo, ar_hi = wilson(accepted, offers)
        cv_lo, cv_hi = wilson(conv, n_users)
        apc, apc_lo, apc_hi = _ratio_ci(
            u["offers"].to_numpy(), u["converted"].to_numpy(), n_boot, rng
        )
        arms.append(
            ArmReport(
                arm=name,
                policy=str(d["policy"].mode().iloc[0]),
                model_versions=sorted({str(v) for v in d["model_version"].dropna()}),
                decisions=len(d),
                users=n_users,
                offers=offers,
                accepted=accepted,
                converted=conv,
                accept_rate=accepted / offers if offers else math.nan,
                accept_rate_low=ar_lo,
                accept_rate_high=ar_hi,
                conversion=conv / n_users if n_users else math.nan,
                conversion_low=cv_lo,
                conversion_high=cv_hi,
                asks_per_conversion=apc,
                asks_per_conversion_low=apc_lo,
                asks_per_conversion_high=apc_hi,
            )
        )
    ctl = next(a for a in arms if a.arm == control)
    for a in arms:
        if a.arm != control:
            a.vs_control = two_proportion(a.converted, a.users, ctl.converted, ctl.users)
    return OnlineReport(
        control,
        arms,
        exploration=exploration_costs(dec, outcomes),
        calibration=calibration(dec, outcomes),
    )


def _metric_key(arm: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", arm)


def _chart(report: OnlineReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a.arm for a in report.arms]
    vals = np.array([a.conversion for a in report.arms])
    err = np.array(
        [
            [a.conversion - a.conversion_low for a in report.arms],
            [a.conversion_high - a.conversion for a in report.arms],
        ]
    ).clip(min=0)  # a Wilson bound at 0 or 1 may sit 1e-17 past the rate: not a negative bar
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(names)), 3.5))
    ax.bar(names, vals, yerr=err, capsize=6, color="#4c78a8")
    ax.set_ylabel("conversion (95% CI)")
    ax.set_title(f"Online conversion per arm (control: {report.control})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_report(report: OnlineReport, *, since: float | None = None) -> str:
    """One MLflow run in ``nextstep-online``; returns its run id."""
    mlflow = tracking.setup()
    exp_id = tracking.experiment_id(tracking.EXPERIMENT_ONLINE)
    with mlflow.start_run(experiment_id=exp_id, run_name="online-report") as run:
        mlflow.log_params(
            {
                "control": report.control,
                "since": since,
                "arms": ",".join(a.arm for a in report.arms),
            }
        )
        metrics: dict[str, float] = {}
        for a in report.arms:
            k = _metric_key(a.arm)
            for m in (
                "decisions",
                "users",
                "accept_rate",
                "accept_rate_low",
                "accept_rate_high",
                "conversion",
                "conversion_low",
                "conversion_high",
                "asks_per_conversion",
            ):
                v = float(getattr(a, m))
                if math.isfinite(v):
                    metrics[f"{k}.{m}"] = v
            for m, v in a.vs_control.items():
                if math.isfinite(v):
                    metrics[f"{k}.vs_control.{m}"] = float(v)
        for e in report.exploration:
            k = _metric_key(e.arm)
            for m in ("explored_share", "exploration_cost", "delay_p50_s", "delay_p90_s"):
                v = float(getattr(e, m))
                if math.isfinite(v):
                    metrics[f"{k}.{m}"] = v
        for c in report.calibration:
            metrics[f"{_metric_key(c.arm)}.calibration_error.{_metric_key(c.step)}"] = c.error
        for d in report.drift:
            metrics[f"{_metric_key(d.arm)}.context_drift.{_metric_key(d.key)}"] = d.psi
        for s in report.shadows:
            k = "shadow." + _metric_key(s.arm)
            for m in ("decisions", "agreement", "ipw_accept_rate", "snipw_accept_rate"):
                v = float(getattr(s, m))
                if math.isfinite(v):
                    metrics[f"{k}.{m}"] = v
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "report.json").write_text(
                json.dumps(report.as_dict(), indent=2, default=float), encoding="utf-8"
            )
            pd.DataFrame([asdict(a) for a in report.arms]).to_csv(
                folder / "report.csv", index=False
            )
            _chart(report, folder / "conversion.png")
            for name in ("report.json", "report.csv", "conversion.png"):
                mlflow.log_artifact(str(folder / name))
        return str(run.info.run_id)


def _print(report: OnlineReport) -> None:
    from rich.console import Console
    from rich.table import Table

    def ci(v: float, lo: float, hi: float, pct: bool = True) -> str:
        if not math.isfinite(v):
            return "-"
        f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.2f}")
        return (
            f"{f(v)} [{f(lo) if math.isfinite(lo) else '-'}, {f(hi) if math.isfinite(hi) else '-'}]"
        )

    t = Table(title=f"Online experiment (control: {report.control})")
    for col in ("arm", "policy", "model", "decisions", "users", "accept rate", "conversion",
                "asks/conversion", "Δ conversion vs control", "p"):  # fmt: skip
        t.add_column(col, overflow="fold")  # a narrow terminal wraps cells, never cuts them
    for a in report.arms:
        vs = a.vs_control
        t.add_row(
            a.arm,
            a.policy,
            ",".join(a.model_versions) or "-",
            str(a.decisions),
            str(a.users),
            ci(a.accept_rate, a.accept_rate_low, a.accept_rate_high),
            ci(a.conversion, a.conversion_low, a.conversion_high),
            ci(a.asks_per_conversion, a.asks_per_conversion_low, a.asks_per_conversion_high, False),
            ci(vs["diff"], vs["low"], vs["high"]) if vs else "(control)",
            f"{vs['p']:.3g}" if vs else "-",
        )
    console = Console()
    if not console.is_terminal:  # a file or a pipe has no width: do not squeeze into 80
        console = Console(width=max(console.width, 240))
    console.print(t)
    _print_watch(report, console, ci)
    if report.shadows:
        s_t = Table(title="Shadow arms (never served)")
        columns = ["shadow", "shadows", "policy", "decisions", "agreement", "served accept rate"]
        for col in [*columns, "shadow accept rate (IPW [95% CI])", "SNIPW"]:
            s_t.add_column(col)
        for s in report.shadows:
            s_t.add_row(
                s.arm,
                s.shadow_of,
                s.policy,
                str(s.decisions),
                f"{100 * s.agreement:.1f}%",
                f"{100 * s.served_accept_rate:.1f}%",
                f"{100 * s.ipw_accept_rate:.1f}% [{100 * s.ipw_low:.1f}%, {100 * s.ipw_high:.1f}%]",
                f"{100 * s.snipw_accept_rate:.1f}%" if math.isfinite(s.snipw_accept_rate) else "-",
            )
        Console().print(s_t)


def _print_watch(report: OnlineReport, console: Any, ci: Any) -> None:
    """The exploration cost and calibration tables (``loop.watch_report``)."""
    from rich.table import Table

    if report.exploration:
        e_t = Table(title="Exploration and outcome delay (accepts lost per offer: see docs)")
        for col in ("arm", "offers", "explored", "accept rate explored", "accept rate policy",
                    "accepts lost per offer", "outcome delay p50 / p90"):  # fmt: skip
            e_t.add_column(col, overflow="fold")
        for e in report.exploration:
            e_t.add_row(
                e.arm,
                str(e.offers),
                ci(e.explored_share, e.explored_share_low, e.explored_share_high),
                ci(e.explored_accept_rate, e.explored_accept_low, e.explored_accept_high),
                ci(e.policy_accept_rate, e.policy_accept_low, e.policy_accept_high),
                ci(e.exploration_cost, e.exploration_cost_low, e.exploration_cost_high),
                f"{_duration(e.delay_p50_s)} / {_duration(e.delay_p90_s)}",
            )
        console.print(e_t)
    if report.calibration:
        c_t = Table(title="Calibration (last resolved offers per arm and step)")
        for col in ("arm", "step", "offers", "observed", "predicted", "observed - predicted"):
            c_t.add_column(col, overflow="fold")
        for c in report.calibration:
            c_t.add_row(
                c.arm,
                c.step,
                str(c.offers),
                f"{100 * c.observed:.1f}%",
                f"{100 * c.predicted:.1f}%",
                f"{100 * c.error:+.1f} pp",
            )
        console.print(c_t)
    if report.drift:
        d_t = Table(title="Context drift (PSI against the model's training data; > 0.25: a shift)")
        for col in ("arm", "model", "context key", "requests", "PSI"):
            d_t.add_column(col, overflow="fold")
        for d in report.drift:
            d_t.add_row(d.arm, d.model_version, d.key, str(d.requests), f"{d.psi:.3f}")
        console.print(d_t)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _model_meta(version: str) -> dict[str, Any] | None:
    """The bundle meta of a registered version (None, with a note, when it cannot be read: the
    report then has no drift rows for it)."""
    try:
        bundle, _ = load_model_bundle(f"models:/{tracking.MODEL_NAME}/{version}")
    except Exception as exc:  # a registry that is down or a version deleted: no drift score
        print(f"context drift: model version {version} not readable ({type(exc).__name__})")
        return None
    return dict(bundle.meta)


def report_command(
    since: str | None = None,
    control: str | None = None,
    *,
    catalog: Path | None = None,
    url: str | None = None,
) -> OnlineReport:
    """CLI entry point (``nextstep report``): build, print, log to MLflow."""
    cat = resolve_catalog(catalog, url)
    url = store_url(url)
    decisions, outcomes = read_store(url)
    t = _parse_since(since)
    report = build_report(decisions, outcomes, cat, since=t, control=control)
    dec_window = decisions if t is None else decisions[decisions["ts"] >= t]
    report.shadows = build_shadow_reports(dec_window, outcomes, read_shadows(url))
    report.drift = context_drift(dec_window, _model_meta)
    _print(report)
    run_id = log_report(report, since=t)
    print(f"logged to MLflow experiment {tracking.EXPERIMENT_ONLINE!r}, run {run_id}")
    return report

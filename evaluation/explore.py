"""Summaries of an event log for exploration (the notebooks import these, docs/design.md section 2).

Everything works on a validated frame (``features.events.EventLog.frame``) with whole-column
pandas operations and returns a small DataFrame, in funnel-stage order, ready to display or plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import STAGES, Catalog
from features.offline import build_offline_features
from features.spec import FeatureSpec
from features.state import ACCEPTED


def _stage_of(frame: pd.DataFrame, catalog: Catalog) -> pd.Series:
    stage_ids = frame["step"].map(catalog.index).map(lambda i: catalog.stage_indices[i])
    return pd.Series(pd.Categorical.from_codes(stage_ids.to_numpy(), categories=list(STAGES)))


def funnel(frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Per stage: users offered a step of it, users who accepted one, and their shares.

    ``reached`` is the share of all users who accepted a step of that stage (for ``convert``:
    the conversion rate); ``accepted_if_offered`` the share of those offered who accepted.
    """
    stage = _stage_of(frame, catalog)
    users = frame["user_id"].to_numpy()
    accepted = (frame["outcome"] == ACCEPTED).to_numpy()
    n_users = int(pd.Series(users).nunique())
    offered = pd.Series(users).groupby(stage.to_numpy(), observed=False).nunique()
    took = pd.Series(users[accepted]).groupby(stage.to_numpy()[accepted], observed=False).nunique()
    out = pd.DataFrame(
        {
            "users_offered": offered.reindex(STAGES, fill_value=0),
            "users_accepted": took.reindex(STAGES, fill_value=0),
        }
    )
    out["reached"] = out["users_accepted"] / max(n_users, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["accepted_if_offered"] = out["users_accepted"] / out["users_offered"]
    out.index.name = "stage"
    return out


def rates_by_stage(frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Per stage: offers, and the shares accepted, declined and dropped."""
    stage = _stage_of(frame, catalog).to_numpy()
    outcome = frame["outcome"].astype(str).to_numpy()
    table = pd.crosstab(pd.Categorical(stage, categories=list(STAGES)), outcome, dropna=False)
    table = table.reindex(columns=["accepted", "declined", "dropped"], fill_value=0)
    offers = table.sum(axis=1)
    out = table.div(offers.where(offers > 0), axis=0).add_suffix("_rate")
    out.insert(0, "offers", offers)
    out.index = pd.Index(STAGES, name="stage")
    out.columns.name = None
    return out


def accept_rate_by_momentum(frame: pd.DataFrame, catalog: Catalog, cap: int = 3) -> pd.DataFrame:
    """Observed readiness: accept rate by stage (rows) and accepts in a row before the offer
    (columns, ``cap`` meaning "cap or more"), from the point-in-time features."""
    F = build_offline_features(frame, catalog, FeatureSpec())
    streak = F.X[:, F.names.index("cons_accepts")].astype(int).clip(max=cap)
    stage = np.asarray(catalog.stage_indices)[F.step_index]
    df = pd.DataFrame(
        {
            "stage": pd.Categorical.from_codes(stage, categories=list(STAGES)),
            "accepts_in_a_row": streak,
            "accepted": F.accepted.astype(float),
        }
    )
    table = df.pivot_table(
        index="stage", columns="accepts_in_a_row", values="accepted", aggfunc="mean", observed=False
    )
    table.columns = [f"{c}+" if c == cap else str(c) for c in table.columns]
    return table


def readiness_by_stage(frame: pd.DataFrame, catalog: Catalog, p_accept: Any) -> pd.DataFrame:
    """Mean predicted readiness next to the observed accept rate, per stage.

    ``p_accept`` is one prediction per row of ``frame`` (e.g. ``training.predict.predict_frame``).
    """
    stage = _stage_of(frame, catalog).to_numpy()
    df = pd.DataFrame(
        {
            "stage": pd.Categorical(stage, categories=list(STAGES)),
            "predicted": np.asarray(p_accept, dtype=np.float64),
            "observed": (frame["outcome"] == ACCEPTED).to_numpy(dtype=np.float64),
        }
    )
    out = df.groupby("stage", observed=False).agg(
        offers=("observed", "size"), predicted=("predicted", "mean"), observed=("observed", "mean")
    )
    return out


def plot_funnel(table: pd.DataFrame, path: str | Path | None = None) -> Any:
    """Horizontal bars of users offered / accepted per stage; saved as PNG when ``path``."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    y = np.arange(len(table))[::-1]
    ax.barh(y + 0.2, table["users_offered"], height=0.4, label="offered", color="#a6bddb")
    ax.barh(y - 0.2, table["users_accepted"], height=0.4, label="accepted", color="#2b8cbe")
    ax.set_yticks(y, list(table.index))
    ax.set_xlabel("users")
    ax.set_title("funnel by stage")
    ax.legend(loc="lower right")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig

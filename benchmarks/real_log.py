"""nextstep on a real public log: the Open University Learning Analytics Dataset (OULAD).

OULAD (Kuzilek, Hlosta and Zdrahal, "Open University Learning Analytics dataset", Scientific
Data 4, 170171, 2017; licence CC BY 4.0) records 173,912 assessment submissions of 32,593 student
registrations to 22 module presentations over 2013-2014. Each presentation's students start on
the same day (February "B" or October "J" intakes), which is what makes a calendar holdout
matter. The data is not shipped here: download the CSV files and pass their folder.

The log as nextstep sees it (``convert``):

* a user is one registration (student, module, presentation);
* an offer is a submitted assessment: step = the assessment, ``ts`` = the presentation's start
  (1 February or 1 October) plus the submission day; banked (carried-over) results are left out;
* accepted = score >= 40 (a pass), declined otherwise;
* catalog: computer-marked assessments are ``guide``, tutor-marked ``build``, exams ``convert``
  (the goal); effort = 1 + weight / 10; each assessment is ``available_when`` its presentation
  (``course``), so no user is offered another course's assessment;
* context: the student's gender, region, education, deprivation band, age band, disability,
  previous attempts and studied credits, the module and the course.

Compared on a calendar holdout (offers from ``--holdout-from``, default the October 2014
intake): nextstep's readiness model (with and without the step id), the logistic baseline with
ordinal and with one-hot categories, and the plain recipe a data scientist writes first: a
LightGBM classifier with default parameters on per-user history counts (earlier offers,
accepts, declines), the step id and the context, all categorical columns as LightGBM
categories.

    .venv/bin/python -m benchmarks.real_log --data DIR [--holdout-from 2014-10-01]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation import evaluate as ev
from features.catalog import Catalog
from features.events import EventLog, validate_frame
from models.readiness import LogisticBaseline
from training.holdout import Holdout
from training.pipeline import TrainingOutcome, features_for, fit_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
STAGE = {"CMA": "guide", "TMA": "build", "Exam": "convert"}
CONTEXT = [
    "gender",
    "region",
    "highest_education",
    "imd_band",
    "age_band",
    "disability",
    "num_of_prev_attempts",
    "studied_credits",
    "code_module",
    "course",
]


def _start(presentation: pd.Series) -> pd.Series:
    """1 February (B) or 1 October (J) of the presentation's year, epoch seconds."""
    year = presentation.str[:4]
    month = np.where(presentation.str[4] == "B", "02", "10")
    start = pd.to_datetime(year + "-" + month + "-01", utc=True)
    return (start - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def convert(folder: Path) -> tuple[pd.DataFrame, Catalog]:
    """The OULAD CSV files as a nextstep event frame and catalog."""
    sa = pd.read_csv(folder / "studentAssessment.csv", dtype_backend="numpy_nullable")
    info = pd.read_csv(folder / "studentInfo.csv")
    assess = pd.read_csv(folder / "assessments.csv")
    sa["score"] = pd.to_numeric(sa["score"], errors="coerce")
    sa = sa[sa["is_banked"].astype(int) == 0]
    df = sa.merge(assess, on="id_assessment").merge(
        info, on=["id_student", "code_module", "code_presentation"]
    )
    df["course"] = df["code_module"] + df["code_presentation"]
    df["step"] = df["course"] + "-" + df["assessment_type"] + "-" + df["id_assessment"].astype(str)
    frame = pd.DataFrame(
        {
            "user_id": df["id_student"].astype(str) + "@" + df["course"],
            "ts": _start(df["code_presentation"]) + df["date_submitted"].astype(float) * 86400,
            "step": df["step"],
            "outcome": np.where(df["score"].fillna(0) >= 40, "accepted", "declined"),
            **{c: df[c] for c in CONTEXT},
        }
    )
    steps = (
        df[["step", "assessment_type", "weight", "course", "date"]]
        .drop_duplicates("step")
        .sort_values(["course", "date", "step"])
    )
    catalog = Catalog.from_data(
        [
            {
                "id": r.step,
                "stage": STAGE[r.assessment_type],
                "effort": 1.0 + float(r.weight) / 10.0,
                "available_when": {"course": [r.course]},
            }
            for r in steps.itertuples(index=False)
        ],
        source="oulad",
    )
    return frame, catalog


def history_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row: the user's earlier offers, accepts and declines (ties by file order)."""
    order = np.lexsort((frame["row"].to_numpy(), frame["ts"].to_numpy(), frame["user_id"]))
    f = frame.iloc[order]
    acc = (f["outcome"] == "accepted").astype(int)
    g = f.groupby("user_id", sort=False)
    out = pd.DataFrame(
        {
            "prev_offers": g.cumcount().to_numpy(),
            "prev_accepts": (acc.groupby(f["user_id"], sort=False).cumsum() - acc).to_numpy(),
        },
        index=f.index,
    )
    out["prev_declines"] = out["prev_offers"] - out["prev_accepts"]
    return out.loc[frame.index]


def plain_recipe(frame: pd.DataFrame, holdout: np.ndarray, seed: int) -> np.ndarray:
    """Default LightGBM on history counts, the step id and the context (categories as such)."""
    import lightgbm as lgb

    X = history_counts(frame)
    for c in ["step", *CONTEXT]:
        col = frame[c]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        X[c] = col.to_numpy() if numeric else pd.Categorical(col.astype(str))
    y = (frame["outcome"] == "accepted").to_numpy(dtype=int)
    model = lgb.LGBMClassifier(random_state=seed, verbose=-1, n_jobs=1)
    model.fit(X[~holdout], y[~holdout])
    return model.predict_proba(X[holdout])[:, 1]


def run(folder: Path, holdout_from: str, seed: int = 0) -> dict[str, dict[str, float]]:
    frame, catalog = convert(folder)
    log: EventLog = validate_frame(frame, catalog, source=str(folder), skip_invalid=True)
    split = Holdout.of("time", None, holdout_from)
    results: dict[str, dict[str, float]] = {}
    for label, on in (("nextstep", False), ("nextstep + step id", True)):
        out = fit_and_evaluate(log, catalog, seed=seed, holdout=split, step_feature=on)
        results[label] = out.metrics["lgbm"]
        if not on:
            results["logistic, one-hot categories"] = out.metrics["logreg"]
            X, y = _matrix(log, catalog, out)
            ordinal = LogisticBaseline(random_state=seed).fit(X[~out.holdout], y[~out.holdout])
            p = ordinal.predict_proba(X[out.holdout])[:, 1]
            results["logistic, ordinal categories"] = ev.evaluate(y[out.holdout], p, out.stage)
            ho = out.holdout
    p = plain_recipe(log.frame, ho, seed)
    y_ho = (log.frame["outcome"] == "accepted").to_numpy(dtype=int)[ho]
    results["plain LightGBM recipe"] = ev.evaluate(y_ho, p, out.stage)
    keep = ("auc", "logloss", "ece", "brier", "rows")
    summary = {k: {m: float(v[m]) for m in keep if m in v} for k, v in results.items()}
    summary["_log"] = {
        "rows": float(len(log.frame)),
        "users": float(log.frame["user_id"].nunique()),
        "skipped": float(log.n_skipped),
        "train_rows": float((~ho).sum()),
        "holdout_rows": float(ho.sum()),
    }
    return summary


def _matrix(log: EventLog, catalog: Catalog, out: TrainingOutcome) -> tuple[np.ndarray, np.ndarray]:
    F = features_for(log.frame, catalog, out.spec)
    return F.X, F.accepted.astype(int)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="Folder of the OULAD CSV files.")
    ap.add_argument("--holdout-from", default="2014-10-01T00:00:00Z")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "real_log.json")
    args = ap.parse_args(argv)
    res = run(args.data, args.holdout_from, args.seed)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["_log"]))
    print(f"{'model':32} {'AUC':>8} {'log loss':>9} {'ECE':>7}")
    for k, v in res.items():
        if not k.startswith("_"):
            print(f"{k:32} {v['auc']:8.4f} {v['logloss']:9.4f} {v['ece']:7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

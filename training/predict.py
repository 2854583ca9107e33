"""``nextstep predict``: the readiness of every logged offer, from that user's earlier rows only.

The offline feature builder is point-in-time (each row sees only the same user's earlier rows,
ties of equal ``ts`` broken by file order), and the model's ``FeatureSpec`` (not the log) decides
the context encoding, so a row's prediction cannot change when anything after it changes.
Output columns ``user_id, ts, step, p_accept`` in input order (rows dropped by
``--skip-invalid`` are absent); CSV writes ``ts`` as ISO-8601 UTC with ``Z``, Parquet as float64
epoch seconds (lossless, the same convention as ``features.events.write_events``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.errors import NextstepError
from features.events import format_ts
from models.bundle import ModelScorer
from training.pipeline import features_for

_CSV = (".csv", ".csv.gz")
_PARQUET = (".parquet", ".pq")


class OutputError(NextstepError):
    """The output path cannot be written (unknown extension, missing directory...)."""


def predict_frame(frame: pd.DataFrame, catalog: Catalog, scorer: ModelScorer) -> pd.DataFrame:
    """``user_id, ts, step, p_accept`` for every row of a validated frame, in its order."""
    F = features_for(frame, catalog, scorer.spec)
    p = scorer.p_accept_rows(np.ascontiguousarray(F.X)) if len(frame) else np.empty(0)
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(),
            "ts": frame["ts"].to_numpy(dtype=np.float64),
            "step": frame["step"].to_numpy(),
            "p_accept": np.asarray(p, dtype=np.float64),
        }
    )


def check_output(path: Path) -> None:
    """The output path has a known extension and its directory exists (checked before work)."""
    if not path.name.lower().endswith(_CSV + _PARQUET):
        raise OutputError(
            f"{path}: unsupported output type, expected .csv, .csv.gz, .parquet or .pq"
        )
    if not path.parent.exists():
        raise OutputError(f"{path}: directory {path.parent} does not exist")


def write_table(frame: pd.DataFrame, path: Path, ts_columns: tuple[str, ...] = ()) -> None:
    """CSV or Parquet by extension; ``ts_columns`` (epoch seconds) become ISO-8601 in CSV."""
    check_output(path)
    name = path.name.lower()
    import pyarrow as pa

    try:
        if name.endswith(_CSV):
            import pyarrow.csv as pacsv

            out = frame.assign(**{c: format_ts(frame[c].to_numpy()) for c in ts_columns})
            table = pa.Table.from_pandas(out, preserve_index=False)
            if name.endswith(".gz"):
                with pa.CompressedOutputStream(str(path), "gzip") as stream:
                    pacsv.write_csv(table, stream)
            else:
                pacsv.write_csv(table, str(path))
        else:
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), str(path))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from None

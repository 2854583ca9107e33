"""Off-policy evaluation: textbook values, the shared bootstrap, coverage, and bad files.

Estimates are checked against hand-computed numbers and against an independent pure-Python
implementation of each formula (``math.fsum`` over lists); files go through the real
``nextstep ope`` command (Typer's CliRunner) with real CSV and Parquet files in ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation.ope import (
    ESTIMATORS,
    LoggedData,
    LoggedDataError,
    _bootstrap_totals,
    _resample_counts,
    _segments,
    effective_sample_size,
    estimate_all,
    read_logged_data,
)
from features.errors import InputError
from nextstep.cli.app import app

ALL_NAMES = ["ipw", "snipw", "dm", "dr", "sndr"]
REQUIRED = ("reward", "propensity", "target_propensity")
ESTIMATOR_COLUMNS = (*REQUIRED, "q_hat", "q_target")

# -- a table small enough to compute by hand ---------------------------------------------------
# row  reward  propensity  target  w=target/prop  w*r  q_hat  q_target  r-q_hat  w*(r-q_hat)
#  1     1       0.5        1.0        2.0        2.0   0.5     0.6       0.5        1.0
#  2     0       0.25       0.5        2.0        0.0   0.2     0.4      -0.2       -0.4
#  3     1       0.8        0.4        0.5        0.5   0.6     0.5       0.4        0.2
#  4     1       0.25       0.5        2.0        2.0   0.8     0.7       0.2        0.4
#  5     0       1.0        0.0        0.0        0.0   0.1     0.3      -0.1        0.0
# sums                                 6.5        4.5           2.5                  1.2
TINY = {
    "reward": [1.0, 0.0, 1.0, 1.0, 0.0],
    "propensity": [0.5, 0.25, 0.8, 0.25, 1.0],
    "target_propensity": [1.0, 0.5, 0.4, 0.5, 0.0],
    "q_hat": [0.5, 0.2, 0.6, 0.8, 0.1],
    "q_target": [0.6, 0.4, 0.5, 0.7, 0.3],
}
TINY_EXPECTED = {
    "ipw": 4.5 / 5,  # 0.9
    "snipw": 4.5 / 6.5,  # 9/13 = 0.6923...
    "dm": 2.5 / 5,  # 0.5
    "dr": 2.5 / 5 + 1.2 / 5,  # 0.5 + 0.24 = 0.74
    "sndr": 2.5 / 5 + 1.2 / 6.5,  # 0.5 + 12/65 = 89/130 = 0.6846...
}


def tiny_data() -> LoggedData:
    return LoggedData(**{k: np.array(v) for k, v in TINY.items()})


def random_table(n: int, seed: int) -> pd.DataFrame:
    """Rounds with real-valued rewards, some propensities exactly 1 and some targets exactly 0."""
    rng = np.random.default_rng(seed)
    propensity = rng.uniform(0.02, 1.0, n)
    propensity[rng.random(n) < 0.05] = 1.0
    target = rng.uniform(0.0, 1.0, n)
    target[rng.random(n) < 0.1] = 0.0
    return pd.DataFrame(
        {
            "reward": rng.normal(0.5, 1.0, n),
            "propensity": propensity,
            "target_propensity": target,
            "q_hat": rng.uniform(-1.0, 2.0, n),
            "q_target": rng.uniform(-1.0, 2.0, n),
            "channel": np.where(rng.random(n) < 0.5, "email", "push"),  # ignored
        }
    )


def textbook(frame: pd.DataFrame) -> dict[str, float]:
    """Each estimator straight from its formula, in plain Python (no numpy on the data)."""
    r = frame["reward"].tolist()
    w = [t / p for t, p in zip(frame["target_propensity"], frame["propensity"], strict=True)]
    n = len(r)
    out = {
        "ipw": math.fsum(wi * ri for wi, ri in zip(w, r, strict=True)) / n,
        "snipw": math.fsum(wi * ri for wi, ri in zip(w, r, strict=True)) / math.fsum(w),
    }
    if "q_hat" in frame:
        qh, qt = frame["q_hat"].tolist(), frame["q_target"].tolist()
        corr = [wi * (ri - qi) for wi, ri, qi in zip(w, r, qh, strict=True)]
        out["dm"] = math.fsum(qt) / n
        out["dr"] = math.fsum(t + c for t, c in zip(qt, corr, strict=True)) / n
        out["sndr"] = math.fsum(qt) / n + math.fsum(corr) / math.fsum(w)
    return out


def run_ope(path: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["ope", "--input", str(path), *args])


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path, Path]:
    frame = random_table(200_000, seed=7)
    folder = tmp_path_factory.mktemp("ope")
    csv, parquet = folder / "big.csv", folder / "big.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    return frame, csv, parquet


# -- point estimates ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
def test_tiny_table_matches_hand_computation(name: str) -> None:
    data = tiny_data()
    estimator = ESTIMATORS[name]
    assert estimator.estimate_policy_value(data) == pytest.approx(TINY_EXPECTED[name], rel=1e-12)
    # obp's shape: the per-round rewards average to the estimate.
    rounds = estimator._estimate_round_rewards(data)
    assert rounds.shape == (5,)
    assert float(np.mean(rounds)) == pytest.approx(TINY_EXPECTED[name], rel=1e-12)


def test_tiny_table_without_bootstrap_gives_point_intervals() -> None:
    result = estimate_all(tiny_data(), n_boot=0, seed=0)
    assert result["rows"] == 5
    assert list(result["estimates"]) == ALL_NAMES
    for name, est in result["estimates"].items():
        assert est["value"] == est["low"] == est["high"]
        assert est["value"] == pytest.approx(TINY_EXPECTED[name], rel=1e-12)
        assert ESTIMATORS[name].estimate_interval(tiny_data(), n_boot=0) == (
            est["value"],
            est["value"],
        )


def test_tiny_table_through_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    pd.DataFrame(TINY).to_csv(path, index=False)
    result = run_ope(path, "--n-boot", "0")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["rows"] == 5
    for name, expected in TINY_EXPECTED.items():
        est = out["estimates"][name]
        assert est["value"] == pytest.approx(expected, rel=1e-12)
        assert est["low"] == est["high"] == est["value"]


def test_registry_declares_what_each_estimator_needs() -> None:
    assert list(ESTIMATORS) == ALL_NAMES
    needs_model = {name for name, est in ESTIMATORS.items() if est.requires_reward_model}
    assert needs_model == {"dm", "dr", "sndr"}
    without_q = LoggedData(**{k: np.array(TINY[k]) for k in REQUIRED})
    with pytest.raises(LoggedDataError, match="DR needs a reward model"):
        ESTIMATORS["dr"].estimate_policy_value(without_q)
    assert list(estimate_all(without_q, n_boot=0, seed=0)["estimates"]) == ["ipw", "snipw"]


def test_large_table_matches_textbook_formulas(big: tuple[pd.DataFrame, Path, Path]) -> None:
    frame, _, _ = big
    expected = textbook(frame)
    data = LoggedData(**{c: frame[c].to_numpy() for c in ESTIMATOR_COLUMNS})
    for name in ALL_NAMES:
        got = ESTIMATORS[name].estimate_policy_value(data)
        assert got == pytest.approx(expected[name], rel=1e-9), name
    result = estimate_all(data, n_boot=0, seed=0)
    for name in ALL_NAMES:
        assert result["estimates"][name]["value"] == ESTIMATORS[name].estimate_policy_value(data)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_cli_matches_textbook_formulas(big: tuple[pd.DataFrame, Path, Path], kind: str) -> None:
    frame, csv, parquet = big
    result = run_ope(csv if kind == "csv" else parquet, "--n-boot", "50", "--seed", "1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"rows", "estimates"}
    assert out["rows"] == len(frame)
    assert list(out["estimates"]) == ALL_NAMES
    expected = textbook(frame)
    for name, est in out["estimates"].items():
        assert set(est) == {"value", "low", "high"}
        assert all(isinstance(est[k], float) and math.isfinite(est[k]) for k in est)
        assert est["value"] == pytest.approx(expected[name], rel=1e-9), name
        assert est["low"] <= est["value"] <= est["high"], name
        assert est["low"] < est["high"], name


def test_cli_without_model_columns_reports_ipw_and_snipw_only(tmp_path: Path) -> None:
    frame = random_table(1_000, seed=3)[["reward", "propensity", "target_propensity"]]
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    result = run_ope(path, "--n-boot", "20")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert list(out["estimates"]) == ["ipw", "snipw"]
    expected = textbook(frame)
    for name, est in out["estimates"].items():
        assert est["value"] == pytest.approx(expected[name], rel=1e-9)


def test_no_support_gives_zero_snipw_and_sndr_falls_back_to_dm() -> None:
    data = LoggedData(
        reward=np.array([1.0, 0.0, 1.0]),
        propensity=np.array([0.5, 0.5, 1.0]),
        target_propensity=np.zeros(3),
        q_hat=np.array([0.2, 0.4, 0.6]),
        q_target=np.array([0.3, 0.3, 0.6]),
    )
    result = estimate_all(data, n_boot=20, seed=0)["estimates"]
    assert result["ipw"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert result["snipw"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert result["sndr"] == result["dm"]
    assert effective_sample_size(data) == 0.0


def test_effective_sample_size() -> None:
    # weights 2, 2, 0.5, 2, 0: sum 6.5, sum of squares 4 + 4 + 0.25 + 4 = 12.25
    assert effective_sample_size(tiny_data()) == pytest.approx(6.5**2 / 12.25, rel=1e-12)
    same_policy = LoggedData(np.ones(8), np.full(8, 0.25), np.full(8, 0.25))
    assert effective_sample_size(same_policy) == pytest.approx(8.0)


# -- bootstrap ---------------------------------------------------------------------------------
def test_resample_counts_are_a_multinomial_resample() -> None:
    n = 100_000  # four segments, the last one short
    starts, sizes, shares = _segments(n)
    assert len(starts) == 4 and sum(sizes) == n
    rng = np.random.default_rng(5)
    counts = np.empty((20, n))
    for row in counts:
        _resample_counts(rng, starts, sizes, shares, out=row)
    assert counts.shape == (20, n)
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    assert (counts.sum(axis=1) == n).all()
    # Each round is drawn Binomial(n, 1/n) ~ Poisson(1) times: P(0) = e^-1, mean 1, variance ~1.
    assert (counts == 0).mean() == pytest.approx(math.exp(-1), abs=0.003)
    assert counts.var() == pytest.approx(1.0 - 1.0 / n, abs=0.01)
    # Every segment, the short last one included, gets its fair share of the draws.
    last = counts[:, starts[-1] :].sum(axis=1)
    expected, sd = n * shares[-1], math.sqrt(n * shares[-1] * (1 - shares[-1]))
    assert np.abs(last - expected).max() < 5 * sd


def test_intervals_are_percentiles_of_textbook_estimates_on_resampled_rows() -> None:
    frame = random_table(40_000, seed=11)
    data = LoggedData(**{c: frame[c].to_numpy() for c in ESTIMATOR_COLUMNS})
    n_boot, seed = 25, 4
    # Redraw the same resamples, materialise each one as rows, apply the formulas directly.
    rng = np.random.default_rng(seed)
    starts, sizes, shares = _segments(len(frame))
    replicates: dict[str, list[float]] = {name: [] for name in ALL_NAMES}
    for _ in range(n_boot):
        counts = np.empty(len(frame))
        _resample_counts(rng, starts, sizes, shares, out=counts)
        rows = np.repeat(np.arange(len(frame)), counts.astype(np.int64))
        r, p, t = (frame[c].to_numpy()[rows] for c in ("reward", "propensity", "target_propensity"))
        qh, qt = frame["q_hat"].to_numpy()[rows], frame["q_target"].to_numpy()[rows]
        w = t / p
        replicates["ipw"].append(np.mean(w * r))
        replicates["snipw"].append(np.sum(w * r) / np.sum(w))
        replicates["dm"].append(np.mean(qt))
        replicates["dr"].append(np.mean(qt + w * (r - qh)))
        replicates["sndr"].append(np.mean(qt) + np.sum(w * (r - qh)) / np.sum(w))
    result = estimate_all(data, n_boot=n_boot, seed=seed)["estimates"]
    for name in ALL_NAMES:
        low, high = np.percentile(replicates[name], [2.5, 97.5])
        assert result[name]["low"] == pytest.approx(low, rel=1e-9), name
        assert result[name]["high"] == pytest.approx(high, rel=1e-9), name


def test_estimate_interval_uses_the_same_resamples_as_estimate_all() -> None:
    frame = random_table(5_000, seed=2)
    data = LoggedData(**{c: frame[c].to_numpy() for c in ESTIMATOR_COLUMNS})
    result = estimate_all(data, n_boot=100, seed=9, alpha=0.1)["estimates"]
    for name, estimator in ESTIMATORS.items():
        low, high = estimator.estimate_interval(data, n_boot=100, alpha=0.1, seed=9)
        assert low == pytest.approx(result[name]["low"], rel=1e-12)
        assert high == pytest.approx(result[name]["high"], rel=1e-12)


def test_bootstrap_totals_are_deterministic_and_bounded_per_resample() -> None:
    stats = np.random.default_rng(0).random((3, 1_000))
    a = _bootstrap_totals(stats, 10, seed=3)
    assert a.shape == (10, 3)
    assert np.array_equal(a, _bootstrap_totals(stats, 10, seed=3))
    # The first resamples do not depend on how many are drawn after them (nor on the blocking).
    np.testing.assert_allclose(a[:4], _bootstrap_totals(stats, 4, seed=3), rtol=1e-13)
    assert not np.array_equal(a, _bootstrap_totals(stats, 10, seed=4))


def test_same_seed_same_json_and_different_seed_different_intervals(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    random_table(3_000, seed=1).to_parquet(path)
    first = run_ope(path, "--n-boot", "40", "--seed", "5")
    again = run_ope(path, "--n-boot", "40", "--seed", "5")
    other = run_ope(path, "--n-boot", "40", "--seed", "6")
    assert first.exit_code == again.exit_code == other.exit_code == 0
    assert first.stdout == again.stdout
    a, b = json.loads(first.stdout)["estimates"], json.loads(other.stdout)["estimates"]
    for name in ALL_NAMES:
        assert a[name]["value"] == b[name]["value"]
        assert (a[name]["low"], a[name]["high"]) != (b[name]["low"], b[name]["high"])


def test_intervals_cover_the_true_value() -> None:
    """Three actions, context-free: the true value of the target policy is known exactly."""
    logging_policy = np.array([0.5, 0.3, 0.2])
    target_policy = np.array([0.2, 0.3, 0.5])
    mean_reward = np.array([0.3, 0.5, 0.7])
    truth = float(target_policy @ mean_reward)  # 0.06 + 0.15 + 0.35 = 0.56
    biased_model = mean_reward + np.array([0.1, -0.1, 0.05])  # DR must not care
    n_seeds, n_rounds = 30, 1_000
    covered = dict.fromkeys(("ipw", "snipw", "dm", "dr", "sndr"), 0)
    for seed in range(n_seeds):
        rng = np.random.default_rng(1_000 + seed)
        action = rng.choice(3, size=n_rounds, p=logging_policy)
        data = LoggedData(
            reward=(rng.random(n_rounds) < mean_reward[action]).astype(np.float64),
            propensity=logging_policy[action],
            target_propensity=target_policy[action],
            q_hat=biased_model[action],
            q_target=np.full(n_rounds, target_policy @ biased_model),
        )
        estimates = estimate_all(data, n_boot=200, seed=seed)["estimates"]
        for name in covered:
            covered[name] += estimates[name]["low"] <= truth <= estimates[name]["high"]
    dm_hits = covered.pop("dm")
    for name, hits in covered.items():
        assert hits / n_seeds >= 0.85, (name, hits)
    # The check has teeth: DM trusts the biased model alone and misses the truth.
    assert dm_hits / n_seeds < 0.5


# -- bad input ---------------------------------------------------------------------------------
GOOD_HEADER = "reward,propensity,target_propensity"
BAD_FILES = [
    # file name, contents, expected row, expected column, message fragment
    pytest.param(
        "a.csv",
        "reward,propensity\n1,0.5\n",
        None,
        "target_propensity",
        "missing",
        id="missing column",
    ),
    pytest.param(
        "b.csv",
        f"{GOOD_HEADER}\n1,0.5,0.5\n0,0.2,0.1\n1,0,0.3\n",
        3,
        "propensity",
        "(0, 1]",
        id="propensity 0",
    ),
    pytest.param(
        "c.csv",
        f"{GOOD_HEADER}\n1,0.5,0.5\n0,1.5,0.1\n",
        2,
        "propensity",
        "1.5",
        id="propensity 1.5",
    ),
    pytest.param(
        "d.csv",
        f"{GOOD_HEADER}\n1,0.5,0.5\n0,0.2,0.1\n1,0.3,0.3\nabc,0.4,0.2\n",
        4,
        "reward",
        "'abc'",
        id="non-numeric",
    ),
    pytest.param(
        "e.csv", f"{GOOD_HEADER},q_hat\n1,0.5,0.5,0.3\n", None, "q_target", "q_hat", id="only q_hat"
    ),
    pytest.param(
        "f.csv",
        f"{GOOD_HEADER}\n1,0.5,1.2\n",
        1,
        "target_propensity",
        "[0, 1]",
        id="target above 1",
    ),
    pytest.param(
        "g.csv",
        f"{GOOD_HEADER}\n1,0.5,0.5\n1,0.5,-0.1\n",
        2,
        "target_propensity",
        "-0.1",
        id="target negative",
    ),
    pytest.param(
        "h.csv",
        f"{GOOD_HEADER}\n1,0.5,0.5\n1,,0.5\n",
        2,
        "propensity",
        "missing value",
        id="empty cell",
    ),
    pytest.param(
        "i.csv",
        f"{GOOD_HEADER}\n1,0.5,0.5\ninf,0.5,0.5\n",
        2,
        "reward",
        "finite",
        id="infinite reward",
    ),
    pytest.param(
        "j.csv",
        f"{GOOD_HEADER},q_hat,q_target\n1,0.5,0.5,0.3,x\n",
        1,
        "q_target",
        "'x'",
        id="bad q_target",
    ),
    pytest.param("k.csv", f"{GOOD_HEADER}\n", None, None, "no rows", id="no rows"),
    pytest.param(
        "l.txt", f"{GOOD_HEADER}\n1,0.5,0.5\n", None, None, "unsupported", id="wrong extension"
    ),
]


@pytest.mark.parametrize(
    ("name", "contents", "row", "column", "fragment"),
    BAD_FILES,
)
def test_bad_files_exit_2_naming_file_row_and_column(
    tmp_path: Path, name: str, contents: str, row: int | None, column: str | None, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(contents)
    result = run_ope(path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert str(path) in message
    assert fragment in message
    if row is not None:
        assert f"row {row}" in message
    if column is not None:
        assert f"column {column!r}" in message
    with pytest.raises(LoggedDataError) as info:
        read_logged_data(path)
    assert (info.value.source, info.value.row, info.value.column) == (str(path), row, column)


def test_bad_parquet_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {"reward": [1.0, 0.0], "propensity": [0.5, 0.0], "target_propensity": [0.5, 0.5]}
    ).to_parquet(path)
    result = run_ope(path)
    assert result.exit_code == 2
    assert f"{path}, row 2, column 'propensity'" in result.stderr


@pytest.mark.parametrize(
    ("path", "fragment"),
    [("missing.csv", "no such file"), ("broken.parquet", "cannot read")],
)
def test_unreadable_files_exit_2(tmp_path: Path, path: str, fragment: str) -> None:
    target = tmp_path / path
    if path.startswith("broken"):
        target.write_bytes(b"not parquet at all")
    result = run_ope(target)
    assert result.exit_code == 2
    assert str(target) in result.stderr and fragment in result.stderr
    assert "Traceback" not in result.output


N3 = np.array([1.0, 0.0, 1.0])
HALF3 = np.full(3, 0.5)
BAD_ARRAYS = [
    # LoggedData overrides, expected row, expected column, message fragment
    pytest.param(
        {"propensity": np.full(2, 0.5)}, None, "propensity", "2 rows", id="length mismatch"
    ),
    pytest.param(
        {"reward": np.ones((3, 1))}, None, "reward", "one-dimensional", id="two-dimensional"
    ),
    pytest.param({"reward": np.array([1.0, np.nan, 0.0])}, 2, "reward", "finite", id="nan reward"),
    pytest.param({"reward": np.array(["1", "a", "0"])}, None, "reward", "not numeric", id="text"),
    pytest.param(
        {"propensity": np.array([0.5, 0.5, 0.0])}, 3, "propensity", "(0, 1]", id="zero propensity"
    ),
    pytest.param(
        {"propensity": np.array([0.5, 5e-324, 0.5])},
        2,
        "propensity",
        "overflows",
        id="tiny propensity",
    ),
    pytest.param(
        {"q_target": N3}, None, "q_hat", "q_target is given without q_hat", id="only q_target"
    ),
    pytest.param(
        {k: np.array([]) for k in ("reward", "propensity", "target_propensity")},
        None,
        None,
        "no rows",
        id="empty",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "row", "column", "fragment"),
    BAD_ARRAYS,
)
def test_logged_data_rejects_bad_arrays(
    overrides: dict[str, Any], row: int | None, column: str | None, fragment: str
) -> None:
    kwargs = {"reward": N3, "propensity": HALF3, "target_propensity": HALF3, **overrides}
    with pytest.raises(LoggedDataError) as info:
        LoggedData(**kwargs)
    assert isinstance(info.value, InputError)
    assert (info.value.row, info.value.column) == (row, column)
    assert fragment in str(info.value)


def test_logged_data_is_read_only_without_freezing_the_callers_arrays() -> None:
    reward = np.array([1.0, 0.0])
    data = LoggedData(reward, np.full(2, 0.5), np.full(2, 0.5))
    with pytest.raises(ValueError, match="read-only"):
        data.reward[0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        data.importance_weights[0] = 5.0
    reward[0] = 2.0  # the caller's array is still theirs
    assert data.reward.dtype == np.float64 and data.n_rounds == 2


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_boot": -1, "seed": 0}, "n_boot"),
        ({"n_boot": 10, "seed": -3}, "seed"),
        ({"n_boot": 10, "seed": 0, "alpha": 1.0}, "alpha"),
    ],
)
def test_bad_bootstrap_options(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        estimate_all(tiny_data(), **kwargs)


def test_negative_seed_on_the_command_line_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    pd.DataFrame(TINY).to_csv(path, index=False)
    result = run_ope(path, "--seed", "-1")
    assert result.exit_code == 2
    assert "seed must be an integer >= 0" in result.stderr


def test_module_stays_light() -> None:
    """``compare``, ``promote`` and notebooks import it: no MLflow, LightGBM or service code,
    and pandas only once a file is read."""
    heavy = "{'mlflow', 'lightgbm', 'sklearn', 'service', 'pandas'}"
    code = f"import sys, evaluation.ope; print(sorted({heavy} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"


def test_ope_json_is_indented_on_a_terminal_and_one_line_in_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from evaluation.ope import ope_command

    path = tmp_path / "logged.csv"
    path.write_text(
        "reward,propensity,target_propensity\n1,0.5,1\n0,0.5,0\n1,0.25,0.5\n", encoding="utf-8"
    )
    ope_command(path, n_boot=10, seed=0)
    piped = capsys.readouterr().out
    assert piped.count("\n") == 1
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    ope_command(path, n_boot=10, seed=0)
    shown = capsys.readouterr().out
    assert shown.count("\n") > 5 and json.loads(shown) == json.loads(piped)

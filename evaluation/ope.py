"""Off-policy evaluation on logged data (docs/design.md section 8; ``nextstep ope``, section 5).

What would a *target* policy have earned had it run instead of the policy that wrote the log?
Every estimator here answers from one table with a row per logged round (one offer and its
reward):

| column | shape | meaning |
|---|---|---|
| ``reward`` | (n_rounds,) | observed reward of the logged action |
| ``propensity`` | (n_rounds,) | logging policy's probability of the logged action, in (0, 1] |
| ``target_propensity`` | (n_rounds,) | target policy's probability of the same action, in [0, 1] |
| ``q_hat`` | (n_rounds,), optional | reward model's prediction for the logged action |
| ``q_target`` | (n_rounds,), optional | reward model's expected reward under the target policy |

With importance weights ``w = target_propensity / propensity`` the estimators are the textbook
ones (Dudík et al. 2011/2014; Swaminathan & Joachims 2015), shaped like Open Bandit Pipeline's
(``obp.ope``): a per-row ``_estimate_round_rewards``, a public ``estimate_policy_value`` and a
percentile-bootstrap ``estimate_interval``::

    IPW   = mean(w * r)
    SNIPW = sum(w * r) / sum(w)
    DM    = mean(q_target)
    DR    = mean(q_target + w * (r - q_hat))
    SNDR  = mean(q_target) + sum(w * (r - q_hat)) / sum(w)

Every estimate is a function of a few column totals, so each estimator declares those per-row
columns (``_statistics``, shape (n_stats, n_rounds)) and how totals become a value
(``_value_from_totals``). The bootstrap then needs only, per resample, how often each round was
drawn (a count vector), and one matrix product per block of resamples; all estimators share the
same resamples.

This module needs numpy, and pandas only to read files (imported there, as it is slow to import);
no MLflow, LightGBM or service code, so ``compare``, ``promote`` and notebooks use it cheaply.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from features.errors import InputError

if TYPE_CHECKING:  # pandas costs about a second to import; only the file readers need it
    import pandas as pd

FloatArray = npt.NDArray[np.float64]

REQUIRED_COLUMNS: tuple[str, ...] = ("reward", "propensity", "target_propensity")
MODEL_COLUMNS: tuple[str, ...] = ("q_hat", "q_target")
COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + MODEL_COLUMNS

DEFAULT_N_BOOT = 200
DEFAULT_ALPHA = 0.05

# Rounds per segment when counting a resample (see ``_resample_counts``): 2**15 int64 counters
# are 256 KiB, which stays in a core's L2 cache.
_SEGMENT_ROUNDS = 1 << 15
# Most resample counts held at once (float64, so 32 MiB): bounds the bootstrap's memory.
_BLOCK_ELEMENTS = 1 << 22


class LoggedDataError(InputError):
    """The logged data for off-policy evaluation is malformed (missing column, bad propensity…)."""


# -- logged data -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LoggedData:
    """One row per logged round, validated once so estimators never re-check.

    Attributes, each converted to a read-only float64 array of shape (n_rounds,):
        reward: observed reward of the logged action; any finite number.
        propensity: logging policy's probability of the logged action, in (0, 1].
        target_propensity: target policy's probability of the same action, in [0, 1].
        q_hat: optional reward-model prediction for the logged action (DM, DR, SNDR).
        q_target: optional reward-model expected reward under the target policy (DM, DR, SNDR).

    ``q_hat`` and ``q_target`` come together or not at all. A bad value raises
    ``LoggedDataError`` naming the 1-based row and the column, so a caller that read the arrays
    from a file only has to add the file name.
    """

    reward: FloatArray
    propensity: FloatArray
    target_propensity: FloatArray
    q_hat: FloatArray | None = None
    q_target: FloatArray | None = None

    def __post_init__(self) -> None:
        present = [name for name in MODEL_COLUMNS if getattr(self, name) is not None]
        if len(present) == 1:
            (given,) = present
            missing = next(name for name in MODEL_COLUMNS if name != given)
            raise LoggedDataError(
                f"{given} is given without {missing}: DM, DR and SNDR need both (or neither)",
                column=missing,
            )
        n_rounds: int | None = None
        for name in COLUMNS:
            value = getattr(self, name)
            if value is None:
                if name in REQUIRED_COLUMNS:
                    raise LoggedDataError("is required", column=name)
                continue
            array = _as_column(value, name)
            if n_rounds is None:
                n_rounds = array.shape[0]
            elif array.shape[0] != n_rounds:
                raise LoggedDataError(
                    f"has {array.shape[0]} rows but reward has {n_rounds}", column=name
                )
            object.__setattr__(self, name, array)
        if not n_rounds:
            raise LoggedDataError("no rows: off-policy evaluation needs at least one round")
        _check_range(self.propensity, "propensity", low=0.0, low_open=True)
        _check_range(self.target_propensity, "target_propensity", low=0.0, low_open=False)
        weights = self.importance_weights
        if not np.isfinite(weights).all():
            row = int(np.flatnonzero(~np.isfinite(weights))[0]) + 1
            raise LoggedDataError(
                "propensity is so small that target_propensity / propensity overflows",
                row=row,
                column="propensity",
            )

    @property
    def n_rounds(self) -> int:
        """Number of logged rounds (rows)."""
        return int(self.reward.shape[0])

    @property
    def has_reward_model(self) -> bool:
        """Whether ``q_hat`` and ``q_target`` are present, i.e. DM, DR and SNDR can run."""
        return self.q_hat is not None

    @cached_property
    def importance_weights(self) -> FloatArray:
        """``target_propensity / propensity``, shape (n_rounds,); computed once, read-only."""
        with np.errstate(over="ignore"):  # an overflow is reported by __post_init__
            weights = self.target_propensity / self.propensity
        weights.flags.writeable = False
        return weights


def _as_column(value: Any, name: str) -> FloatArray:
    """A read-only float64 view of one column, shape (n_rounds,), checked to be finite."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LoggedDataError(f"not numeric: {exc}", column=name) from None
    if array.ndim != 1:
        raise LoggedDataError(f"must be one-dimensional, got shape {array.shape}", column=name)
    finite = np.isfinite(array)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise LoggedDataError(f"not a finite number: {float(array[i])!r}", row=i + 1, column=name)
    # A view, so the caller's array stays writable while ours cannot change under a frozen object.
    view = array.view()
    view.flags.writeable = False
    return view


def _check_range(array: FloatArray, name: str, *, low: float, low_open: bool) -> None:
    """Require ``low < x <= 1`` (``low_open``) or ``low <= x <= 1``, naming the first bad row."""
    above_low = array > low if low_open else array >= low
    ok = above_low & (array <= 1.0)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        interval = f"({low:g}, 1]" if low_open else f"[{low:g}, 1]"
        raise LoggedDataError(
            f"must be in {interval}, got {float(array[i])!r}", row=i + 1, column=name
        )


def effective_sample_size(data: LoggedData) -> float:
    """Kish's effective sample size of the importance weights, ``sum(w)**2 / sum(w**2)``.

    It says how many rounds the weighted estimate is really worth: ``n_rounds`` when the target
    policy equals the logging policy, far fewer when a few large weights dominate, and 0 when
    the target policy never takes a logged action (no support in the log at all).
    """
    largest = float(np.max(data.importance_weights))
    if largest == 0.0:
        return 0.0
    scaled = data.importance_weights / largest  # the ratio is scale-free; this cannot overflow
    return float(np.sum(scaled)) ** 2 / float(np.dot(scaled, scaled))


# -- estimators --------------------------------------------------------------------------------
def _self_normalised(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """``numerator / denominator`` elementwise, with 0/0 taken as 0.

    Weights are never negative, so a zero total weight means every weight is zero and the
    numerator (a sum of weighted terms) is exactly zero too: the log holds no round the target
    policy would have chosen. Then SNIPW reports 0 like IPW, and SNDR falls back to DM, instead
    of NaN (which JSON cannot carry). ``effective_sample_size`` shows that case as 0.
    """
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


class OffPolicyEstimator:
    """Base class: an estimate is a function of a few per-row column totals.

    Subclasses give ``_statistics`` (per-row columns, shape (n_stats, n_rounds)) and
    ``_value_from_totals`` (their totals, shape (n_replicates, n_stats), to estimates, shape
    (n_replicates,)). The point estimate uses the full-data totals; each bootstrap replicate
    uses the totals over one resample. That keeps every formula in one place for both.
    """

    name: ClassVar[str]
    requires_reward_model: ClassVar[bool] = False

    def _check(self, data: LoggedData) -> None:
        if self.requires_reward_model and not data.has_reward_model:
            raise LoggedDataError(
                f"{self.name.upper()} needs a reward model: give q_hat and q_target",
                column="q_hat",
            )

    def _statistics(self, data: LoggedData) -> FloatArray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _value_from_totals(
        self, totals: FloatArray, n_rounds: int
    ) -> FloatArray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _estimate_round_rewards(self, data: LoggedData) -> FloatArray:  # pragma: no cover
        """Per-round contributions, shape (n_rounds,), whose mean is the estimate."""
        raise NotImplementedError

    def estimate_policy_value(self, data: LoggedData) -> float:
        """The estimated value of the target policy (expected reward per round)."""
        self._check(data)
        totals = self._statistics(data).sum(axis=1)  # pairwise summation along each row
        return float(self._value_from_totals(totals[np.newaxis, :], data.n_rounds)[0])

    def estimate_interval(
        self,
        data: LoggedData,
        n_boot: int = DEFAULT_N_BOOT,
        alpha: float = DEFAULT_ALPHA,
        seed: int = 0,
    ) -> tuple[float, float]:
        """Percentile-bootstrap ``(low, high)`` interval at level ``1 - alpha``.

        Rounds are resampled with replacement ``n_boot`` times from one
        ``np.random.default_rng(seed)``, so the same seed gives the same interval, and the same
        resamples as ``estimate_all`` with that seed. ``n_boot=0`` gives ``(value, value)``.
        """
        self._check(data)
        _check_options(n_boot, seed, alpha)
        if n_boot == 0:
            value = self.estimate_policy_value(data)
            return value, value
        replicates = self._value_from_totals(
            _bootstrap_totals(self._statistics(data), n_boot, seed), data.n_rounds
        )
        low, high = _percentile_interval(replicates, alpha)
        return low, high


class IPW(OffPolicyEstimator):
    """Inverse propensity weighting: ``mean(w * r)``. Unbiased when the log has support."""

    name = "ipw"

    def _estimate_round_rewards(self, data: LoggedData) -> FloatArray:
        return data.importance_weights * data.reward

    def _statistics(self, data: LoggedData) -> FloatArray:
        return self._estimate_round_rewards(data)[np.newaxis, :]

    def _value_from_totals(self, totals: FloatArray, n_rounds: int) -> FloatArray:
        return totals[:, 0] / n_rounds


class SNIPW(OffPolicyEstimator):
    """Self-normalised IPW: ``sum(w * r) / sum(w)``. Slightly biased, much lower variance."""

    name = "snipw"

    def _estimate_round_rewards(self, data: LoggedData) -> FloatArray:
        weights = data.importance_weights
        return _self_normalised(weights * data.reward, np.mean(weights))

    def _statistics(self, data: LoggedData) -> FloatArray:
        weights = data.importance_weights
        return np.stack([weights * data.reward, weights])

    def _value_from_totals(self, totals: FloatArray, n_rounds: int) -> FloatArray:
        return _self_normalised(totals[:, 0], totals[:, 1])


class DM(OffPolicyEstimator):
    """Direct method: ``mean(q_target)``. Low variance; biased as far as the model is wrong."""

    name = "dm"
    requires_reward_model = True

    def _estimate_round_rewards(self, data: LoggedData) -> FloatArray:
        assert data.q_target is not None  # guaranteed by _check
        return data.q_target

    def _statistics(self, data: LoggedData) -> FloatArray:
        return self._estimate_round_rewards(data)[np.newaxis, :]

    def _value_from_totals(self, totals: FloatArray, n_rounds: int) -> FloatArray:
        return totals[:, 0] / n_rounds


class DR(OffPolicyEstimator):
    """Doubly robust: ``mean(q_target + w * (r - q_hat))``; unbiased if either part is right."""

    name = "dr"
    requires_reward_model = True

    def _estimate_round_rewards(self, data: LoggedData) -> FloatArray:
        assert data.q_hat is not None and data.q_target is not None  # guaranteed by _check
        return data.q_target + data.importance_weights * (data.reward - data.q_hat)

    def _statistics(self, data: LoggedData) -> FloatArray:
        return self._estimate_round_rewards(data)[np.newaxis, :]

    def _value_from_totals(self, totals: FloatArray, n_rounds: int) -> FloatArray:
        return totals[:, 0] / n_rounds


class SNDR(OffPolicyEstimator):
    """Self-normalised DR: ``mean(q_target) + sum(w * (r - q_hat)) / sum(w)``."""

    name = "sndr"
    requires_reward_model = True

    def _estimate_round_rewards(self, data: LoggedData) -> FloatArray:
        assert data.q_hat is not None and data.q_target is not None  # guaranteed by _check
        weights = data.importance_weights
        correction = weights * (data.reward - data.q_hat)
        return data.q_target + _self_normalised(correction, np.mean(weights))

    def _statistics(self, data: LoggedData) -> FloatArray:
        assert data.q_hat is not None and data.q_target is not None  # guaranteed by _check
        weights = data.importance_weights
        return np.stack([data.q_target, weights * (data.reward - data.q_hat), weights])

    def _value_from_totals(self, totals: FloatArray, n_rounds: int) -> FloatArray:
        return totals[:, 0] / n_rounds + _self_normalised(totals[:, 1], totals[:, 2])


#: Every estimator by its name in the ``nextstep ope`` output, in output order.
ESTIMATORS: Mapping[str, OffPolicyEstimator] = MappingProxyType(
    {est.name: est for est in (IPW(), SNIPW(), DM(), DR(), SNDR())}
)


# -- bootstrap ---------------------------------------------------------------------------------
def _check_options(n_boot: int, seed: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise InputError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")


def _segments(n_rounds: int) -> tuple[list[int], list[int], FloatArray]:
    """Starts and sizes of the count segments, and each segment's share of the rounds."""
    starts = list(range(0, n_rounds, _SEGMENT_ROUNDS))
    sizes = [min(_SEGMENT_ROUNDS, n_rounds - start) for start in starts]
    return starts, sizes, np.asarray(sizes, dtype=np.float64) / n_rounds


def _resample_counts(
    rng: np.random.Generator,
    starts: list[int],
    sizes: list[int],
    shares: FloatArray,
    out: FloatArray,
) -> None:
    """Write into ``out`` (n_rounds,) how often each round is drawn in one resample.

    A resample is n_rounds draws with replacement, so ``out`` sums to n_rounds. Drawing the
    indices and ``np.bincount``-ing them scatters increments over the whole array at random,
    which for 1,000,000 rounds misses the cache on almost every draw (about 15 ms a resample).
    This draws the same distribution in cache-sized pieces: first how many of the draws land in
    each segment of rounds (multinomial, by segment size), then the draws inside each segment,
    counted there. The draws being independent and uniform, the counts are exactly
    Multinomial(n_rounds, 1/n_rounds each) either way; this way is about twice as fast.
    """
    n_rounds = starts[-1] + sizes[-1]
    per_segment = rng.multinomial(n_rounds, shares).tolist()
    for start, size, draws in zip(starts, sizes, per_segment, strict=True):
        out[start : start + size] = np.bincount(rng.integers(0, size, draws), minlength=size)


def _bootstrap_totals(statistics: FloatArray, n_boot: int, seed: int) -> FloatArray:
    """Column totals over ``n_boot`` resamples of the rounds, shape (n_boot, n_stats).

    ``statistics`` has shape (n_stats, n_rounds). A resample's total of a column is its count
    vector dotted with that column, so the work is one count vector per resample and one
    matrix product per block of resamples for all columns of all estimators at once (a block
    reads ``statistics`` once for several resamples, which is what memory bandwidth wants).
    The block buffer holds at most ``_BLOCK_ELEMENTS`` counts (32 MiB) whatever n_rounds and
    n_boot are. The resamples depend only on ``seed`` and n_rounds, drawn in order from one
    ``np.random.default_rng(seed)``.
    """
    statistics = np.ascontiguousarray(statistics, dtype=np.float64)
    n_stats, n_rounds = statistics.shape
    rng = np.random.default_rng(seed)
    starts, sizes, shares = _segments(n_rounds)
    per_block = max(1, min(n_boot, _BLOCK_ELEMENTS // n_rounds))
    counts = np.empty((per_block, n_rounds), dtype=np.float64)
    totals = np.empty((n_boot, n_stats), dtype=np.float64)
    for first in range(0, n_boot, per_block):
        block = min(per_block, n_boot - first)
        for row in range(block):
            _resample_counts(rng, starts, sizes, shares, out=counts[row])
        totals[first : first + block] = counts[:block] @ statistics.T
    return totals


def _percentile_interval(replicates: FloatArray, alpha: float) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 - alpha/2`` percentiles of replicates, shape (n_boot,)."""
    low, high = np.percentile(replicates, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(low), float(high)


def bootstrap_totals(statistics: FloatArray, n_boot: int, seed: int) -> FloatArray:
    """Column totals of per-unit ``statistics`` (n_stats, n_units) over ``n_boot`` resamples of
    the units, shape (n_boot, n_stats): the bootstrap of ``estimate_all``, for other estimators
    built from totals (``evaluation.trajectory_ope`` resamples users)."""
    _check_options(n_boot, seed, DEFAULT_ALPHA)
    return _bootstrap_totals(statistics, n_boot, seed)


def percentile_interval(
    replicates: FloatArray, alpha: float = DEFAULT_ALPHA
) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 - alpha/2`` percentiles of bootstrap replicates."""
    return _percentile_interval(replicates, alpha)


def estimate_all(
    data: LoggedData,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Every estimator the data supports, with intervals, in the ``nextstep ope`` shape.

    Returns ``{"rows": n_rounds, "estimates": {name: {"value", "low", "high"}}}`` with names
    ``ipw`` and ``snipw``, plus ``dm``, ``dr`` and ``sndr`` when ``q_hat``/``q_target`` are
    present. All estimators share one set of ``n_boot`` resamples (the ones their own
    ``estimate_interval`` would draw with this seed), so the whole bootstrap costs one count
    vector per resample however many estimators there are.
    """
    _check_options(n_boot, seed, alpha)
    chosen = [
        est for est in ESTIMATORS.values() if data.has_reward_model or not est.requires_reward_model
    ]
    blocks = [est._statistics(data) for est in chosen]
    bounds = np.cumsum([0] + [block.shape[0] for block in blocks]).tolist()
    statistics = np.concatenate(blocks, axis=0)  # (total n_stats, n_rounds)
    totals = statistics.sum(axis=1)[np.newaxis, :]
    boot = _bootstrap_totals(statistics, n_boot, seed) if n_boot > 0 else None

    estimates: dict[str, dict[str, float]] = {}
    for est, lo, hi in zip(chosen, bounds[:-1], bounds[1:], strict=True):
        value = float(est._value_from_totals(totals[:, lo:hi], data.n_rounds)[0])
        if boot is None:
            low = high = value
        else:
            replicates = est._value_from_totals(boot[:, lo:hi], data.n_rounds)
            low, high = _percentile_interval(replicates, alpha)
        if not all(math.isfinite(x) for x in (value, low, high)):
            raise LoggedDataError(
                f"the {est.name.upper()} estimate overflowed: importance weights are too large"
            )
        estimates[est.name] = {"value": value, "low": low, "high": high}
    return {"rows": data.n_rounds, "estimates": estimates}


# -- files and command -------------------------------------------------------------------------
def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(path, usecols=lambda name: name in COLUMNS)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd
    import pyarrow.parquet as pq  # pandas' own Parquet engine; only the schema is read first

    names = pq.read_schema(path).names
    return pd.read_parquet(path, columns=[name for name in COLUMNS if name in names])


_READERS: Mapping[str, Callable[[Path], pd.DataFrame]] = MappingProxyType(
    {".csv": _read_csv, ".parquet": _read_parquet, ".pq": _read_parquet}
)


def _numeric_column(series: pd.Series, source: str, column: str) -> FloatArray:
    """One column as float64, shape (n_rounds,); the first empty or non-numeric cell is an error."""
    import pandas as pd

    array = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(array)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        cell = series.iloc[i]
        message = "missing value" if pd.isna(cell) else f"not a number: {cell!r}"
        raise LoggedDataError(message, source=source, row=i + 1, column=column)
    return array


def read_logged_data(path: str | Path) -> LoggedData:
    """Read a CSV or Parquet table (by extension) of logged rounds into ``LoggedData``.

    Required columns are ``reward``, ``propensity`` and ``target_propensity``; ``q_hat`` and
    ``q_target`` are optional but come together; other columns are ignored. Every error names
    the file, the 1-based data row (the first row after a CSV header is row 1) and the column.
    Columns are converted and checked whole (no Python loop over rows).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise LoggedDataError("no such file", source=source)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise LoggedDataError(
            f"unsupported file type {path.suffix!r}: use .csv or .parquet", source=source
        )
    try:
        frame = reader(path)
    except (OSError, ValueError) as exc:
        raise LoggedDataError(f"cannot read the file: {exc}", source=source) from None
    for name in REQUIRED_COLUMNS:
        if name not in frame.columns:
            raise LoggedDataError(
                "missing required column (need reward, propensity, target_propensity; "
                "q_hat and q_target are optional)",
                source=source,
                column=name,
            )
    arrays = {
        name: _numeric_column(frame[name], source, name)
        for name in COLUMNS
        if name in frame.columns
    }
    try:
        return LoggedData(**arrays)
    except LoggedDataError as exc:
        raise LoggedDataError(exc.message, source=source, row=exc.row, column=exc.column) from None


def ope_command(input: Path, n_boot: int, seed: int) -> None:
    """``nextstep ope``: print the contract JSON ``{"rows": n, "estimates": {...}}`` to stdout."""
    data = read_logged_data(input)
    result = estimate_all(data, n_boot=n_boot, seed=seed)
    # one line for pipes and scripts, indented for a person at a terminal; the same JSON
    print(json.dumps(result, allow_nan=False, indent=2 if sys.stdout.isatty() else None))

"""Off-policy value of a policy over whole user trajectories (the conversion of ``compare``).

A user's logged walk is ``(s_1, a_1, r_1), ..., (s_T, a_T, r_T)``: ``r_t`` is the worth of the
goal accepted at offer t (1 when goals carry no value, so the value is the conversion rate) and
0 otherwise. With ``w_t = pi(a_t | s_t) / mu(a_t | s_t)`` (target over logged propensity) and
the cumulative weight ``rho_t = w_1 ... w_t`` (``rho_0 = 1``), the estimators are the ones the
field uses for sequential decisions (Precup et al. 2000; Jiang & Li 2016; Thomas & Brunskill
2016), over n users:

    PDIS  = (1/n) sum_u sum_t rho_ut r_ut                       per-decision IS
    WPDIS = sum_t  sum_u rho_ut r_ut / sum_u rho_ut             weighted per-decision IS
    DR    = (1/n) sum_u sum_t [rho_ut (r_ut - Q_ut) + rho_u,t-1 V_ut]
    WDR   = sum_t [sum_u rho_ut (r_ut - Q_ut) / sum_u rho_ut
                   + sum_u rho_u,t-1 V_ut / sum_u rho_u,t-1]

``Q_ut`` is the model's value of the logged offer and ``V_ut = sum_a pi(a | s_ut) Q(s_ut, a)``
its value under the target policy. The model part is the learned readiness model's expected
goal reward of the offer made now (``P(accept) * worth`` for a goal, 0 otherwise); whatever the
model, DR stays unbiased (each correction has mean zero given the state), the model only takes
variance away, most for policies that ask for the goal.

**Trajectories that end.** A walk ends by a goal accepted, a drop, attrition after an accept,
the horizon, or a user who never came back. After its end a user is in an absorbing state where
every policy does the same nothing: the ratio is 1, so ``rho_ut`` stays at the weight of the last
offer, the reward and the model terms are 0, and the user stays in every later denominator of the
weighted estimators. Dropping ended users from later denominators (or clipping the product of a
long walk) is what biased the earlier estimate: long walks are not a random subset of walks.

**No clipping by default.** The weights are exact (logged propensities), so clipping only adds
bias; instead, when the weights leave too few effective users, the estimate is flagged
``low_overlap`` (untrusted) rather than shown with a tight interval. ``max_weight`` still caps
``rho_t`` for whoever wants the variance-for-bias trade.

**Missing mass.** Whole-walk weights average 1 under the logging policy; when they average less
in the log, part of the target policy's walks were never logged (long walks the logging policy
rarely follows) and the interval is widened by what that part could earn (see ``estimate``).

Intervals: a percentile bootstrap over users (each user's whole walk is resampled), all
estimators on the same resamples. Every estimate is a function of per-user column totals, so a
resample is one count vector dotted with a (n_columns, n_users) matrix (``evaluation.ope``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evaluation.ope import DEFAULT_ALPHA, bootstrap_totals, percentile_interval
from features.errors import InputError

ESTIMATORS = ("pdis", "wpdis", "dr", "wdr")
SELF_NORMALISED = ("wpdis", "wdr")
MIN_ESS = 50.0  # fewer effective users than this: the estimate is flagged, not trusted
MIN_SUPPORT_SHARE = 0.02  # ... or fewer than 2% of users carry any weight at all
MAX_MISSING = 0.3  # ... or the log lacks more than 30% of the target's walks (missing mass)
FEW_EVENTS = 5  # fewer weighted users with a goal: the bootstrap alone is not an interval
# exact 97.5% Poisson upper limits of a count k = 0..4 (chi2.ppf(0.975, 2k + 2) / 2)
POISSON_UPPER = (3.689, 5.572, 7.225, 8.767, 10.242)


@dataclass(frozen=True)
class Walks:
    """Per-user, per-offer matrices of shape (n_users, horizon), padded after a walk's end.

    ``rho`` is the cumulative weight (carried forward after the end), ``reward`` the goal worth
    earned at each offer, ``q`` and ``v`` the model terms (None without a model).
    """

    rho: np.ndarray
    reward: np.ndarray
    q: np.ndarray | None
    v: np.ndarray | None

    @property
    def n_users(self) -> int:
        return int(self.rho.shape[0])

    @property
    def final_weights(self) -> np.ndarray:
        """Each user's whole-walk weight, shape (n_users,)."""
        return self.rho[:, -1]


def walks(
    user: np.ndarray,
    ratio: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray | None = None,
    v: np.ndarray | None = None,
    max_weight: float = math.inf,
) -> Walks:
    """Lay rows (sorted by user, then time; ``user`` numbered 0.. contiguously) out as walks.

    ``ratio`` is ``w_t`` per row, ``reward`` ``r_t``, ``q``/``v`` the model terms per row.
    Cumulative weights are products in log space (no overflow), capped at ``max_weight``.
    """
    if not (max_weight >= 1.0):
        raise InputError(f"max_weight must be a number >= 1, got {max_weight!r}")
    n_rows = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    n_users = len(starts)
    lengths = np.diff(np.r_[starts, n_rows])
    pos = np.arange(n_rows) - np.repeat(starts, lengths)
    horizon = int(lengths.max())
    with np.errstate(divide="ignore"):
        logw = np.log(ratio)
    zero = logw == -np.inf  # the target never makes this offer: the walk's weight is 0 from here
    # cumulative sum per user: global cumsum minus the total before the user's first row
    cum = np.cumsum(np.where(zero, 0.0, logw))
    first = np.repeat(starts, lengths)
    logrho = cum - np.r_[0.0, cum][first]
    last_zero = np.maximum.accumulate(np.where(zero, np.arange(n_rows), -1))
    logrho[last_zero >= first] = -np.inf
    rho_rows = np.exp(np.minimum(logrho, math.log(max_weight)))

    def lay(values: np.ndarray, carry: bool) -> np.ndarray:
        out = np.zeros((n_users, horizon))
        out[user, pos] = values
        if carry:  # after the end: the last weight (an absorbing state has ratio 1)
            last = out[np.arange(n_users), lengths - 1]
            after = np.arange(horizon)[None, :] >= lengths[:, None]
            out = np.where(after, last[:, None], out)
        return out

    return Walks(
        rho=lay(rho_rows, carry=True),
        reward=lay(reward, carry=False),
        q=None if q is None else lay(q, carry=False),
        v=None if v is None else lay(v, carry=False),
    )


def _columns(w: Walks) -> np.ndarray:
    """Per-user statistics, shape (n_columns, n_users): ones, then per offer t the columns
    rho*r, rho, and with a model rho*q and rho_prev*v."""
    rho_prev = np.concatenate([np.ones((w.n_users, 1)), w.rho[:, :-1]], axis=1)
    blocks = [np.ones((1, w.n_users)), (w.rho * w.reward).T, w.rho.T, rho_prev.T]
    if w.q is not None and w.v is not None:
        blocks += [(w.rho * w.q).T, (rho_prev * w.v).T]
    return np.concatenate(blocks, axis=0)


def _values(totals: np.ndarray, horizon: int, model: bool) -> dict[str, np.ndarray]:
    """Every estimator from column totals, shape (n_resamples, n_columns) -> (n_resamples,)."""
    h = horizon
    n = totals[:, 0]
    rr = totals[:, 1 : 1 + h]
    rho = totals[:, 1 + h : 1 + 2 * h]
    rho_prev = totals[:, 1 + 2 * h : 1 + 3 * h]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rho > 0, rr / np.where(rho > 0, rho, 1.0), 0.0)
    out = {"pdis": rr.sum(axis=1) / n, "wpdis": share.sum(axis=1)}
    if model:
        rq = totals[:, 1 + 3 * h : 1 + 4 * h]
        pv = totals[:, 1 + 4 * h : 1 + 5 * h]
        out["dr"] = (rr.sum(axis=1) - rq.sum(axis=1) + pv.sum(axis=1)) / n
        safe = np.where(rho > 0, rho, 1.0)
        safe_prev = np.where(rho_prev > 0, rho_prev, 1.0)
        corr = np.where(rho > 0, (rr - rq) / safe, 0.0)
        base = np.where(rho_prev > 0, pv / safe_prev, 0.0)
        out["wdr"] = (corr + base).sum(axis=1)
    return out


def missing_mass(w: Walks) -> float:
    """``1 - mean whole-walk weight`` when positive (see ``estimate``), else 0."""
    final = w.final_weights
    return max(0.0, 1.0 - float(np.mean(final))) if len(final) else 1.0


def kish_ess(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 when every weight is 0)."""
    top = float(np.max(weights)) if len(weights) else 0.0
    if top <= 0.0:
        return 0.0
    scaled = weights / top
    return float(np.sum(scaled)) ** 2 / float(np.dot(scaled, scaled))


@dataclass(frozen=True)
class Overlap:
    """How much of the log speaks for the target policy."""

    ess: float  # Kish ESS of the whole-walk weights, in users
    supported_share: float  # share of users whose whole walk has weight > 0
    low_overlap: bool
    missing: float = 0.0  # share of the target's walks the log lacks (``missing_mass``)

    @property
    def reason(self) -> str | None:
        if not self.low_overlap:
            return None
        return (
            f"too little overlap with the logging policy: {self.ess:.0f} effective users "
            f"(at least {MIN_ESS:.0f} needed), {self.supported_share:.1%} of users supported, "
            f"{self.missing:.0%} of the policy's walks missing from the log"
        )


def overlap(w: Walks) -> Overlap:
    """ESS and support of the whole-walk weights, and whether they are too small to trust."""
    final = w.final_weights
    ess = kish_ess(final)
    support = float(np.mean(final > 0)) if len(final) else 0.0
    missing = missing_mass(w)
    low = ess < MIN_ESS or support < MIN_SUPPORT_SHARE or missing > MAX_MISSING
    return Overlap(ess, support, low, missing)


def estimate(
    w: Walks,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    max_reward: float = 1.0,
) -> dict[str, dict[str, float]]:
    """``{estimator: {value, low, high}}`` for PDIS, WPDIS (and DR, WDR with a model).

    With fewer than ``FEW_EVENTS`` weighted users reaching a goal, resampling users cannot show
    how uncertain the estimate is (no goal in the log gives the interval [0, 0]); the upper bound
    is then at least the exact Poisson upper bound of that count over the effective users.

    **Missing mass.** Under the logging policy the whole-walk weights average exactly 1, so a
    sample mean ``m_w < 1`` says that a share ``1 - m_w`` of the target policy's walks is missing
    from the log: long walks the logging policy rarely follows, each with a huge weight, most
    logs contain none of (a long horizon with little exploration). A resample of users cannot
    see what is not there, and the estimates then run low with a confident interval. Whatever
    those walks earn lies in [0, max_reward], so the interval is widened to hold it: for the
    self-normalised estimators ``[low (1 - m), high (1 - m) + m max_reward]`` with
    ``m = 1 - m_w``, for the unnormalised ones ``[low, high + m max_reward]``.
    """
    model = w.q is not None and w.v is not None
    cols = _columns(w)
    horizon = w.rho.shape[1]
    point = _values(cols.sum(axis=1)[None, :], horizon, model)
    boot = None
    if n_boot > 0:
        boot = _values(bootstrap_totals(cols, n_boot, seed), horizon, model)
    missing = missing_mass(w)
    out: dict[str, dict[str, float]] = {}
    for name, value in point.items():
        v = float(value[0])
        low, high = (v, v) if boot is None else percentile_interval(boot[name], alpha)
        if not all(math.isfinite(x) for x in (v, low, high)):
            raise InputError(f"the {name} estimate overflowed: importance weights are too large")
        low, high = min(low, v), max(high, v)
        if name in SELF_NORMALISED:
            low, high = low * (1 - missing), high * (1 - missing) + missing * max_reward
        else:
            high = high + missing * max_reward
        out[name] = {"value": v, "low": low, "high": min(high, max(max_reward, v))}
    events = int(np.sum((w.final_weights > 0) & (w.reward.sum(axis=1) > 0)))
    if events < FEW_EVENTS:
        ess = kish_ess(w.final_weights)
        floor = (
            max_reward if ess <= 0 else min(max_reward, max_reward * POISSON_UPPER[events] / ess)
        )
        for d in out.values():
            d["high"] = max(d["high"], floor)
    return out


@dataclass(frozen=True)
class Difference:
    """``value(a) - value(b)`` of two policies valued on the same users, with its interval."""

    estimator: str
    value: float
    low: float
    high: float
    users: int
    a: float  # point value of each side
    b: float


def difference(
    a: Walks,
    b: Walks,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    max_reward: float = 1.0,
) -> Difference:
    """Paired bootstrap of ``value(a) - value(b)`` when both walks come from the same users.

    Why paired: two policies valued on one log share its users, so most of the noise of the two
    estimates is the same noise; resampling users once and taking the difference on every
    resample gives an interval for the difference far tighter than subtracting one interval's
    end from the other's (which treats the two estimates as independent). Both policies' values
    use the same resamples (``bootstrap_totals`` of the same users with one seed).

    The estimator is WDR when both walks carry a model, else WPDIS. The missing mass of each
    side (see ``estimate``) widens the interval the way that hurts ``a``: on every resample the
    low end takes ``a``'s value scaled by ``1 - m_a`` minus ``b``'s widened high end, and the
    high end the reverse.
    """
    if a.n_users != b.n_users:
        raise InputError("a paired difference needs the same users on both sides")
    model = all(w.q is not None and w.v is not None for w in (a, b))
    name = "wdr" if model else "wpdis"
    cols = [_columns(w) for w in (a, b)]
    horizons = [w.rho.shape[1] for w in (a, b)]
    point = [
        float(_values(c.sum(axis=1)[None, :], h, model)[name][0])
        for c, h in zip(cols, horizons, strict=True)
    ]
    m_a, m_b = missing_mass(a), missing_mass(b)
    value = point[0] - point[1]
    if n_boot <= 0:
        return Difference(name, value, value, value, a.n_users, point[0], point[1])
    va, vb = (
        _values(bootstrap_totals(c, n_boot, seed), h, model)[name]
        for c, h in zip(cols, horizons, strict=True)
    )
    low_draws = va * (1 - m_a) - (vb * (1 - m_b) + m_b * max_reward)
    high_draws = va * (1 - m_a) + m_a * max_reward - vb * (1 - m_b)
    low = percentile_interval(low_draws, alpha)[0]
    high = percentile_interval(high_draws, alpha)[1]
    if not all(math.isfinite(x) for x in (value, low, high)):
        raise InputError(f"the {name} difference overflowed: importance weights are too large")
    return Difference(name, value, min(low, value), max(high, value), a.n_users, point[0], point[1])

"""The live watch: calibration, exploration, outcome delay and context drift per worker.

Everything is kept in memory by each worker (a scrape of each worker sees its own traffic), on
bounded labels: ``arm`` from the experiment, ``step`` from the catalog and ``key`` from the
context columns the served model was trained with.

* Calibration: per (arm, step), the last ``window`` resolved offers (a decision that got an
  outcome); ``nextstep_calibration_error`` is their observed accept rate minus their mean
  predicted ``p_accept`` (positive: users accept more than the model predicted), and
  ``nextstep_calibration_offers`` how many offers that window holds. An outcome finds its
  decision in a map of this worker's recent decisions, else with one read of the store (a
  decision made by another worker or before a restart).
* ``nextstep_offers_total{arm, explored}``: offers made, by whether exploration chose them.
* ``nextstep_outcome_delay_seconds{arm}``: outcome time minus decision time.
* ``nextstep_context_drift{arm, key}``: PSI of the last ``drift_window`` requests' context
  against the training data's (``features.drift``), computed when scraped, not per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from features.drift import META_KEY, DriftWindow, parse_reference
from features.state import ACCEPTED

log = logging.getLogger("nextstep.service.watch")
DELAY_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
RECENT_DECISIONS = 50_000  # decisions remembered for their outcome (about 10 MB)
RESOLVED_REMEMBERED = 10_000  # resolved ids remembered, so a repeated outcome counts once

# (arm, step, p_accept, ts) of a decision, or None when the store does not know it
Lookup = Callable[[str], tuple[str, str, float | None, float] | None]


class _Window:
    """The last ``size`` resolved offers of one (arm, step): accepted flags and predictions."""

    __slots__ = ("rows", "sum_p", "sum_y")

    def __init__(self, size: int) -> None:
        self.rows: deque[tuple[int, float]] = deque(maxlen=size)
        self.sum_y = 0
        self.sum_p = 0.0

    def add(self, accepted: int, p: float) -> None:
        if len(self.rows) == self.rows.maxlen:
            y0, p0 = self.rows[0]
            self.sum_y -= y0
            self.sum_p -= p0
        self.rows.append((accepted, p))
        self.sum_y += accepted
        self.sum_p += p

    @property
    def error(self) -> float:
        n = len(self.rows)
        return (self.sum_y - self.sum_p) / n if n else 0.0


class Watch:
    """The watch's series in ``registry`` and the state behind them (thread-safe)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        window: int = 200,
        drift_window: int = 1000,
        calibration_alert: float = 0.10,
    ) -> None:
        r = registry
        self.window = window
        self.drift_window = drift_window
        self.calibration_error = Gauge(
            "nextstep_calibration_error",
            "Observed accept rate minus mean predicted p_accept over the last resolved offers "
            "of this arm and step in this worker (positive: users accept more than predicted).",
            ["arm", "step"],
            registry=r,
        )
        self.calibration_offers = Gauge(
            "nextstep_calibration_offers",
            "Resolved offers in the calibration window of this arm and step.",
            ["arm", "step"],
            registry=r,
        )
        self.calibration_threshold = Gauge(
            "nextstep_calibration_threshold",
            "The absolute calibration error the alert fires above (NEXTSTEP_CALIBRATION_ALERT).",
            registry=r,
        )
        self.calibration_threshold.set(calibration_alert)
        self.offers = Counter(
            "nextstep_offers",
            "Offers made (decisions with a step), by whether exploration chose the step.",
            ["arm", "explored"],
            registry=r,
        )
        self.delay = Histogram(
            "nextstep_outcome_delay_seconds",
            "Outcome time minus decision time of the outcomes of this service's offers.",
            ["arm"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.drift = Gauge(
            "nextstep_context_drift",
            "PSI of the recent requests' context against the served model's training data.",
            ["arm", "key"],
            registry=r,
        )
        self.drift_requests = Gauge(
            "nextstep_context_drift_requests",
            "Requests in the context drift window of this arm.",
            ["arm"],
            registry=r,
        )
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[str, str, float | None, float]] = OrderedDict()
        self._resolved: OrderedDict[str, None] = OrderedDict()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._offer_children: dict[tuple[str, bool], Any] = {}
        self._drift: dict[str, tuple[Any, DriftWindow]] = {}  # arm -> (reference, window)

    # -- decisions -------------------------------------------------------------------------
    def decided(
        self,
        rows: Iterable[Mapping[str, Any]],
        contexts: Iterable[Mapping[str, Any] | None],
    ) -> None:
        """Stored decision rows (``flows._decision``) and their requests' contexts: count
        offers, remember them for their outcomes, and add each context to the drift window of
        its arm (the request's dict, not the row's JSON of it: no second parse per decision)."""
        with self._lock:
            for row, ctx in zip(rows, contexts, strict=True):
                arm = row["arm"]
                drift = self._drift.get(arm)
                if drift is not None:
                    drift[1].observe(ctx)
                step = row["step"]
                if step is None:
                    continue
                self._offer_child(arm, bool(row["explored"])).inc()
                recent = self._recent
                recent[row["decision_id"]] = (arm, step, row["p_accept"], row["ts"])
                if len(recent) > RECENT_DECISIONS:
                    recent.popitem(last=False)

    # -- outcomes --------------------------------------------------------------------------
    def resolved(self, decision_id: str, outcome: str, ts: float | None, lookup: Lookup) -> None:
        """An outcome of ``decision_id`` was recorded (``ts``: its time, None = now)."""
        with self._lock:
            if decision_id in self._resolved:
                return  # a repeat of an outcome this worker already counted
            decision = self._recent.pop(decision_id, None)
        if decision is None:
            try:
                decision = lookup(decision_id)
            except Exception:  # the outcome is stored: a failed lookup only skips the watch
                log.warning("watch: decision %s not looked up", decision_id, exc_info=True)
                return
            if decision is None:
                return
        arm, step, p_accept, decided_at = decision
        when = ts if ts is not None else time.time()
        with self._lock:
            if decision_id in self._resolved:
                return
            self._resolved[decision_id] = None
            if len(self._resolved) > RESOLVED_REMEMBERED:
                self._resolved.popitem(last=False)
            self.delay.labels(arm).observe(max(0.0, when - decided_at))
            if p_accept is None:
                return  # no model, no prediction to compare with
            window = self._windows.get((arm, step))
            if window is None:
                window = self._windows[(arm, step)] = _Window(self.window)
            window.add(int(outcome == ACCEPTED), float(p_accept))
            self.calibration_error.labels(arm, step).set(window.error)
            self.calibration_offers.labels(arm, step).set(len(window.rows))

    # -- drift -----------------------------------------------------------------------------
    def set_models(self, arms: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Each arm's model meta after a (re)load: a new reference starts a new window."""
        with self._lock:
            for arm, meta in arms.items():
                ref = (meta or {}).get(META_KEY)
                current = self._drift.get(arm)
                if current is not None and current[0] == ref:
                    continue
                columns = parse_reference(ref)
                if columns:
                    self._drift[arm] = (ref, DriftWindow(columns, self.drift_window))
                else:
                    self._drift.pop(arm, None)
            for arm in [a for a in self._drift if a not in arms]:
                del self._drift[arm]
            self.drift.clear()
            self.drift_requests.clear()

    def expect_exploration(self, arms: Iterable[str]) -> None:
        """Create the offer series of arms that explore at 0, so an alert can see an exploring
        arm that never explored (a series that never appears cannot be compared with 0)."""
        with self._lock:
            for arm in arms:
                for explored in (False, True):
                    self._offer_child(arm, explored)

    def _offer_child(self, arm: str, explored: bool) -> Any:
        """The ``offers{arm, explored}`` series, resolved once per label set (under the lock)."""
        child = self._offer_children.get((arm, explored))
        if child is None:
            child = self._offer_children[(arm, explored)] = self.offers.labels(
                arm, "true" if explored else "false"
            )
        return child

    def refresh(self) -> None:
        """Bring the drift gauges up to date (called before each scrape)."""
        with self._lock:
            scores = {arm: (len(w.rows), w.scores()) for arm, (_ref, w) in self._drift.items()}
        for arm, (n, by_key) in scores.items():
            self.drift_requests.labels(arm).set(n)
            for key, value in by_key.items():
                self.drift.labels(arm, key).set(value)

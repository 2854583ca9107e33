"""Prometheus metrics, one registry per app (so tests can build many apps in one process).

Labels are bounded: arm and policy names come from the experiment, steps from the catalog and
routes are path templates (``/v1/users/{user_id}``), never raw paths or user ids. With several
uvicorn workers each process keeps its own counters; scrape each worker or run one per pod.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from service.runtime import Deciders
from service.watch import Watch

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self, *, watch_window: int = 200, drift_window: int = 1000, calibration_alert: float = 0.10
    ) -> None:
        disable_created_metrics()  # the *_created series double every counter for nothing
        r = self.registry = CollectorRegistry()
        # calibration, exploration, outcome delay and drift (service.watch)
        self.watch = Watch(
            r, window=watch_window, drift_window=drift_window, calibration_alert=calibration_alert
        )
        self.decisions = Counter(
            "nextstep_decisions", "Decisions served.", ["arm", "policy", "step"], registry=r
        )
        self._decision_children: dict[tuple[str, str, str], Any] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.outcomes = Counter(
            "nextstep_outcomes", "Outcomes recorded.", ["outcome", "source"], registry=r
        )
        self.requests = Counter(
            "nextstep_http_requests", "HTTP requests.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "nextstep_http_request_seconds",
            "HTTP request latency.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "nextstep_model_info",
            "The model and policy each arm serves (value 1).",
            ["arm", "policy", "model_version", "source"],
            registry=r,
        )
        self.model_generation = Gauge(
            "nextstep_model_generation", "Reloads since start (1 = first load).", registry=r
        )
        self.store_errors = Counter(
            "nextstep_store_errors", "Requests refused because the store was unusable.", registry=r
        )
        self.plan_passes = Histogram(
            "nextstep_planner_pass_roots",
            "Roots per planner call of the next-step planning passes (misses of concurrent "
            "requests planned together).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.idempotent_replays = Counter(
            "nextstep_idempotent_replays", "Responses replayed for a repeated key.", registry=r
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request: its latency and its count (label sets resolved once each)."""
        key = (method, route, status)
        pair = self._request_children.get(key)
        if pair is None:
            pair = self._request_children[key] = (
                self.latency.labels(method, route),
                self.requests.labels(method, route, str(status)),
            )
        pair[0].observe(seconds)
        pair[1].inc()

    def count_decisions(self, arm: str, policy: str, step: str | None, n: int = 1) -> None:
        """``decisions{arm, policy, step}`` += n; each label set is resolved once (a
        ``labels()`` lookup costs more than the increment, and this runs per decision)."""
        key = (arm, policy, step or "none")
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        child.inc(n)

    def set_models(self, deciders: Deciders) -> None:
        self.model_info.clear()
        for name, arm in deciders.arms.items():
            self.model_info.labels(
                arm=name,
                policy=arm.decider.policy_name,
                model_version=arm.decider.model_version or "none",
                source=arm.model_source or "none",
            ).set(1)
        self.model_generation.set(deciders.generation)
        self.watch.set_models({name: _meta(arm.decider) for name, arm in deciders.arms.items()})
        self.watch.expect_exploration(
            name for name, arm in deciders.arms.items() if arm.decider.config.exploration
        )

    def render(self) -> bytes:
        self.watch.refresh()
        return generate_latest(self.registry)


def _meta(decider: Any) -> Any:
    """The bundle meta of a decider's model (None without a model)."""
    return getattr(getattr(decider.scorer, "bundle", None), "meta", None)

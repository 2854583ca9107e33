"""``nextstep learn``: the learning loop that runs without a person in it.

A learner wakes every ``poll`` and runs a **cycle** when one is due:

* no cycle has finished on this store yet, or
* ``every`` (wall-clock) has passed since the last finished cycle, or
* at least ``min_outcomes`` outcomes newer than the last cycle's data window arrived, or
* after a failed cycle: its back-off has run out (this learner's own retry schedule).

The schedule lives in the store (table ``learner_lease``), so a restarted learner or a second one
keeps it. A cycle:

1. takes the store's **lease** (``loop.lease``); when another learner holds it the cycle is
   ``skipped``. The lease is renewed in the background while the cycle runs, released after;
2. exports the store's log for the **window**: event time ``[newest - window, newest]``, where
   ``newest`` is the newest decision or outcome in the store (so a log with its own timestamps,
   like a simulated one, behaves as a live one does), keeping whole users: those whose first
   event lies in the window (a user cut by its start would be learned from with a wrong state).
   No outcome at all: ``skipped``; no event newer than the last cycle's window: ``skipped``;
3. trains a **candidate** on it (``training.pipeline``: an ordinary training run of experiment
   ``nextstep-train`` and a registered version, not promoted);
4. **gates** it against the champion on the candidate's held-out users (``loop.learn_gate``:
   log loss, then the planner's value by paired trajectory OPE) and, when it passes and the
   lease is still ours, moves alias ``champion`` to it (``promoted``), else leaves the champion
   (``refused``). Running services switch by themselves with ``NEXTSTEP_RELOAD_INTERVAL``.

Any exception in a cycle makes it ``failed``: the champion is untouched (the alias moves last,
only after the gate passed) and the next attempt waits ``backoff * 2**(k-1)`` seconds after the
k-th consecutive failure, at most ``backoff_cap`` (deterministic, no jitter: one learner per
deployment has nobody to collide with).

Every cycle, whatever its status, is one MLflow run of experiment ``nextstep-learn``: params
(window start and end, rows, users, margin, candidate and champion versions), metrics (both log
losses, both planner values and their difference) and tags (``status``, ``reason``,
``ope_status``); the status and reason are also logged (logger ``nextstep.learner``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, union

from features.catalog import Catalog, load_catalog
from features.errors import NextstepError
from features.timeutil import iso_seconds
from loop.export import export_log, store_url
from loop.learn_gate import gate_candidate
from loop.lease import Lease, new_holder
from service.store import Store
from service.tables import decisions, outcomes
from training import tracking
from training.holdout import users_with
from training.pipeline import (
    DEFAULT_READINESS,
    ChampionScore,
    check_readiness_choice,
    fingerprint,
    fit_and_evaluate,
    log_training,
)

log = logging.getLogger("nextstep.learner")

EXPERIMENT_LEARN = tracking.EXPERIMENT_LEARN
STATUSES = ("promoted", "refused", "skipped", "failed")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class LearnerError(NextstepError):
    """Bad learner options, or a cycle that cannot run (the message says why)."""


class LeaseLost(NextstepError):
    """The lease ran out and another learner took it before this one could promote."""


def parse_duration(text: str | float, option: str) -> float:
    """Seconds from ``30``, ``30s``, ``15m``, ``6h`` or ``14d``; ``LearnerError`` otherwise."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if m is None:
            raise LearnerError(
                f"{option}: {text!r} is not a duration (a number with s, m, h or d, e.g. 6h)"
            )
        seconds = float(m.group(1)) * _UNIT[m.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise LearnerError(f"{option} must be a positive duration, got {text!r}")
    return seconds


@dataclass(frozen=True)
class LearnerConfig:
    """The loop's options, in seconds (``from_options`` parses the command line's)."""

    every: float = 6 * 3600.0
    min_outcomes: int | None = None
    window: float = 14 * 86400.0
    margin: float = 0.02
    poll: float = 30.0
    max_cycles: int | None = None
    backoff: float = 60.0
    backoff_cap: float = 3600.0
    lease_ttl: float = 600.0
    seed: int = 0
    # as ``nextstep train --readiness-model``, with its default (``DEFAULT_READINESS``): the
    # logistic model often wins a small window's log loss, decides worse in the tail and made
    # the loop's recovery after a shift fail (docs/design.md, ``nextstep learn``)
    readiness_model: str = DEFAULT_READINESS
    # as ``nextstep train --refit``: the version registered is fitted again on the whole window
    # once the holdout has measured it; the gate still scores the fit without the holdout, and
    # a refitted champion is judged on newer offers only (``training.refit_scope``)
    refit: bool = False

    @classmethod
    def from_options(
        cls,
        *,
        every: str = "6h",
        min_outcomes: int | None = None,
        window: str = "14d",
        margin: float = 0.02,
        poll: str = "30s",
        max_cycles: int | None = None,
        backoff: str = "60s",
        backoff_cap: str = "1h",
        lease_ttl: str = "10m",
        seed: int = 0,
        readiness_model: str = DEFAULT_READINESS,
        refit: bool = False,
    ) -> LearnerConfig:
        if min_outcomes is not None and min_outcomes < 1:
            raise LearnerError(f"--min-outcomes must be >= 1, got {min_outcomes}")
        if max_cycles is not None and max_cycles < 1:
            raise LearnerError(f"--max-cycles must be >= 1, got {max_cycles}")
        if not math.isfinite(margin) or margin < 0:
            raise LearnerError(f"--margin must be a finite number >= 0, got {margin}")
        check_readiness_choice(readiness_model)
        cfg = cls(
            every=parse_duration(every, "--every"),
            min_outcomes=min_outcomes,
            window=parse_duration(window, "--window"),
            margin=float(margin),
            poll=parse_duration(poll, "--poll"),
            max_cycles=max_cycles,
            backoff=parse_duration(backoff, "--backoff"),
            backoff_cap=parse_duration(backoff_cap, "--backoff-cap"),
            lease_ttl=parse_duration(lease_ttl, "--lease-ttl"),
            seed=seed,
            readiness_model=readiness_model,
            refit=refit,
        )
        if cfg.backoff_cap < cfg.backoff:
            raise LearnerError("--backoff-cap must be at least --backoff")
        return cfg


@dataclass
class CycleResult:
    """What one cycle did (``status`` is one of ``STATUSES``)."""

    status: str
    reason: str
    version: str | None = None  # the candidate's registered version, when one was trained
    run_id: str | None = None  # the cycle's MLflow run (experiment ``nextstep-learn``)
    window_start: float | None = None
    window_end: float | None = None
    rows: int = 0
    users: int = 0
    champion_version: str | None = None  # the champion the candidate was judged against
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class Learner:
    """One learner process's loop and cycle (module docstring)."""

    def __init__(
        self,
        catalog: Path | Catalog,
        config: LearnerConfig | None = None,
        *,
        url: str | None = None,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:

        self.catalog = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
        self.config = config or LearnerConfig()
        self.url = store_url(url)
        self.clock = clock
        self.store = Store(self.url, pool_size=2, max_overflow=2)
        self.store.migrate()
        self.lease = Lease(self.store, holder or new_holder(), self.config.lease_ttl, clock=clock)
        self.failures = 0  # consecutive failed cycles
        self.retry_at: float | None = None

    def close(self) -> None:
        self.store.dispose()

    # -- schedule ------------------------------------------------------------------------------
    def backoff_delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure."""
        if failures <= 0:
            return 0.0
        return min(self.config.backoff_cap, self.config.backoff * 2.0 ** (failures - 1))

    def due(self, now: float | None = None) -> tuple[bool, str]:
        """Whether a cycle should run now, and why (or why not)."""
        now = self.clock() if now is None else now
        if self.retry_at is not None:
            if now >= self.retry_at:
                return True, f"retry after {self.failures} failed cycle(s)"
            return False, f"backing off until {iso_seconds(self.retry_at)}"
        st = self.lease.state()
        if st.last_cycle_at is None:
            return True, "no cycle has finished on this store yet"
        if now - st.last_cycle_at >= self.config.every:
            return True, f"--every {self.config.every:g}s passed since the last cycle"
        if self.config.min_outcomes is not None:
            n = self.new_outcomes(st.last_window_end)
            if n >= self.config.min_outcomes:
                return True, f"{n} new outcomes >= --min-outcomes {self.config.min_outcomes}"
        return False, "not due"

    def new_outcomes(self, since: float | None) -> int:
        """Outcomes with an event time after ``since`` (all of them for None)."""
        stmt = select(func.count()).select_from(outcomes)
        if since is not None:
            stmt = stmt.where(outcomes.c.ts > since)
        with self.store.read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def _event_range(self) -> tuple[float | None, float | None]:
        """(oldest, newest) event time over decisions and outcomes; Nones for an empty store."""
        with self.store.read() as conn:
            lo_o, hi_o = conn.execute(
                select(func.min(outcomes.c.ts), func.max(outcomes.c.ts))
            ).one()
            lo_d, hi_d = conn.execute(
                select(func.min(decisions.c.ts), func.max(decisions.c.ts))
            ).one()
        lows = [float(x) for x in (lo_o, lo_d) if x is not None]
        highs = [float(x) for x in (hi_o, hi_d) if x is not None]
        return (min(lows) if lows else None, max(highs) if highs else None)

    def _arrived_since(self, log: Any, since: float | None) -> Any:
        """Only the users whose first event lies in the window. A user cut by the window's
        start would be learned from as if the steps they accepted before it never happened
        (a purchase accepted after three earlier accepts would look like a first ask)."""
        if since is None:
            return log
        earlier = union(
            select(decisions.c.user_id).where(decisions.c.ts < since),
            select(outcomes.c.user_id).where(outcomes.c.ts < since),
        )
        with self.store.read() as conn:
            old = {str(u) for (u,) in conn.execute(earlier)}
        keep = ~log.frame["user_id"].astype(str).isin(old)
        return dataclasses.replace(log, frame=log.frame.loc[keep.to_numpy()].reset_index(drop=True))

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> list[CycleResult]:
        """Poll until ``stop`` is set or ``max_cycles`` cycles ran; the cycles' results."""
        stop = stop or threading.Event()
        results: list[CycleResult] = []
        while not stop.is_set():
            try:
                ok, why = self.due()
            except Exception as exc:  # store briefly unreachable: ask again at the next poll
                log.warning("could not check whether a cycle is due: %s", exc)
                ok, why = False, ""
            if ok:
                log.info("cycle due: %s", why)
                results.append(self.run_cycle())
                if self.config.max_cycles is not None and len(results) >= self.config.max_cycles:
                    break
            stop.wait(self.config.poll)
        return results

    # -- one cycle -----------------------------------------------------------------------------
    def run_cycle(self) -> CycleResult:
        """Run one cycle now (whether due or not) and log it; never raises for a cycle's error."""
        t0 = time.perf_counter()
        try:
            acquired = self.lease.acquire()
            st = None if acquired else self.lease.state()
        except Exception as exc:  # the store is down: a failed cycle, retried after back-off
            result = CycleResult("failed", f"lease: {type(exc).__name__}: {str(exc)[:500]}")
            return self._finish(result, t0, holding=False)
        if st is not None:
            result = CycleResult(
                "skipped",
                f"another learner ({st.holder}) holds the lease until {iso_seconds(st.expires_at)}",
            )
            return self._finish(result, t0, holding=False)
        beat = _Heartbeat(self.lease, self.config.lease_ttl / 3.0)
        result = CycleResult("failed", "")
        try:
            self._cycle(beat, result)
        except Exception as exc:  # any failure: champion untouched, retried after back-off
            result.status = "failed"
            result.reason = f"{type(exc).__name__}: {str(exc)[:500]}"
        finally:
            beat.stop()
        return self._finish(result, t0, holding=True)

    def _cycle(self, beat: _Heartbeat, result: CycleResult) -> None:
        """Steps 2-4 of a cycle, filling ``result`` as it goes (so a failure keeps what was
        known: the window, the candidate's version)."""

        oldest, newest = self._event_range()
        if newest is None or self.new_outcomes(None) == 0:
            result.status = "skipped"
            result.reason = "the store has no outcomes yet: nothing to learn from"
            return
        last_end = self.lease.state().last_window_end
        if last_end is not None and newest <= last_end:
            result.status = "skipped"
            result.reason = (
                f"no event newer than the last cycle's window end {iso_seconds(last_end)}"
            )
            return
        start = newest - self.config.window
        result.window_start, result.window_end = start, newest
        since = start if oldest is not None and start > oldest else None
        log_ = self._arrived_since(export_log(self.catalog, since=since, url=self.url).log, since)
        frame = log_.frame
        result.rows, result.users = len(frame), int(frame["user_id"].nunique())
        if result.rows == 0:
            raise LearnerError(
                f"no outcomes in the window {iso_seconds(start)} .. {iso_seconds(newest)}"
            )
        fp = fingerprint(log_, self.catalog)
        out = fit_and_evaluate(log_, self.catalog, seed=self.config.seed, refit=self.config.refit)
        held = frame.loc[users_with(frame, out.holdout)]
        trained = log_training(
            out,
            fp,
            self.catalog,
            holdout_events=lambda: held,
            score_champion=lambda _candidate: ChampionScore(None),  # not called: promote=False
            promote=False,
            seed=self.config.seed,
            readiness_model=self.config.readiness_model,
        )
        result.version = trained.version
        result.tags["train_run_id"] = trained.run_id
        g = gate_candidate(
            out.bundle,
            frame,
            out.holdout,
            held,
            self.catalog,
            margin=self.config.margin,
            seed=self.config.seed,
        )
        result.champion_version = g.champion_version
        result.metrics.update(g.metrics())
        result.tags["ope_status"] = g.ope_status
        if g.promote:
            if beat.lost.is_set() or not self.lease.renew():
                raise LeaseLost("the lease was lost before promotion: another learner may promote")
            tracking.set_alias(tracking.CHAMPION, trained.version)
            if tracking.alias_version(tracking.CHALLENGER) == trained.version:
                tracking.delete_alias(tracking.CHALLENGER)
        result.status = "promoted" if g.promote else "refused"
        result.reason = g.reason
        try:  # the decision stands (the alias has moved or not) even if these tags fail
            client = tracking.client()
            for key, value in (
                ("promotion", result.status),
                ("promotion_reason", f"nextstep learn: {g.reason}"),
            ):
                client.set_model_version_tag(tracking.MODEL_NAME, trained.version, key, value)
        except Exception as exc:
            log.warning("could not tag version %s: %s", trained.version, exc)

    def _finish(self, result: CycleResult, t0: float, *, holding: bool) -> CycleResult:
        """Schedule, lease, MLflow run and log line of a finished cycle."""
        now = self.clock()
        if result.status == "failed":
            self.failures += 1
            self.retry_at = now + self.backoff_delay(self.failures)
            result.tags["retry_at"] = iso_seconds(self.retry_at)
        elif result.status != "skipped" or holding:
            self.failures, self.retry_at = 0, None
        if holding:
            try:
                if result.status != "failed":  # a skipped cycle counts for --every too
                    self.lease.record(result.status, result.window_end)
                self.lease.release()
            except Exception as exc:  # the lease runs out by itself
                log.warning("could not release the learner lease: %s", exc)
        result.metrics["seconds"] = time.perf_counter() - t0
        try:
            result.run_id = _log_run(result, self.config, self.lease.holder)
        except Exception as exc:  # tracking down: the cycle's outcome stands, say so
            log.warning("could not log the cycle to MLflow: %s", exc)
        level = logging.WARNING if result.status in ("refused", "failed") else logging.INFO
        version = f" version {result.version}" if result.version else ""
        log.log(level, "cycle %s%s: %s", result.status, version, result.reason)
        if result.status == "failed" and self.retry_at is not None:
            log.warning("next attempt after back-off at %s", iso_seconds(self.retry_at))
        return result


class _Heartbeat:
    """Renews the lease every ``interval`` seconds in a daemon thread while a cycle runs."""

    def __init__(self, lease: Lease, interval: float) -> None:
        self.lease = lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="nextstep-lease", daemon=True
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not self.lease.renew():
                    self.lost.set()
                    return
            except Exception as exc:  # store briefly down: try again next beat
                log.warning("lease renewal failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _log_run(result: CycleResult, config: LearnerConfig, holder: str) -> str:
    mlflow = tracking.setup()
    exp_id = tracking.experiment_id(EXPERIMENT_LEARN)
    params: dict[str, Any] = {
        "window_start": iso_seconds(result.window_start)
        if result.window_start is not None
        else "-",
        "window_end": iso_seconds(result.window_end) if result.window_end is not None else "-",
        "rows": result.rows,
        "users": result.users,
        "margin": config.margin,
        "window_seconds": config.window,
        "candidate_version": result.version or "-",
        "champion_version": result.champion_version or "-",
        "holder": holder,
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=f"learn-{result.status}") as run:
        mlflow.log_params(params)
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if math.isfinite(v)})
        mlflow.set_tags(
            {
                "nextstep.kind": "learn",
                "status": result.status,
                "reason": result.reason[:5000],
                **result.tags,
            }
        )
        return str(run.info.run_id)


def learn_command(
    catalog: Path,
    config: LearnerConfig,
    *,
    once: bool = False,
) -> int:
    """CLI entry point (``nextstep learn``); returns the exit code.

    ``--once``: one cycle now, exit 0 (promoted, refused, skipped) or 1 (failed). Otherwise the
    loop runs until SIGTERM/SIGINT (which stop it between cycles, the lease released) or
    ``--max-cycles``; exit 1 when the last cycle failed, else 0.
    """
    import signal

    if not catalog.exists():
        raise LearnerError(f"--catalog: no such file {str(catalog)!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    tracking.quiet_mlflow()
    learner = Learner(catalog, config)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        if once:
            results = [learner.run_cycle()]
        else:
            log.info("learner %s started (poll every %gs)", learner.lease.holder, config.poll)
            results = learner.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        learner.close()
    for r in results[-1:]:
        version = f" version {r.version}" if r.version else ""
        print(f"learn: cycle {r.status}{version}: {r.reason}")
    return 1 if results and results[-1].status == "failed" else 0

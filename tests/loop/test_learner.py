"""``nextstep learn``: options, trigger, back-off, the gate's decisions and the lease, on a real
SQLite store filled with simulated logs and a real local MLflow store under a temporary
``NEXTSTEP_HOME``.

Expected outcomes follow from how the data is built (a drifted world, a far smaller training
window, a corrupt row), never from numbers copied from an earlier run."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loop.learner import (
    EXPERIMENT_LEARN,
    Learner,
    LearnerConfig,
    LearnerError,
    parse_duration,
)
from simulation.simulate import write_simulation
from simulation.worlds import BUILTIN, load_world, world_from_dict
from tests.loop.store_log import fill_store

DAY = 86400.0
SHIFT = 120 * DAY  # each later batch starts after the previous one ended (a batch spans ~90 days)
WINDOW = "100d"  # covers the newest batch only


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in ("NEXTSTEP_DATABASE_URL", "NEXTSTEP_CATALOG", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXTSTEP_HOME", str(tmp_path / "home"))
    db = tmp_path / "store" / "service.db"
    return {"url": f"sqlite:///{db}", "db": db}


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Simulated logs on the ladder catalog: two of the world itself, one small one, and one of a
    drifted world (every user type far less ready: the old model is badly calibrated on it)."""
    base = tmp_path_factory.mktemp("learner-sims")
    ladder = load_world("ladder")
    drifted = dict(BUILTIN["ladder"])
    drifted["types"] = [{**t, "base": t["base"] - 2.5} for t in BUILTIN["ladder"]["types"]]
    out = {}
    for name, world, users, seed in (
        ("a", ladder, 300, 3),
        ("a2", ladder, 300, 4),
        ("small", ladder, 40, 5),
        ("drift", world_from_dict(drifted, name="ladder_drift"), 300, 6),
    ):
        write_simulation(world, users, seed, base / name)
        out[name] = base / name / "events.csv"
    out["catalog"] = base / "a" / "catalog.yaml"
    return out


def _config(**kw: Any) -> LearnerConfig:
    opts: dict[str, Any] = {"window": WINDOW, "poll": "1s", "backoff": "60s", "backoff_cap": "5m"}
    opts.update(kw)
    return LearnerConfig.from_options(**opts)


def _champion() -> str | None:
    from training import tracking

    return tracking.alias_version(tracking.CHAMPION)


def _run(run_id: str) -> Any:
    from training import tracking

    run = tracking.client().get_run(run_id)
    exp = tracking.client().get_experiment(run.info.experiment_id)
    assert exp.name == EXPERIMENT_LEARN
    return run


class FakeClock:
    """A wall clock the test moves by hand (the schedule's only source of time)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- options ------------------------------------------------------------------------------------
def test_durations_parse_and_bad_ones_are_named() -> None:
    assert parse_duration("90m", "--every") == 5400.0
    assert parse_duration("14d", "--window") == 14 * DAY
    assert parse_duration("30", "--poll") == 30.0
    assert parse_duration("1.5h", "--every") == 5400.0
    for bad in ("6x", "", "-3h", "0s", "h"):
        with pytest.raises(LearnerError, match="--every"):
            parse_duration(bad, "--every")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "6 hours"], "--every"),
        (["--window", "0d"], "--window"),
        (["--min-outcomes", "0"], "--min-outcomes"),
        (["--max-cycles", "0"], "--max-cycles"),
        (["--margin", "-0.1"], "--margin"),
        (["--backoff", "10m", "--backoff-cap", "1m"], "--backoff-cap"),
        (["--readiness-model", "forest"], "--readiness-model"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path
) -> None:
    from nextstep.cli.app import app

    cat = tmp_path / "catalog.yaml"
    cat.write_text("steps: []\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["learn", "--catalog", str(cat), "--once", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_a_missing_catalog_exits_2(tmp_path: Path) -> None:
    from nextstep.cli.app import app

    r = CliRunner().invoke(app, ["learn", "--catalog", str(tmp_path / "nope.yaml"), "--once"])
    assert r.exit_code == 2 and "nope.yaml" in r.output


# -- trigger ------------------------------------------------------------------------------------
def test_a_cycle_is_due_by_every_or_by_new_outcomes(
    home: dict[str, Any], sims: dict[str, Path]
) -> None:
    n = fill_store(home["url"], sims["a"], sims["catalog"])
    clock = FakeClock()
    every = 3600.0
    learner = Learner(
        sims["catalog"], _config(every="1h", min_outcomes=50), url=home["url"], clock=clock
    )
    try:
        assert learner.due()[0], "a store no cycle ever finished on is due at once"
        with sqlite3.connect(home["db"]) as db:
            ts = sorted(r[0] for r in db.execute("SELECT ts FROM outcomes"))
        assert len(ts) == n and len(set(ts[-60:])) == 60  # distinct event times at the end
        # a cycle finished now, its window ending just before the last 49 outcomes
        assert learner.lease.acquire()
        assert learner.lease.record("refused", ts[-50])
        assert learner.lease.release()
        assert learner.new_outcomes(ts[-50]) == 49
        ok, why = learner.due()
        assert not ok and why == "not due"
        clock.now += every - 1
        assert not learner.due()[0]
        clock.now += 1
        ok, why = learner.due()
        assert ok and "--every" in why
        # the same cycle with one more outcome after its window: due by count, not by time
        clock.now -= every
        assert learner.lease.acquire() and learner.lease.record("refused", ts[-51])
        learner.lease.release()
        ok, why = learner.due()
        assert ok and "50 new outcomes" in why
    finally:
        learner.close()


# -- failures -----------------------------------------------------------------------------------
def _registered_champion() -> None:
    """Version 1 of the registered model as champion (a registry entry, no artifact needed:
    a failing cycle never loads it)."""
    from training import tracking

    tracking.setup()
    client = tracking.client()
    client.create_registered_model(tracking.MODEL_NAME)
    client.create_model_version(tracking.MODEL_NAME, source="file:///nonexistent", run_id=None)
    tracking.set_alias(tracking.CHAMPION, "1")


@pytest.mark.slow
def test_a_failed_cycle_keeps_the_champion_and_backs_off(
    home: dict[str, Any], sims: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    fill_store(home["url"], sims["a"], sims["catalog"])
    with sqlite3.connect(home["db"]) as db:  # a row the catalog does not know: a corrupt window
        db.execute(
            "UPDATE outcomes SET step = 'teleport' WHERE id = (SELECT MAX(id) FROM outcomes)"
        )
    _registered_champion()
    clock = FakeClock()
    learner = Learner(sims["catalog"], _config(), url=home["url"], clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="nextstep.learner"):
            first = learner.run_cycle()
        assert first.status == "failed" and "teleport" in first.reason
        assert _champion() == "1"
        assert learner.retry_at == clock.now + 60.0
        assert any("cycle failed" in r.getMessage() and "teleport" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        run = _run(first.run_id or "")
        assert run.data.tags["status"] == "failed" and "teleport" in run.data.tags["reason"]
        assert learner.lease.state().holder is None, "the lease is released after a failure"
        assert learner.lease.state().last_cycle_at is None, "a failure is not a finished cycle"

        clock.now += 59
        assert not learner.due()[0]
        clock.now += 1
        assert learner.due()[0]
        delays = []
        for _ in range(3):  # after 60: 120, 240, then capped at 300
            start = clock.now
            assert learner.run_cycle().status == "failed"
            delays.append((learner.retry_at or 0) - start)
            clock.now = learner.retry_at or clock.now
        assert delays == [120.0, 240.0, 300.0]
        assert _champion() == "1"
    finally:
        learner.close()


@pytest.mark.slow
def test_once_exit_codes(home: dict[str, Any], sims: dict[str, Path], tmp_path: Path) -> None:
    """Exit 0 for promoted and skipped, 1 for failed (a window with one outcome only)."""
    exe = Path(sys.executable).with_name("nextstep")
    env = {**os.environ, "NEXTSTEP_DATABASE_URL": home["url"]}
    args = [str(exe), "learn", "--catalog", str(sims["catalog"]), "--once", "--window", WINDOW]

    def once() -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)

    r = once()
    assert r.returncode == 0 and "skipped" in r.stdout and "no outcomes" in r.stdout, r.stderr
    fill_store(home["url"], sims["small"], sims["catalog"])
    with sqlite3.connect(home["db"]) as db:
        db.execute("UPDATE outcomes SET outcome = 'declined'")
    r = once()
    assert r.returncode == 1 and "failed" in r.stdout and "one outcome" in r.stdout, r.stderr
    fill_store(home["url"], sims["a"], sims["catalog"], prefix="n", shift=SHIFT)
    r = once()
    assert r.returncode == 0 and "cycle promoted version 1" in r.stdout, r.stderr


# -- the gate -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_drifted_log_promotes(home: dict[str, Any], sims: dict[str, Path]) -> None:
    fill_store(home["url"], sims["a"], sims["catalog"])
    learner = Learner(sims["catalog"], _config(), url=home["url"])
    try:
        first = learner.run_cycle()
        assert first.status == "promoted" and "no champion" in first.reason
        assert _champion() == first.version
        again = learner.run_cycle()
        assert again.status == "skipped" and "no event newer" in again.reason

        fill_store(home["url"], sims["drift"], sims["catalog"], prefix="d", shift=SHIFT)
        second = learner.run_cycle()
        assert second.status == "promoted", second.reason
        assert second.version != first.version and _champion() == second.version
        assert second.champion_version == first.version
        m = second.metrics
        assert m["candidate_logloss"] < m["champion_logloss"] - 0.05, m
        run = _run(second.run_id or "")
        assert run.data.tags["status"] == "promoted"
        assert run.data.params["candidate_version"] == second.version
        assert run.data.params["champion_version"] == first.version
        assert int(run.data.params["rows"]) == second.rows > 0
        assert run.data.params["window_end"] > run.data.params["window_start"]
        assert {"candidate_logloss", "champion_logloss"} <= set(run.data.metrics)
        # only the drifted batch is in the window
        with sqlite3.connect(home["db"]) as db:
            drift_rows = db.execute("SELECT COUNT(*) FROM outcomes WHERE user_id LIKE 'd%'")
            assert second.rows == drift_rows.fetchone()[0]
    finally:
        learner.close()


@pytest.mark.slow
def test_a_gate_refusal_is_logged_with_its_reason(
    home: dict[str, Any], sims: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The champion learned the ladder world from 600 users. The next window holds the drifted
    world first and then 40 users of the ladder world again, so the candidate trains on the
    drifted world and is judged (calendar holdout: the last 20% of the offers) mostly on the
    ladder world's users, where the champion is the calibrated one: the gate must refuse."""
    fill_store(home["url"], sims["a"], sims["catalog"])
    fill_store(home["url"], sims["a2"], sims["catalog"], prefix="b")
    big = Learner(sims["catalog"], _config(window="1000d"), url=home["url"])
    try:
        assert big.run_cycle().status == "promoted"
    finally:
        big.close()
    champion = _champion()
    fill_store(home["url"], sims["drift"], sims["catalog"], prefix="d", shift=SHIFT)
    fill_store(home["url"], sims["small"], sims["catalog"], prefix="s", shift=2 * SHIFT)
    learner = Learner(sims["catalog"], _config(window="230d"), url=home["url"])
    try:
        with caplog.at_level(logging.INFO, logger="nextstep.learner"):
            r = learner.run_cycle()
    finally:
        learner.close()
    assert r.status == "refused", r.reason
    assert _champion() == champion
    with sqlite3.connect(home["db"]) as db:
        in_window = db.execute("SELECT COUNT(*) FROM outcomes WHERE user_id GLOB '[ds]*'")
        assert r.rows == in_window.fetchone()[0], "the window is the drifted and the small batch"
    assert r.metrics["candidate_logloss"] > r.metrics["champion_logloss"] + 0.02
    assert "log loss" in r.reason and f"> champion v{champion}" in r.reason
    run = _run(r.run_id or "")
    assert run.data.tags["status"] == "refused" and run.data.tags["reason"] == r.reason
    line = [x.getMessage() for x in caplog.records if "cycle refused" in x.getMessage()]
    assert line and r.reason in line[0]
    from training import tracking

    tags = tracking.client().get_model_version(tracking.MODEL_NAME, r.version).tags
    assert tags["promotion"] == "refused"


# -- two learners ---------------------------------------------------------------------------------
def _race(learners: list[Learner], *, close: bool = True) -> dict[int, Any]:
    """Each learner runs one cycle, all released at the same instant; their results by index."""
    barrier = threading.Barrier(len(learners))
    results: dict[int, Any] = {}

    def go(i: int) -> None:
        barrier.wait()
        results[i] = learners[i].run_cycle()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(learners))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        if close:
            for x in learners:
                x.close()
    return results


@pytest.mark.slow
def test_two_learners_promote_once(home: dict[str, Any], sims: dict[str, Path]) -> None:
    from training import tracking

    fill_store(home["url"], sims["a"], sims["catalog"])
    tracking.experiment_id(EXPERIMENT_LEARN)  # the tracking database exists before the race
    results = _race(
        [
            Learner(sims["catalog"], _config(), url=home["url"], holder=f"learner-{i}")
            for i in range(2)
        ]
    )
    statuses = sorted(r.status for r in results.values())
    assert statuses == ["promoted", "skipped"], [r.reason for r in results.values()]
    promoted = next(r for r in results.values() if r.status == "promoted")
    assert _champion() == promoted.version
    versions = tracking.client().search_model_versions(f"name='{tracking.MODEL_NAME}'")
    assert [str(v.version) for v in versions] == [promoted.version], "the loser trained nothing"


@pytest.mark.slow
def test_a_learner_that_lost_its_lease_does_not_promote(
    home: dict[str, Any], sims: dict[str, Path]
) -> None:
    """A's lease runs out while it trains (the shared clock jumps past its expiry) and B takes
    it: A must not promote, and reports why."""
    from loop.lease import Lease

    fill_store(home["url"], sims["a"], sims["catalog"])
    clock = FakeClock()
    a = Learner(sims["catalog"], _config(), url=home["url"], holder="a", clock=clock)
    b = Lease(a.store, "b", ttl=600, clock=clock)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(a.run_cycle()))
    try:
        t.start()
        deadline = time.monotonic() + 60
        while a.lease.state().holder != "a" and time.monotonic() < deadline:
            time.sleep(0.02)
        clock.now += a.config.lease_ttl + 1
        assert b.acquire()
        t.join(600)
        assert b.state().holder == "b", "A did not take the lease back"
    finally:
        a.close()
    (r,) = result
    assert r.status == "failed" and "lease was lost" in r.reason, r.reason
    assert r.version is not None and _champion() is None


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_two_learners_on_postgresql_promote_once(
    home: dict[str, Any], sims: dict[str, Path], postgres_db: str
) -> None:
    """The same race on a PostgreSQL store: the learners migrate it (0005 included), export
    from it and take the lease there."""
    from training import tracking

    fill_store(postgres_db, sims["a"], sims["catalog"])
    tracking.experiment_id(EXPERIMENT_LEARN)
    learners = [
        Learner(sims["catalog"], _config(), url=postgres_db, holder=f"pg-{i}") for i in range(2)
    ]
    results = _race(learners, close=False)
    try:
        assert learners[0].lease.state().last_status == "promoted"
    finally:
        for x in learners:
            x.close()
    assert sorted(r.status for r in results.values()) == ["promoted", "skipped"]
    promoted = next(r for r in results.values() if r.status == "promoted")
    assert _champion() == promoted.version and promoted.rows > 0


# -- signals ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_stops_the_loop_and_releases_the_lease(
    home: dict[str, Any], tmp_path: Path
) -> None:
    import yaml

    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump({"steps": BUILTIN["ladder"]["catalog"]}), encoding="utf-8")
    exe = Path(sys.executable).with_name("nextstep")
    env = {**os.environ, "NEXTSTEP_DATABASE_URL": home["url"]}
    proc = subprocess.Popen(
        [str(exe), "learn", "--catalog", str(cat), "--poll", "1s"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and status is None:  # the first (skipped) cycle
            time.sleep(0.5)
            if home["db"].exists():
                with sqlite3.connect(home["db"]) as db:
                    try:
                        row = db.execute("SELECT last_status FROM learner_lease").fetchone()
                    except sqlite3.OperationalError:  # the table is not there yet
                        row = None
                status = row[0] if row else None
        assert status == "skipped"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    with sqlite3.connect(home["db"]) as db:
        assert db.execute("SELECT holder FROM learner_lease").fetchone()[0] is None


def test_the_unattended_loop_keeps_lightgbm_readiness_unless_told() -> None:
    """The learner serves LightGBM readiness by default (``train`` chooses by log loss);
    ``--readiness-model`` reaches the config."""
    assert LearnerConfig.from_options().readiness_model == "lightgbm"
    assert LearnerConfig.from_options(readiness_model="auto").readiness_model == "auto"


@pytest.mark.slow
def test_a_refitting_loop_judges_its_champion_on_newer_offers_only(
    home: dict[str, Any], sims: dict[str, Path]
) -> None:
    """``learn --refit`` registers the window's refit; the next cycle's window overlaps it, and
    with too few offers newer than its data the champion stays, saying why."""
    from training.modelio import load_model_bundle
    from training.refit_scope import REFIT_UNTIL

    fill_store(home["url"], sims["a"], sims["catalog"])
    learner = Learner(sims["catalog"], _config(refit=True, window="400d"), url=home["url"])
    try:
        first = learner.run_cycle()
        assert first.status == "promoted", first.reason
        bundle, _ = load_model_bundle(f"models:/nextstep/{first.version}")
        assert bundle.meta[REFIT_UNTIL] == bundle.meta["data"]["ts_max"]
        assert bundle.base_rates["accept"] > 0  # fitted, registered and loadable

        fill_store(home["url"], sims["small"], sims["catalog"], prefix="s", shift=90 * DAY)
        second = learner.run_cycle()
        assert second.status == "refused", second.reason
        assert f"champion v{first.version} was refitted on every offer up to" in second.reason
        assert "offers are newer, and a fair comparison needs 200" in second.reason
        assert _champion() == first.version
    finally:
        learner.close()


def test_learn_refit_reaches_the_config() -> None:
    assert not LearnerConfig.from_options().refit
    assert LearnerConfig.from_options(refit=True).refit

"""The learner's lease (``loop.lease``, migration 0005) on SQLite and PostgreSQL: one holder
at a time, renewals only by the holder, expiry hands it over, and a race has one winner."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from loop.lease import Lease
from service.store import Store


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    try:
        yield s
    finally:
        s.dispose()


def test_one_holder_at_a_time_and_only_the_holder_renews(store: Store) -> None:
    clock = Clock()
    a = Lease(store, "a", ttl=60, clock=clock)
    b = Lease(store, "b", ttl=60, clock=clock)
    assert a.state().holder is None
    assert a.acquire()
    assert a.acquire(), "re-acquiring one's own lease succeeds"
    assert not b.acquire()
    assert not b.renew() and not b.release()
    assert a.state().holder == "a" and a.state().expires_at == clock.now + 60
    clock.now += 30
    assert a.renew() and a.state().expires_at == clock.now + 60
    assert not b.record("promoted", 5.0), "only the holder writes the schedule"
    assert a.record("promoted", 5.0)
    assert a.release()
    st = b.state()
    assert st.holder is None and st.last_status == "promoted" and st.last_window_end == 5.0
    assert b.acquire() and not a.renew()


def test_an_expired_lease_passes_to_another_learner(store: Store) -> None:
    clock = Clock()
    a = Lease(store, "a", ttl=60, clock=clock)
    b = Lease(store, "b", ttl=60, clock=clock)
    assert a.acquire()
    clock.now += 60
    assert not b.acquire(), "not before the expiry has passed"
    clock.now += 1
    assert b.acquire()
    assert not a.renew(), "the old holder learns that it lost the lease"
    assert not a.release() and b.state().holder == "b"


@pytest.mark.parametrize("existing_row", [False, True])
def test_a_race_for_the_lease_has_one_winner(store: Store, existing_row: bool) -> None:
    if existing_row:  # a released lease row (the UPDATE path); else the first INSERT races
        first = Lease(store, "first", ttl=60)
        assert first.acquire() and first.release()
    n = 8
    leases = [Lease(store, f"l{i}", ttl=60) for i in range(n)]
    barrier = threading.Barrier(n)
    won: list[bool] = [False] * n

    def go(i: int) -> None:
        barrier.wait()
        won[i] = leases[i].acquire()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(won) == 1
    assert leases[0].state().holder == f"l{won.index(True)}"

"""The learner's lease in the service's store (table ``learner_lease``, migration 0005).

Why a lease and not a lock held by a connection: a learner's cycle lasts minutes (export, train,
evaluate) and must not pin a database connection or a transaction that long, and a learner that
dies (``kill -9``, a lost host) must not keep the lock for ever. So the lock is a row: ``holder``
owns it until ``expires_at``, renews it while it works and clears it when done; a crashed
holder's lease simply runs out.

Every change is one conditional statement, so two learners cannot both win:

* ``acquire``: ``UPDATE ... SET holder = me WHERE name = N AND (holder IS NULL OR holder = me OR
  expires_at < now)``; when no row exists yet, ``INSERT`` it (the primary key lets only one
  concurrent insert through, the other gets an integrity error and loses);
* ``renew``/``release``/``record``: ``... WHERE name = N AND holder = me``: a learner whose lease
  ran out and was taken by another one changes nothing and learns that it lost it.

On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (``service.store``), so the
statements are serialised; on PostgreSQL the ``UPDATE`` takes the row lock and re-checks its
condition on the committed row (read committed), which gives the same guarantee.

Holder ids must be unique per running learner (``new_holder``: host, pid and a random suffix).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, or_, select, update

from service.store import Store
from service.tables import learner_lease

LEASE_NAME = "learner"
_c = learner_lease.c


def new_holder() -> str:
    """A holder id unique to this process and call (host, pid, random)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseState:
    """The lease row as last committed (all None/0 before the first learner ever ran)."""

    holder: str | None = None
    expires_at: float = 0.0
    last_cycle_at: float | None = None
    last_window_end: float | None = None
    last_status: str | None = None


class Lease:
    """One learner's handle on the shared lease row."""

    def __init__(
        self,
        store: Store,
        holder: str,
        ttl: float = 300.0,
        *,
        name: str = LEASE_NAME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl > 0:
            raise ValueError("the lease ttl must be > 0 seconds")
        self.store = store
        self.holder = holder
        self.ttl = float(ttl)
        self.name = name
        self.clock = clock

    def state(self) -> LeaseState:
        with self.store.read() as conn:
            row = conn.execute(select(learner_lease).where(_c.name == self.name)).first()
        if row is None:
            return LeaseState()
        return LeaseState(
            holder=row.holder,
            expires_at=float(row.expires_at),
            last_cycle_at=row.last_cycle_at,
            last_window_end=row.last_window_end,
            last_status=row.last_status,
        )

    def acquire(self) -> bool:
        """Take the lease when it is free, expired or already ours; False when another holds it."""
        now = self.clock()
        values = {"holder": self.holder, "expires_at": now + self.ttl, "acquired_at": now}
        with self.store.write() as conn:
            taken = conn.execute(
                update(learner_lease)
                .where(
                    _c.name == self.name,
                    or_(_c.holder.is_(None), _c.holder == self.holder, _c.expires_at < now),
                )
                .values(**values)
            ).rowcount
            if taken == 1:
                return True
            exists = conn.execute(select(_c.name).where(_c.name == self.name)).first()
        if exists is not None:
            return False
        try:
            with self.store.write() as conn:
                conn.execute(insert(learner_lease).values(name=self.name, **values))
        except self.store.integrity_errors:  # another learner inserted it first
            return False
        return True

    def renew(self) -> bool:
        """Push the expiry ``ttl`` ahead; False when the lease is no longer ours."""
        return self._mine(expires_at=self.clock() + self.ttl)

    def release(self) -> bool:
        """Give the lease up (keeps the schedule columns); False when it was not ours."""
        return self._mine(holder=None, expires_at=0.0)

    def record(self, status: str, window_end: float | None) -> bool:
        """Write the finished cycle into the schedule columns (only while holding the lease)."""
        values: dict[str, object] = {"last_cycle_at": self.clock(), "last_status": status}
        if window_end is not None:
            values["last_window_end"] = window_end
        return self._mine(**values)

    def _mine(self, **values: object) -> bool:
        with self.store.write() as conn:
            n = conn.execute(
                update(learner_lease)
                .where(_c.name == self.name, _c.holder == self.holder)
                .values(**values)
            ).rowcount
        return n == 1

"""The store's schema as SQLAlchemy Core tables (the migrations create exactly these).

Layout (shared with ``nextstep report`` / ``export``, which read it):

* ``decisions`` — one row per answered next-step request, served or not (``step`` NULL when
  nothing was offered, with ``reason``). ``ts`` is the request's "now" (epoch seconds),
  ``created_at`` the server's clock. ``context`` and ``candidates`` are JSON text.
* ``outcomes`` — what the user did: ``decision_id`` set (UNIQUE: one outcome per decision) or
  NULL for organic offers that did not come from this service. ``context`` is JSON text, only
  for organic outcomes (a decision's context lives on the decision).
* ``served_catalogs`` — every catalog a service start served: canonical JSON ``content`` (a
  mapping with ``steps``), its ``sha256``, and when it was first and last served (migration
  0003). ``nextstep export``/``report``/``promote`` use the last one when given no catalog.
* ``idempotency`` — the first 2xx response to a request carrying an ``Idempotency-Key``,
  keyed by (key, route), written in the same transaction as the effect it describes.
* ``learner_lease`` — which ``nextstep learn`` process may promote right now, and the learning
  loop's schedule (``loop.lease``; migration 0005). The service never reads it.

Times are float epoch seconds everywhere so SQLite and PostgreSQL behave identically.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", String(32), primary_key=True),
    Column("user_id", String, nullable=False),
    Column("ts", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("step", String, nullable=True),
    Column("arm", String, nullable=False),
    Column("policy", String, nullable=False),
    Column("model_version", String, nullable=True),
    Column("propensity", Float, nullable=True),
    Column("explored", Boolean, nullable=False),
    Column("p_accept", Float, nullable=True),
    Column("context", Text, nullable=True),
    Column("candidates", Text, nullable=True),
    Column("reason", String, nullable=True),
    Column("request_hash", String(64), nullable=True),
    Index("ix_decisions_user_id", "user_id"),
    Index("ix_decisions_ts", "ts"),
)

outcomes = Table(
    "outcomes",
    metadata,
    # BIGINT on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column(
        "decision_id",
        String(32),
        ForeignKey("decisions.decision_id", name="fk_outcomes_decision_id"),
        nullable=True,
    ),
    Column("user_id", String, nullable=False),
    Column("step", String, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("ts", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("context", Text, nullable=True),
    Index("uq_outcomes_decision_id", "decision_id", unique=True),
    Index("ix_outcomes_user_ts", "user_id", "ts", "id"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("route", String(64), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_idempotency_created_at", "created_at"),
)

# What a shadow arm would have done on a served decision (migration 0002). One row per shadow
# arm per served decision; the served decision's outcome is joined through ``decision_id``.
shadow_decisions = Table(
    "shadow_decisions",
    metadata,
    Column("decision_id", String(32), primary_key=True),
    Column("arm", String, primary_key=True),
    Column("policy", String, nullable=False),
    Column("model_version", String, nullable=True),
    Column("step", String, nullable=True),
    Column("propensity", Float, nullable=True),
)

served_catalogs = Table(
    "served_catalogs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("content", Text, nullable=False),
    Column("source", String, nullable=True),
    Column("first_served_at", Float, nullable=False),
    Column("last_served_at", Float, nullable=False),
)

# Each user's folded state (migration 0004; ``service.user_state``): JSON keyed by step id,
# built for the catalog whose fingerprint is in ``catalog``, updated with every outcome in the
# transaction that records it. ``last_ts`` is the newest outcome folded in.
user_state = Table(
    "user_state",
    metadata,
    Column("user_id", String, primary_key=True),
    Column("catalog", String(64), nullable=False),
    Column("state", Text, nullable=False),
    Column("last_ts", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Small facts about the store itself (migration 0004), e.g. which catalog the states are for.
store_meta = Table(
    "store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# The learner's lock and its schedule (migration 0005; ``loop.lease``): one row per lease
# name. ``holder`` (NULL when free) owns it until ``expires_at`` (epoch seconds, renewed while a
# cycle runs); the ``last_*`` columns say when the last cycle finished and which event time its
# data window ended at, so a restarted learner, or a second one, keeps the same schedule.
learner_lease = Table(
    "learner_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=True),
    Column("expires_at", Float, nullable=False),
    Column("acquired_at", Float, nullable=True),
    Column("last_cycle_at", Float, nullable=True),
    Column("last_window_end", Float, nullable=True),
    Column("last_status", String(16), nullable=True),
)

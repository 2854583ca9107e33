"""The HTTP service (docs/design.md sections 6 and 9).

Modules, one job each:

* ``app`` — ``create_app(settings, decider_factory=...)`` and the lifespan; ``app_from_env``
  is uvicorn's factory. ``run`` — ``serve_command`` behind ``nextstep serve``.
* ``settings`` — ``NEXTSTEP_*`` environment; ``deps`` — ``SettingsDep``, ``StoreDep``,
  ``DeciderDep`` (the current ``Deciders`` snapshot) and the API-key check.
* ``routers/`` — one router per resource: decisions, outcomes, users, catalog, ops, admin.
* ``flows`` — what each endpoint does (idempotency, one outcome per decision, conversion).
* ``store``/``tables``/``migrations/`` — SQLAlchemy Core on SQLite (WAL) or PostgreSQL, Alembic.
* ``experiments`` — arms and sticky assignment; ``runtime`` — the swappable snapshot of one
  ``models.decide.Decider`` per arm; ``model_loader`` — the served models: loaded scorers,
  cached fallback, digests (references resolved by ``models.resolver``).
* ``problems`` — RFC 9457 errors; ``middleware`` — body limits, media type, request metrics;
  ``metrics`` — Prometheus; ``schemas`` — request/response shapes (timestamps are parsed and
  written by ``features.timeutil``).
"""

"""Alembic environment: runs on the connection ``Store.migrate`` hands over (no alembic.ini).

Using the caller's connection keeps migrations inside the caller's transaction (and, on
PostgreSQL, under its advisory lock), so several workers starting at once cannot race.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.tables import metadata

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # command-line use: `alembic -x url=... upgrade head` with a hand-made config
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)

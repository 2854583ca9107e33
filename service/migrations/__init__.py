"""Alembic migrations of the service store (run programmatically by ``Store.migrate``)."""

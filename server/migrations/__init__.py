"""Alembic migrations of the server's database (run by ``server.storage.upgrade_schema``)."""

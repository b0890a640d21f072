"""Alembic environment of the server's migrations.

``server.storage.upgrade_schema`` runs Alembic with the open connection in
``config.attributes["connection"]``; the Alembic command line (``alembic -x
url=sqlite:///var/kioskfleet.db upgrade head`` with ``-c`` pointing at an ini
whose ``script_location`` is this folder) opens its own from ``-x url`` or the
ini's ``sqlalchemy.url``. Autogenerate compares against the server's table
metadata. SQLite migrates in batch mode (copy and move) where it cannot ALTER.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from server.storage import server_metadata

config = context.config
target_metadata = server_metadata()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database: -x url=... or sqlalchemy.url in the ini")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
_main()

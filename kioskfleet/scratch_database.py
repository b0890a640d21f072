"""A throw-away PostgreSQL database: created empty, dropped (connections and all) afterwards.

For the test suite's ``postgres_url`` fixture and the benchmarks that run a server on
PostgreSQL (``bench/soak.py``, ``bench/ingest.py --database postgresql``). It creates and
drops only the database it named itself (``<prefix>_<12 hex digits>``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

__all__ = ["DEFAULT_ADMIN_URL", "default_admin_url", "scratch_database", "scratch_postgres"]

DEFAULT_ADMIN_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_postgres(admin_url: str, *, prefix: str = "kf_test") -> Iterator[str]:
    """Create an empty database through ``admin_url`` (a libpq or SQLAlchemy URL of a
    database whose role may CREATE DATABASE) and yield its SQLAlchemy URL
    (``postgresql+psycopg://``); drop it WITH (FORCE) on exit.

    Raises psycopg.Error when the server is unreachable or refuses."""
    admin = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def default_admin_url() -> str:
    """``KIOSKFLEET_TEST_POSTGRES_URL`` (the test suite's), else the local server's
    ``postgres`` database as ``postgres``."""
    return os.environ.get("KIOSKFLEET_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)


@contextmanager
def scratch_database(kind: str, directory: Path, admin_url: str | None = None) -> Iterator[str]:
    """A new empty database for one run: ``sqlite`` (``<directory>/kioskfleet.db``) or
    ``postgresql`` (``scratch_postgres``). Yields its SQLAlchemy URL. Raises ValueError
    for another ``kind``, psycopg.Error as ``scratch_postgres``."""
    if kind == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{directory}/kioskfleet.db"
    elif kind == "postgresql":
        with scratch_postgres(admin_url or default_admin_url(), prefix="kf_bench") as url:
            yield url
    else:
        raise ValueError(f"unknown database kind {kind!r}: sqlite or postgresql")

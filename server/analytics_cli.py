"""``kioskfleet analytics transactions|utilisation|availability|turned-away``: the analytics
API's answers (``server.analytics_api``) read straight from the database, as JSON on
stdout, with no server running (settings from ``KIOSKFLEET_*``; the database is migrated
first). The terminals are those the database holds, each in its stored hall. Figures and
ranges are those of docs/analytics.md. Returns process exit codes: 0 done, 1 failed, 2
unusable settings or arguments.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from server.analytics import GroupBy
from server.analytics_api import (
    availability_public,
    transactions_public,
    turned_away_public,
    utilisation_public,
)
from server.analytics_report import AnalyticsSources, report_range
from server.config import Settings
from server.errors import ConfigError, ServerError
from server.fleet_collector import UNKNOWN_LABEL
from server.main import storage_for
from server.opening_hours_store import OpeningHoursStore
from server.storage import Storage, server_metadata
from server.usage_rollup_store import UsageRollupStore

__all__ = ["ANALYTICS_COMMANDS", "database_sources", "run_analytics_command"]

log = logging.getLogger(__name__)

ANALYTICS_COMMANDS = ("transactions", "utilisation", "availability", "turned-away")


def database_sources(storage: Storage) -> AnalyticsSources:
    """The analytics sources over the database alone (the terminals its rows hold)."""
    rollups = UsageRollupStore(storage)
    hours = OpeningHoursStore(storage)
    terminal = server_metadata().tables["terminal"]

    def terminals() -> dict[str, str]:
        with storage.begin("read terminal halls") as conn:
            rows = conn.execute(sa.select(terminal.c.id, terminal.c.hall)).all()
        return {tid: hall or UNKNOWN_LABEL for tid, hall in rows}

    return AnalyticsSources(
        rows=lambda since, until, hall, tid, service: rollups.hourly(
            since, until, hall=hall, terminal_id=tid, service=service
        ),
        availability=lambda since, until, hall: rollups.availability(since, until, hall=hall),
        hours=lambda: hours.all()[0],
        terminals=terminals,
    )


def run_analytics_command(
    command: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    by: str = GroupBy.HALL.value,
    hall: str | None = None,
    env_file: Path | None = None,
) -> int:
    """Print one of ``ANALYTICS_COMMANDS``' answers as JSON."""
    try:
        settings = Settings.from_env(env_file)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            log.error("--%s needs a UTC offset (RFC 3339)", name)
            return 2
    storage = storage_for(settings)
    try:
        storage.open()
        sources = database_sources(storage)
        r = report_range(since, until, datetime.now(UTC))
        if command == "transactions":
            answer = transactions_public(sources, r, GroupBy(by), hall=hall).model_dump_json(
                indent=2
            )
        elif command == "utilisation":
            answer = utilisation_public(sources, r, hall=hall).model_dump_json(indent=2)
        elif command == "availability":
            answer = availability_public(sources, r, hall=hall).model_dump_json(indent=2)
        else:
            answer = turned_away_public(sources, r, hall=hall).model_dump_json(indent=2)
        sys.stdout.write(answer + "\n")
        return 0
    except ServerError as exc:
        log.error("analytics %s failed: %s", command, exc)
        return 1
    finally:
        storage.close()

"""The retention of every table: the one list saying how each stops growing.

Every table of ``server.storage.server_metadata()`` is here, either ``Pruned`` (the
scheduled ``RetentionPruner`` deletes its old rows; ``job`` names the pruning, ``setting``
the ``server.config.Settings`` field that gives the days kept) or ``Bounded`` (its size is
bounded by design: ``reason`` says by what). ``retentions`` turns the list and the prune
functions the server wires into the pruner's jobs, so the days kept are read from here
only. tests/unit/test_table_retention.py fails for a table missing from the list, a setting
that does not exist, or a docs/data-model.md retention table that says otherwise.

Pure: no I/O, nothing wired at import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from server.config import Settings
from server.scheduler import Retention

__all__ = ["TABLE_RETENTIONS", "Bounded", "Pruned", "retentions"]


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows the retention job deletes: ``job`` (its name in the pruner's log and result),
    ``setting`` (the days kept; None when the rule is not an age: ``rule`` says what)."""

    job: str
    setting: str | None
    rule: str


@dataclass(frozen=True, slots=True)
class Bounded:
    """A table that cannot grow without bound, and why."""

    reason: str


_SPENT: Final = "spent enrollment tokens and expired certificates"

TABLE_RETENTIONS: Final[Mapping[str, Pruned | Bounded]] = {
    "terminal": Bounded("one row per terminal in the fleet; decommission deletes it"),
    "peripheral": Bounded("the peripherals of the fleet's terminals, deleted with their terminal"),
    "job_lease": Bounded("one row per lease name; the server uses one (scheduled-jobs)"),
    "ingest_member": Bounded(
        "one row per live replica of the partitioned ingest; a graceful stop deletes its row,"
        " every heartbeat deletes rows expired for more than a TTL (server/membership.py)"
    ),
    "transition": Pruned(
        "transitions", "transition_retention_days", "recorded_at older than the retention"
    ),
    "event": Pruned("events", "event_retention_days", "received_at older than the retention"),
    "update_status": Pruned(
        "update statuses", "update_status_retention_days", "received_at older than the retention"
    ),
    "rollout": Pruned(
        "finished rollouts",
        "rollout_retention_days",
        "finished_at older than the retention; active rollouts never",
    ),
    "directive_seq": Pruned(
        "orphaned directive seqs",
        None,
        "once the terminal has neither a terminal row nor a terminal_registry row (so it lasts"
        " as long as a decommissioned id's tombstone)",
    ),
    "api_token": Pruned(
        "revoked or expired API tokens",
        "token_retention_days",
        "revoked_at or expires_at older than the retention; never the first token made (an"
        " empty table would make the next start bootstrap a new admin token)",
    ),
    "audit_entry": Pruned("audit entries", "audit_retention_days", "at older than the retention"),
    "terminal_registry": Pruned(
        "decommissioned terminals",
        "decommissioned_retention_days",
        "decommissioned rows (tombstones) whose updated_at is older than the retention; other"
        " rows are one per id an operator registered",
    ),
    "enrollment_token": Pruned(_SPENT, "identity_retention_days", "used or expired before that"),
    "device_certificate": Pruned(_SPENT, "identity_retention_days", "expired before that"),
    "console_session": Pruned(
        "console sessions past their expiry",
        None,
        "idle longer than console_session_idle_s or older than console_session_absolute_s"
        " (an ended session is dead already; the row goes at the next pruning)",
    ),
    "maintenance_window": Pruned(
        "ended maintenance windows and acknowledgements",
        "maintenance_retention_days",
        "windows whose until is older than the retention",
    ),
    "problem_ack": Pruned(
        "ended maintenance windows and acknowledgements",
        "maintenance_retention_days",
        "acknowledgements made (acked_at) longer ago than the retention",
    ),
    "usage_event": Pruned(
        "usage events", "usage_retention_days", "received_at older than the retention"
    ),
    "usage_hourly": Pruned(
        "usage rollups",
        "usage_rollup_retention_days",
        "hour_start older than the retention (meant to be longer than the raw events')",
    ),
    "usage_availability": Pruned(
        "usage rollups",
        "usage_rollup_retention_days",
        "hour_start older than the retention (meant to be longer than the raw events')",
    ),
    "usage_rollup_watermark": Bounded("one row per rollup (today one: usage_hourly)"),
    "service": Bounded(
        "the service catalogue an operator sets, replaced whole and capped in size"
        " (MAX_SERVICES, 200; server/service_catalogue.py)"
    ),
    "console_user": Bounded(
        "one row per person an admin created with `kioskfleet user create`; disabled users are"
        " kept so their audit entries keep a name"
    ),
    "hall_opening_hours": Bounded(
        "one row per hall an operator set hours for, at most opening_hours_max_halls (one more"
        " is refused); never pruned: the rows are an operator's configuration"
    ),
}


def retentions(settings: Settings, prunes: Mapping[str, Callable[..., int]]) -> list[Retention]:
    """The pruner's jobs: one per entry of ``prunes`` (job name: its prune function), kept
    as long as ``TABLE_RETENTIONS`` says. Raises KeyError for a job the list does not name."""
    rules = {r.job: r for r in TABLE_RETENTIONS.values() if isinstance(r, Pruned)}
    out = []
    for job, prune in prunes.items():
        setting = rules[job].setting
        days = 0.0 if setting is None else float(getattr(settings, setting))
        out.append(Retention(job, prune, timedelta(days=days)))
    return out

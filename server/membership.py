"""The live replicas in the database, and the hand-over of terminals between them
(docs/scale-out.md, "One writer per terminal on nats-server"; ``ingest_ownership =
"partition"`` only).

Table ``ingest_member(member, expires_at)`` (migration ``0016``): one row per live replica.
``IngestMembership.tick`` (every replica, every ``ingest_heartbeat_interval_s``) reads the
database's clock (``server.job_lease.database_now``: the one clock every replica judges
expiry by), renews this replica's row to that time plus the TTL, deletes rows expired for
more than a TTL (the table holds the live replicas and the recently dead only), reads the
live set, all in one transaction, and hands it to ``server.ownership.Ownership``. Then,
once the hand-over's grace is over, it reloads from the database the rows of the
terminals that became this replica's (``Storage.load_terminals``) into the fleet state and
trusts them (from then on this replica writes them). ``leave`` on a graceful stop deletes
the row.

Belief, as the job lease's: a replica whose heartbeats have not succeeded for a TTL (its
monotonic clock, from the sending of the last read that succeeded) believes itself out
of the set and writes nothing; the others drop it by then.

It never raises from ``tick``: a database error counts, is logged, and leaves the belief
to expire.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Final, Protocol

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Field

from server.errors import StorageError
from server.fleet_views import TerminalView
from server.job_lease import database_now
from server.ownership import Ownership
from server.storage import ServerTable, Storage, UtcDateTime
from server.stream_gaps import Gaps

__all__ = ["IngestMemberRow", "IngestMembership", "MembershipMetrics", "ReloadTarget"]

log = logging.getLogger(__name__)

_RELOAD_CHUNK: Final = 500  # terminals per reload query (one IN list each)


class IngestMemberRow(ServerTable, table=True):
    """One live replica of the partitioned ingest and until when it is live."""

    __tablename__ = "ingest_member"

    member: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    expires_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))


_MEMBER: Final = IngestMemberRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it


class ReloadTarget(Protocol):
    """Where reloaded rows go (``FleetState``), and which ids it knows."""

    def ids(self) -> list[str]: ...

    def reload(
        self, terminal_ids: Iterable[str], views: Iterable[TerminalView], gaps: Mapping[str, Gaps]
    ) -> None: ...


class MembershipMetrics:
    """``kioskfleet_ingest_members``, ``kioskfleet_ingest_owned_terminals``, errors, reloads."""

    def __init__(self, registry: CollectorRegistry, ownership: Ownership) -> None:
        self.members = Gauge(
            "kioskfleet_ingest_members",
            "Live replicas of the partitioned ingest as this process last read them"
            " (0 while it believes itself out of the set).",
            registry=registry,
        )
        self.owned = Gauge(
            "kioskfleet_ingest_owned_terminals",
            "Terminals this process writes and confirms (owned and reloaded since).",
            registry=registry,
        )
        self.owned.set_function(ownership.owned)
        self.epochs = Counter(
            "kioskfleet_ingest_epochs",
            "Changes of the live replica set this process saw (each one a hand-over).",
            registry=registry,
        )
        self.reloaded = Counter(
            "kioskfleet_ingest_reloaded_terminals",
            "Terminals whose row this process reloaded from the database on taking them over.",
            registry=registry,
        )
        self.errors = Counter(
            "kioskfleet_ingest_heartbeat_errors",
            "Membership heartbeats or reloads that failed on a database error.",
            registry=registry,
        )


class IngestMembership:
    """One replica's side of the membership table. ``tick`` and ``leave`` from one thread
    at a time (the scheduler's)."""

    def __init__(
        self,
        storage: Storage,
        ownership: Ownership,
        fleet: ReloadTarget,
        metrics: MembershipMetrics,
        *,
        ttl: timedelta,
        applying: Callable[[], AbstractContextManager[object]],
        database_clock: Callable[[Connection], datetime] = database_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``applying``: the batched writer's intake lock (``WriteBehind.applying``), held
        for every change of ``ownership`` and for the swap of reloaded rows."""
        self._storage = storage
        self._ownership = ownership
        self._fleet = fleet
        self._metrics = metrics
        self._ttl = ttl
        self._applying = applying
        self._database_clock = database_clock
        self._monotonic = monotonic
        self._believed_until = -1.0  # monotonic: the last good read's sending plus the TTL
        self._failing = False  # a heartbeat failed and none succeeded since (logged once)

    @property
    def member(self) -> str:
        return self._ownership.me

    def tick(self) -> frozenset[str]:
        """Heartbeat, read the live set, hand terminals over. Returns the set believed."""
        sent = self._monotonic()
        try:
            members = self._heartbeat()
        except StorageError as exc:
            self._metrics.errors.inc()
            if not self._failing:  # once per outage; the counter counts every one
                log.warning("ingest membership heartbeat failed (retrying): %s", exc)
            self._failing = True
            if self._monotonic() >= self._believed_until:
                self._set(frozenset())
            return self._ownership.members
        if self._failing:
            log.info("ingest membership heartbeat succeeds again")
            self._failing = False
        self._believed_until = sent + self._ttl.total_seconds()
        self._set(members)
        try:
            self._reload()
        except StorageError as exc:  # the next tick hands them out again
            self._metrics.errors.inc()
            log.warning("reloading taken-over terminals failed: %s", exc)
        return self._ownership.members

    def leave(self) -> None:
        """Delete this replica's row (a graceful stop); the others take its terminals at
        their next heartbeat. A database error is logged: the row then expires."""
        self._set(frozenset())
        try:
            with self._storage.begin("leave ingest membership", fenced=False) as conn:
                conn.execute(sa.delete(_MEMBER).where(_MEMBER.c.member == self.member))
        except StorageError as exc:
            log.warning("ingest membership not left, it will expire: %s", exc)
        else:
            log.info("left the ingest membership as %s", self.member)

    # --- internals ------------------------------------------------------------------------

    def _set(self, members: frozenset[str]) -> None:
        with self._applying():
            changed = self._ownership.update(members)
        self._metrics.members.set(len(self._ownership.members))
        if changed:
            self._metrics.epochs.inc()
            log.info(
                "ingest epoch %d: %d live replicas%s",
                self._ownership.epoch,
                len(self._ownership.members),
                "" if self._ownership.members else " (this one believes itself out)",
            )

    def _heartbeat(self) -> frozenset[str]:
        """Renew this replica's row, drop long-expired ones and read the live set, in one
        transaction on the database's clock. Raises StorageError."""
        with self._storage.begin("ingest membership heartbeat", fenced=False) as conn:
            now = self._database_clock(conn)
            insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
            until = now + self._ttl
            stmt = insert(_MEMBER).values(member=self.member, expires_at=until)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[_MEMBER.c.member], set_={"expires_at": until}
                )
            )
            conn.execute(sa.delete(_MEMBER).where(_MEMBER.c.expires_at <= now - self._ttl))
            live = conn.execute(sa.select(_MEMBER.c.member).where(_MEMBER.c.expires_at > now))
            return frozenset(str(m) for m in live.scalars())

    def _reload(self) -> None:
        """The rows of the terminals this replica took over, from the database into the
        fleet state, chunk by chunk; each chunk trusted only if the epoch did not change
        meanwhile. Raises StorageError (what is not reloaded is handed out again)."""
        with self._applying():
            candidates, epoch = self._ownership.take_candidates(self._fleet.ids)
        ids = self._ownership.own_untrusted(candidates, epoch)  # the hashing: outside the lock
        for start in range(0, len(ids), _RELOAD_CHUNK):
            chunk = ids[start : start + _RELOAD_CHUNK]
            views, gaps = self._storage.load_terminals(chunk)  # nobody writes them: the grace
            with self._applying():
                if self._ownership.epoch != epoch:
                    return
                self._fleet.reload(chunk, views, gaps)
                self._ownership.trust(chunk, epoch)
            self._metrics.reloaded.inc(len(chunk))
        if ids:
            log.info("took over %d terminals (ingest epoch %d)", len(ids), epoch)

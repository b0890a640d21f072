"""The database lease under which scheduled jobs run once per fleet (docs/scale-out.md).

Table ``job_lease`` (migration ``0013``): one row per lease, ``(name, holder, expires_at,
token)``. ``token`` is the fencing token: it grows by one at every takeover, never at a
renewal.

- The pure core: ``decide`` (the row as read, this replica's id, the database's clock and
  the lease duration in; take over, renew or stand by out) and ``cas_applies`` (would the
  compare-and-set write of an ``Attempt`` succeed against a row): the SQL ``UPDATE`` of
  ``JobLease`` has exactly that predicate as its ``WHERE``, so no two replicas that read
  the same row both win.
- ``JobLease``, the adapter: ``tick()`` reads the database's clock and the row, decides and
  writes (every replica calls it on a schedule): expiry is judged by the one clock of the
  database (``database_now``), never by the replicas' own, which may disagree. ``held()``
  is this replica's belief: it ends one lease duration after the moment, on this process's
  monotonic clock, it sent the read whose time the row's ``expires_at`` was computed from,
  so it never outlives the row. ``release()`` on a graceful stop; ``guard(job)`` wraps a
  scheduled job to run only while held, under the holding's fence (``server.lease_fence``:
  its database writes apply only while the row keeps that token; refused ones are counted).

It never raises from ``tick`` or a guarded job's skip: a database error counts, is
logged, and leaves the belief to expire.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.engine import Connection
from sqlmodel import Field

from server.errors import StorageError
from server.lease_fence import Fence, fencing
from server.storage import ServerTable, Storage, UtcDateTime

__all__ = [
    "FLEET_JOBS_LEASE",
    "Action",
    "Attempt",
    "JobLease",
    "JobLeaseRow",
    "LeaseRow",
    "cas_applies",
    "database_now",
    "decide",
]

log = logging.getLogger(__name__)

FLEET_JOBS_LEASE: Final = "scheduled-jobs"
"""The one lease of every job that must run once per fleet."""

_T = TypeVar("_T")


class JobLeaseRow(ServerTable, table=True):
    """Who holds one lease, until when, and the fencing token of that holding."""

    __tablename__ = "job_lease"

    name: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    holder: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    expires_at: datetime | None = Field(default=None, sa_column=sa.Column(UtcDateTime()))
    token: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


_LEASE: Final = JobLeaseRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it


# --- pure core ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """The lease row as read (``holder`` and ``expires_at`` None once released)."""

    holder: str | None
    expires_at: datetime | None
    token: int

    def live(self, now: datetime) -> bool:
        """Someone holds it and it has not expired at ``now``."""
        return self.holder is not None and self.expires_at is not None and now < self.expires_at


class Action(enum.Enum):
    CREATE = "create"  # no row yet: insert one with token 1
    TAKE_OVER = "take over"  # free or expired: token + 1
    RENEW = "renew"  # mine and live: same token, later expiry
    STAND_BY = "stand by"  # someone else's and live


@dataclass(frozen=True, slots=True)
class Attempt:
    """What a replica writes and the row it read (what the compare-and-set checks)."""

    action: Action
    read: LeaseRow | None
    holder: str
    now: datetime
    expires_at: datetime

    @property
    def token(self) -> int:
        """The token the row holds once this attempt succeeded."""
        if self.read is None:
            return 1
        return self.read.token + 1 if self.action is Action.TAKE_OVER else self.read.token

    def written(self) -> LeaseRow:
        return LeaseRow(self.holder, self.expires_at, self.token)


def decide(row: LeaseRow | None, me: str, now: datetime, duration: timedelta) -> Attempt:
    """What replica ``me`` does at ``now`` (the database's clock) having read ``row``."""
    until = now + duration
    if row is None:
        return Attempt(Action.CREATE, None, me, now, until)
    if row.live(now):
        action = Action.RENEW if row.holder == me else Action.STAND_BY
        return Attempt(action, row, me, now, until)
    return Attempt(Action.TAKE_OVER, row, me, now, until)


def cas_applies(current: LeaseRow | None, attempt: Attempt) -> bool:
    """Whether ``attempt``'s write succeeds against the row as it is now (``current``).

    The same predicate as ``JobLease``'s SQL: a create needs no row, a takeover the token
    read and a row free or expired at the attempt's clock, a renewal the row still this
    replica's, with the token read and not expired."""
    if attempt.action is Action.STAND_BY:
        return False
    if attempt.action is Action.CREATE:
        return current is None
    if current is None or attempt.read is None:
        return False
    if current.token != attempt.read.token:
        return False
    if attempt.action is Action.TAKE_OVER:
        return not current.live(attempt.now)
    return current.holder == attempt.holder and current.live(attempt.now)


# --- adapter --------------------------------------------------------------------------------


class LeaseMetrics:
    """``kioskfleet_job_lease_holder`` (0/1), ``..._token`` and ``..._takeovers_total``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.holder = Gauge(
            "kioskfleet_job_lease_holder",
            "1 while this process holds the scheduled-jobs lease (runs the fleet's jobs).",
            registry=registry,
        )
        self.token = Gauge(
            "kioskfleet_job_lease_token",
            "The fencing token of this process's holding of the lease (0 before any).",
            registry=registry,
        )
        self.takeovers = Counter(
            "kioskfleet_job_lease_takeovers",
            "Times this process took the lease (free, released or expired).",
            registry=registry,
        )
        self.errors = Counter(
            "kioskfleet_job_lease_errors",
            "Lease ticks that failed on a database error.",
            registry=registry,
        )
        self.runs = Counter(
            "kioskfleet_fleet_job_runs",
            "Runs of a once-per-fleet job by this process (only while it holds the lease).",
            ["job"],
            registry=registry,
        )
        self.fenced = Counter(
            "kioskfleet_job_lease_fenced_writes",
            "Writes of a once-per-fleet job refused because another process took the lease"
            " over during the run (the fencing token moved on); nothing of them was written.",
            ["job"],
            registry=registry,
        )


def database_now(conn: Connection) -> datetime:
    """The database server's clock, an aware UTC datetime: the one clock every replica
    judges the lease's expiry by. SQLite's ``CURRENT_TIMESTAMP`` has whole seconds only,
    so its ``strftime('%f')`` (milliseconds, UTC); PostgreSQL's ``statement_timestamp()``
    (a ``timestamptz``; ``now()`` would be the transaction's start). Raises SQLAlchemyError
    (the caller translates)."""
    if conn.dialect.name == "sqlite":
        text = conn.execute(sa.select(sa.func.strftime("%Y-%m-%d %H:%M:%f", "now"))).scalar_one()
        return datetime.fromisoformat(str(text)).replace(tzinfo=UTC)
    value = conn.execute(sa.select(sa.func.statement_timestamp())).scalar_one()
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise StorageError("read the database clock", f"not an aware timestamp: {value!r}")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class _Belief:
    """What this replica last wrote successfully, and until when (its monotonic clock) it
    believes it: one lease duration after it sent the read the row's expiry came from."""

    token: int
    until: float


class JobLease:
    """One replica's side of one lease. ``tick`` and ``release`` from one thread at a time
    (the scheduler's); ``held`` from any."""

    def __init__(
        self,
        storage: Storage,
        holder: str,
        metrics: LeaseMetrics,
        *,
        duration: timedelta,
        name: str = FLEET_JOBS_LEASE,
        on_acquired: Callable[[], object] | None = None,
        database_clock: Callable[[Connection], datetime] = database_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_acquired``: called when this replica comes to hold the lease, before its
        belief (so before any guarded job runs); a StorageError from it leaves the lease
        unbelieved until a later tick calls it again. ``database_clock``: the time of the
        database (a fake in tests); ``monotonic``: this process's clock for its belief."""
        self._storage = storage
        self._holder = holder
        self._metrics = metrics
        self._duration = duration
        self._name = name
        self._database_clock = database_clock
        self._monotonic = monotonic
        self._on_acquired = on_acquired
        self._held: _Belief | None = None
        self._fenced_lock = threading.Lock()
        self._fenced_logged: dict[str, int] = {}  # job: the last token a refusal was logged at

    @property
    def holder(self) -> str:
        return self._holder

    def held(self) -> bool:
        """This replica believes it holds the lease now."""
        return self._believed(self._held, self._monotonic())

    @property
    def token(self) -> int | None:
        """The fencing token of the current holding, None when not held."""
        mine = self._held
        return mine.token if mine is not None and self._believed(mine, self._monotonic()) else None

    def tick(self) -> Action:
        """Read, decide, write. Returns what it decided (STAND_BY also when it lost a race
        or the database failed)."""
        sent = self._monotonic()  # before the read: the row's expiry is later than its end
        try:
            row, now = self._read()
            attempt = decide(row, self._holder, now, self._duration)
            won = attempt.action is not Action.STAND_BY and self._write(attempt)
        except StorageError as exc:
            self._metrics.errors.inc()
            log.warning("job lease %s not renewed: %s", self._name, exc)
            self._publish()
            return Action.STAND_BY
        if not won:  # someone else holds it, or wrote first: believing nothing is safe
            if self._held is not None:
                log.warning("job lease %s lost (token %d)", self._name, self._held.token)
            self._held = None
            self._publish()
            return Action.STAND_BY
        before = self._held
        if not self._believed(before, sent) and self._on_acquired is not None:
            try:
                self._on_acquired()
            except StorageError as exc:
                self._metrics.errors.inc()
                log.warning("job lease %s held, not yet taken up: %s", self._name, exc)
                self._held = None
                self._publish()
                return Action.STAND_BY
        self._held = _Belief(attempt.token, sent + self._duration.total_seconds())
        if attempt.action in (Action.CREATE, Action.TAKE_OVER):
            self._metrics.takeovers.inc()
            log.info(
                "job lease %s taken by %s (fencing token %d, was %s)",
                self._name,
                self._holder,
                attempt.token,
                "free" if attempt.read is None else attempt.read.holder or "released",
            )
        elif before is None:
            log.info("job lease %s held again (token %d)", self._name, attempt.token)
        self._publish()
        return attempt.action

    def release(self) -> None:
        """Give the lease up at once (a graceful stop): a standby takes it at its next tick.
        A database error is logged; the lease then expires by itself."""
        mine, self._held = self._held, None
        self._publish()
        if mine is None:
            return
        stmt = (
            sa.update(_LEASE)
            .where(
                _LEASE.c.name == self._name,
                _LEASE.c.holder == self._holder,
                _LEASE.c.token == mine.token,
            )
            .values(holder=None, expires_at=None)
        )
        try:
            with self._storage.begin("release job lease") as conn:
                conn.execute(stmt)
        except StorageError as exc:
            log.warning("job lease %s not released, it will expire: %s", self._name, exc)
        else:
            log.info("job lease %s released (token %d)", self._name, mine.token)

    def guard(self, job: str, run: Callable[[], _T]) -> Callable[[], _T | None]:
        """``run`` as a scheduled job that runs only while this replica holds the lease,
        under the fence of that holding (``server.lease_fence``): once another replica took
        the lease over, the run's writes are refused, counted and write nothing."""
        runs = self._metrics.runs.labels(job)  # both exported at 0 from the start
        self._metrics.fenced.labels(job)

        def guarded() -> _T | None:
            token = self.token
            if token is None:
                return None
            runs.inc()

            def still_at(conn: Connection) -> bool:
                return self._still_at(conn, token)

            fence = Fence(self._name, token, job, still_at, self._refused, self._read_token)
            with fencing(fence):
                return run()

        guarded.__name__ = f"leased_{job}"
        return guarded

    # --- internals ------------------------------------------------------------------------

    @staticmethod
    def _believed(mine: _Belief | None, at: float) -> bool:
        return mine is not None and at < mine.until

    def _refused(self, fence: Fence, operation: str) -> None:
        """A write of a run under ``fence`` refused: counted; logged once per job and token."""
        self._metrics.fenced.labels(fence.job).inc()
        with self._fenced_lock:
            first = self._fenced_logged.get(fence.job) != fence.token
            self._fenced_logged[fence.job] = fence.token
        if first:
            log.warning(
                "job %s fenced off: %s refused, job lease %s no longer at token %d"
                " (another replica took it over); further refusals are counted only",
                fence.job,
                operation,
                self._name,
                fence.token,
            )

    def _still_at(self, conn: Connection, token: int) -> bool:
        """The fencing check in ``conn``'s transaction: an ``UPDATE`` that changes nothing
        and matches only while the row is at ``token``; it holds the row (PostgreSQL) or
        the write lock (SQLite) until that transaction ends. Raises SQLAlchemyError."""
        stmt = (
            sa.update(_LEASE)
            .where(_LEASE.c.name == self._name, _LEASE.c.token == token)
            .values(token=_LEASE.c.token)
        )
        return bool(conn.execute(stmt).rowcount == 1)

    def _read_token(self) -> int | None:
        """The row's token now (the TUF re-signing's check). Raises StorageError."""
        stmt = sa.select(_LEASE.c.token).where(_LEASE.c.name == self._name)
        with self._storage.connect("read job lease token") as conn:
            found = conn.execute(stmt).scalar_one_or_none()
        return None if found is None else int(found)

    def _publish(self) -> None:
        """The gauges as this replica believes (0 once a belief the database did not renew
        expired: the next tick after a failed one says so)."""
        mine = self._held
        held = self._believed(mine, self._monotonic())
        self._metrics.holder.set(1 if held else 0)
        if mine is not None and held:
            self._metrics.token.set(mine.token)

    def _read(self) -> tuple[LeaseRow | None, datetime]:
        """The row and the database's clock, read on one connection (the clock first)."""
        stmt = sa.select(_LEASE.c.holder, _LEASE.c.expires_at, _LEASE.c.token).where(
            _LEASE.c.name == self._name
        )
        with self._storage.connect("read job lease") as conn:
            now = self._database_clock(conn)
            found = conn.execute(stmt).first()
        if found is None:
            return None, now
        return LeaseRow(found.holder, found.expires_at, int(found.token)), now

    def _write(self, attempt: Attempt) -> bool:
        """The compare-and-set of ``cas_applies`` in SQL; True when it won."""
        values: dict[str, object] = {"holder": attempt.holder, "expires_at": attempt.expires_at}
        if attempt.action is Action.CREATE:
            try:
                with self._storage.begin("create job lease") as conn:
                    conn.execute(sa.insert(_LEASE).values(name=self._name, token=1, **values))
            except StorageError:
                return False  # another replica created it first (or the database failed)
            return True
        assert attempt.read is not None
        where = [_LEASE.c.name == self._name, _LEASE.c.token == attempt.read.token]
        if attempt.action is Action.TAKE_OVER:  # free or expired (NULLs are free)
            where.append(
                sa.or_(
                    _LEASE.c.holder.is_(None),
                    _LEASE.c.expires_at.is_(None),
                    _LEASE.c.expires_at <= attempt.now,
                )
            )
            values["token"] = attempt.token
        else:
            where += [_LEASE.c.holder == attempt.holder, _LEASE.c.expires_at > attempt.now]
        with self._storage.begin("write job lease") as conn:
            result = conn.execute(sa.update(_LEASE).where(*where).values(**values))
        return bool(result.rowcount == 1)

"""The job lease's fencing token in the jobs' own writes (docs/scale-out.md, "Fencing").

A run of a once-per-fleet job starts under one holding of the job lease: ``JobLease.guard``
makes a ``Fence`` (the lease's name, that holding's token, the job) and runs the job inside
``fencing(fence)``. Every transaction the run begins through ``Storage.begin`` (and the
registry's prunes, which begin their own) starts with ``Fence.check``: an
``UPDATE job_lease SET token = token WHERE name = :lease AND token = :token`` that changes
nothing. It matches no row once another replica took the lease over (the token moved on):
``FencedOffError``, the transaction rolls back, nothing of it is written. When it matches,
it holds the lease row's lock (PostgreSQL) or the database's write lock (SQLite) until the
commit, so a takeover's compare-and-set waits for that write to end: a fenced write lands
before the takeover or not at all.

Two writes take the fence explicitly, because they do not happen in the run's transactions:
the offline sweep's transitions are written later by the batched writer
(``server.write_behind`` keeps the fence beside them; ``Storage.write`` calls
``Fence.holds`` in the batch's transaction and leaves out the transitions of a fence that no
longer holds, the rest of the batch is written), and the TUF re-signing, which replaces
files, not rows, calls ``Fence.recheck`` right before it writes them (a residual window
remains from that read to the ``os.replace``, documented in docs/scale-out.md).

A refused write is reported to ``Fence.refused`` (the lease counts it,
``kioskfleet_job_lease_fenced_writes_total{job}``, and logs it once per job and holding).

The current fence is a context variable, set by ``fencing`` for one run only, so a thread
of the scheduler's pool carries it for the job it runs and never for the next. The SQL is
the lease's (``JobLease`` hands each fence its check): this module loads no database
library, so the batched writer, a pure core, may keep fences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from server.errors import FencedOffError

if TYPE_CHECKING:  # a type only: no database library is loaded here
    from sqlalchemy.engine import Connection

__all__ = ["Fence", "check_current", "current_fence", "fencing"]

_CURRENT: Final[ContextVar[Fence | None]] = ContextVar("kioskfleet_lease_fence", default=None)


@dataclass(frozen=True, slots=True)
class Fence:
    """One job run's holding of a lease: its writes apply only while the lease row still
    carries ``token``.

    ``still_at(conn)``: the lease's SQL check in ``conn``'s transaction (the no-op
    ``UPDATE`` above); ``refused(fence, operation)`` is told of every refused write;
    ``read_token()`` reads the row's token now (None without a row; raises StorageError)."""

    lease: str
    token: int
    job: str
    still_at: Callable[[Connection], bool] = field(compare=False, repr=False)
    refused: Callable[[Fence, str], None] = field(compare=False, repr=False)
    read_token: Callable[[], int | None] = field(compare=False, repr=False)

    def holds(self, conn: Connection) -> bool:
        """Whether the lease is still at this token, in ``conn``'s transaction, whose
        commit the lease row then waits for. Raises SQLAlchemyError (the caller translates)."""
        return self.still_at(conn)

    def check(self, conn: Connection, operation: str) -> None:
        """``holds`` or raise FencedOffError (reported to ``refused``)."""
        if not self.holds(conn):
            raise self.refuse(operation)

    def recheck(self, operation: str) -> None:
        """For a write that is no row: raise FencedOffError (reported) unless the lease row
        is still at this token now. Raises StorageError when it cannot be read."""
        if self.read_token() != self.token:
            raise self.refuse(operation)

    def refuse(self, operation: str) -> FencedOffError:
        """Report a refused ``operation``; the error to raise for it."""
        self.refused(self, operation)
        return FencedOffError(operation, self.lease, self.token)


def current_fence() -> Fence | None:
    """The fence of the job run this code runs in, None outside one (an API request, the
    ingest, the lease's own ticks)."""
    return _CURRENT.get()


@contextmanager
def fencing(fence: Fence) -> Iterator[Fence]:
    """Run the block as a run under ``fence``."""
    reset = _CURRENT.set(fence)
    try:
        yield fence
    finally:
        _CURRENT.reset(reset)


def check_current(conn: Connection, operation: str) -> None:
    """At the start of a transaction: ``Fence.check`` of the current fence, if any. Raises
    FencedOffError; SQLAlchemyError (the caller translates)."""
    fence = _CURRENT.get()
    if fence is not None:
        fence.check(conn, operation)

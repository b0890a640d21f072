"""The audit log's entry and port: who did what to what, when, from where, with which result.

Every state-changing API call, every enrollment, renewal and revocation and
every token change is recorded as one ``AuditEntry`` through an ``AuditSink``.
The sink is the only way in: nothing reads an entry back to change it, and the
API offers no route that edits or deletes one. ``MemoryAudit`` is the fake the
unit tests use; the durable sink stores entries in the database (its table has
a retention). Pure: no I/O here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from server.token_buckets import TokenBuckets

__all__ = ["AuditEntry", "AuditResult", "AuditSink", "DeniedBudget", "MemoryAudit"]


class AuditResult(StrEnum):
    OK = "ok"  # done
    DENIED = "denied"  # refused: no or wrong credentials, role, token, key
    FAILED = "failed"  # allowed but it could not be done (invalid input, conflict, error)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action.

    ``actor`` names who acted: ``token:<name>`` for an API token, ``terminal:<id>`` for a
    terminal (enrollment, renewal), ``anonymous`` when no credential was presented,
    ``system`` for the server itself (bootstrap, scheduled jobs). ``action`` is a dotted
    verb (``terminal.preauthorize``, ``est.simpleenroll``, ``token.create``...);
    ``target`` what it acted on (a terminal id, a token name); ``source`` the client
    address when there is one. ``detail`` holds short, non-secret strings only: never a
    token, key or password.
    """

    at: datetime
    actor: str
    action: str
    result: AuditResult
    target: str | None = None
    source: str | None = None
    role: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)


class AuditSink(Protocol):
    """Where audit entries go. ``record`` must not raise for a valid entry (a sink that
    cannot store says so through its own health, never by failing the action)."""

    def record(self, entry: AuditEntry) -> None: ...


class MemoryAudit:
    """An in-memory sink for tests: ``entries`` in the order recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    @property
    def entries(self) -> list[AuditEntry]:
        with self._lock:
            return list(self._entries)


class DeniedBudget:
    """An ``AuditSink`` in front of another that stores refused attempts (``denied``) only
    within a budget per source address (``server.token_buckets``: ``burst`` entries refilled
    at ``rate_per_s``, at most ``max_sources`` addresses remembered). Beyond it a denied
    entry is not stored but counted by ``on_suppressed`` (a metric), so that nobody without
    credentials can grow the audit table at network speed. Entries that are ``ok`` or
    ``failed`` (made with valid credentials) always pass.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float],
        on_suppressed: Callable[[], None] = lambda: None,
        max_sources: int = 10_000,
    ) -> None:
        """Raises ValueError for a rate, burst or source count that is not positive."""
        self._sink = sink
        self._on_suppressed = on_suppressed
        self._lock = threading.Lock()
        self._buckets = TokenBuckets(
            rate_per_s=rate_per_s, burst=burst, clock=clock, max_keys=max_sources
        )

    def record(self, entry: AuditEntry) -> None:
        if entry.result is AuditResult.DENIED:
            with self._lock:
                admitted = self._buckets.take(entry.source or "-")
            if not admitted:
                self._on_suppressed()
                return
        self._sink.record(entry)

"""The install gate: may an install start now, may a citizen session start now (pure, thread-safe).

The kiosk application tells the agent (through ``agent.kiosk_interface``) when a
citizen session starts and ends and may ask to defer an install; the updater asks
this gate before it installs. The rules, and nothing else, live here: no socket,
no file, no sleep; time comes from an injected ``agent.clock.Clock`` (monotonic
readings only), so tests drive it with ``FakeClock``.

Rules:

- ``try_begin_install()`` returns True and marks an install running only when no
  session is open, no deferral holds and no install runs already; otherwise False
  (the updater waits and asks again). ``end_install()`` ends it; calling it with
  no install running raises ``InstallNotStartedError``.
- ``session_start()`` during an install raises ``GateRefusedError`` with reason
  ``Refusal.INSTALLING``: the application must not start the session. At most
  ``limits.max_open_sessions`` sessions are open at once (``TOO_MANY_SESSIONS``).
  It returns a random session token that ``session_end(token)`` names; an
  unknown or expired token is ``UNKNOWN_SESSION``.
- A session never ended expires ``limits.max_session_s`` after it started (a
  crashed application cannot block updates forever): it is dropped at the next
  call of any method, counted in ``counters()["sessions_expired"]`` and logged as
  a warning.
- ``defer_install(seconds)``: ``0 < seconds <= limits.max_defer_s``, otherwise
  ``DEFER_OUT_OF_BOUNDS``; during an install ``INSTALLING``. A deferral holds
  until ``now + seconds``; a later, shorter request never shortens an earlier one.

Public interface: ``InstallGate(clock, limits)`` with ``try_begin_install``,
``end_install``, ``session_start``, ``session_end``, ``defer_install``,
``status`` (a frozen ``GateStatus``) and ``counters``; ``GateLimits``;
``Refusal`` (the reason codes, also the ``error`` field of the socket's answers);
``GateRefusedError``, ``InstallNotStartedError``. All methods take one lock, so
the socket's connection threads and the updater's thread may call them at once.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from enum import StrEnum

from agent.clock import Clock
from agent.errors import AgentError

__all__ = [
    "GateLimits",
    "GateRefusedError",
    "GateStatus",
    "InstallGate",
    "InstallNotStartedError",
    "Refusal",
]

log = logging.getLogger(__name__)


class Refusal(StrEnum):
    """Why the gate refused a kiosk application's request."""

    INSTALLING = "installing"
    TOO_MANY_SESSIONS = "too_many_sessions"
    UNKNOWN_SESSION = "unknown_session"
    DEFER_OUT_OF_BOUNDS = "defer_out_of_bounds"


class GateRefusedError(AgentError):
    """The gate refused a request of the kiosk application; ``.reason`` is a ``Refusal``."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InstallNotStartedError(AgentError):
    """``end_install()`` was called while no install runs (a bug in the caller)."""


@dataclass(frozen=True)
class GateLimits:
    """Bounds of the gate: a session's lifetime, a deferral's length, open sessions."""

    max_session_s: float = 3600.0
    max_defer_s: float = 3600.0
    max_open_sessions: int = 4

    def __post_init__(self) -> None:
        if self.max_session_s <= 0 or self.max_defer_s <= 0 or self.max_open_sessions < 1:
            raise ValueError(f"gate limits must be positive: {self}")


@dataclass(frozen=True)
class GateStatus:
    """What the gate holds right now."""

    installing: bool
    open_sessions: int
    deferred_for_s: float


class InstallGate:
    """Sessions, deferrals and the running install of one terminal, behind one lock."""

    def __init__(self, clock: Clock, limits: GateLimits | None = None) -> None:
        self._clock = clock
        self._limits = limits or GateLimits()
        self._lock = threading.Lock()
        self._sessions: dict[str, float] = {}  # token -> monotonic start
        self._deferred_until = float("-inf")
        self._installing = False
        self._counters = {
            "sessions_started": 0,
            "sessions_ended": 0,
            "sessions_expired": 0,
            "sessions_refused_installing": 0,
            "deferrals": 0,
            "installs_begun": 0,
            "installs_held": 0,
        }

    @property
    def limits(self) -> GateLimits:
        return self._limits

    def try_begin_install(self) -> bool:
        """Start an install if nothing holds it back; False while a session, deferral or install holds."""
        with self._lock:
            now = self._expire()
            if self._installing or self._sessions or now < self._deferred_until:
                self._counters["installs_held"] += 1
                return False
            self._installing = True
            self._counters["installs_begun"] += 1
            return True

    def end_install(self) -> None:
        """End the running install. Raises ``InstallNotStartedError`` if none runs."""
        with self._lock:
            if not self._installing:
                raise InstallNotStartedError("end_install() without a running install")
            self._installing = False

    def session_start(self) -> str:
        """Open a citizen session and return its token.

        Raises ``GateRefusedError`` (``INSTALLING`` during an install,
        ``TOO_MANY_SESSIONS`` at the cap).
        """
        with self._lock:
            self._expire()
            if self._installing:
                self._counters["sessions_refused_installing"] += 1
                raise GateRefusedError(
                    Refusal.INSTALLING, "an install is running: do not start a session"
                )
            if len(self._sessions) >= self._limits.max_open_sessions:
                raise GateRefusedError(
                    Refusal.TOO_MANY_SESSIONS,
                    f"{self._limits.max_open_sessions} sessions are open already",
                )
            token = secrets.token_hex(8)
            self._sessions[token] = self._clock.monotonic()
            self._counters["sessions_started"] += 1
            return token

    def session_end(self, token: str) -> None:
        """Close a session. Raises ``GateRefusedError`` (``UNKNOWN_SESSION``) for an unknown or expired token."""
        with self._lock:
            self._expire()
            if self._sessions.pop(token, None) is None:
                raise GateRefusedError(Refusal.UNKNOWN_SESSION, "no open session has this token")
            self._counters["sessions_ended"] += 1

    def defer_install(self, seconds: float) -> float:
        """Hold installs for ``seconds``; returns how long installs are held from now.

        Raises ``GateRefusedError`` (``DEFER_OUT_OF_BOUNDS``, ``INSTALLING``).
        """
        with self._lock:
            now = self._expire()
            if not 0 < seconds <= self._limits.max_defer_s:
                raise GateRefusedError(
                    Refusal.DEFER_OUT_OF_BOUNDS,
                    f"seconds must be > 0 and <= {self._limits.max_defer_s:g}",
                )
            if self._installing:
                raise GateRefusedError(Refusal.INSTALLING, "an install is running already")
            self._deferred_until = max(self._deferred_until, now + seconds)
            self._counters["deferrals"] += 1
            return self._deferred_until - now

    def status(self) -> GateStatus:
        with self._lock:
            now = self._expire()
            return GateStatus(
                installing=self._installing,
                open_sessions=len(self._sessions),
                deferred_for_s=max(0.0, self._deferred_until - now),
            )

    def counters(self) -> dict[str, int]:
        """A snapshot of the gate's counters (for logs and, later, metrics)."""
        with self._lock:
            self._expire()
            return dict(self._counters)

    def _expire(self) -> float:
        """Drop sessions older than ``max_session_s``; returns now. Caller holds the lock."""
        now = self._clock.monotonic()
        expired = [
            t for t, start in self._sessions.items() if now - start >= self._limits.max_session_s
        ]
        for token in expired:
            del self._sessions[token]
            self._counters["sessions_expired"] += 1
            log.warning(
                "kiosk session expired after %.0f s without session_end: installs are no longer held by it",
                self._limits.max_session_s,
            )
        return now

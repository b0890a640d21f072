"""The kiosk application's local interface: a Unix socket speaking line-delimited JSON.

A ``transaction`` request (a finished citizen transaction, ``protocol.usage.UsageBody``'s
fields) is handed to ``on_transaction``, which the agent sends as a ``kf.usage`` message.

The kiosk application (on the same machine) connects to ``config.path`` and sends
one JSON object per line; every line gets exactly one JSON answer line. The
requests and answers are documented in docs/kiosk-app.md; the rules behind them
live in ``agent.install_gate`` (this module only translates lines to gate calls
and back). The interface is never reachable from the network: it is a
filesystem socket, ``0660``, owned by ``config.group`` when one is given, so only
the agent's user and that group's members can connect.

Bounds (``KioskInterfaceConfig``): a line longer than ``max_line_bytes`` gets a
``too_large`` answer and the connection is closed (the rest of such a line cannot
be trusted to resynchronise); more than ``max_connections`` at once get a
``busy`` answer and are closed; a connection silent for ``idle_timeout_s`` is
closed. Malformed JSON, an unknown request or a bad field gets an error answer and
the connection stays open. Each refusal is counted (``counters()``) and logged;
no input crashes the server.

Binding: the socket is bound under a temporary name in the same directory, given
its mode and group, then renamed onto ``config.path``, and only then listens, so
the final path never exists with other permissions and nobody can connect before. An existing socket at the path that still answers
(another agent) or an existing non-socket file is refused with
``KioskSocketError``; a stale socket (nothing listening) is replaced.

Public interface: ``KioskInterface(gate, config)`` with ``start()`` (binds and
serves in daemon threads; raises ``KioskSocketError``), ``close()`` (stops, closes
connections, removes the socket), ``counters()`` (``connections_accepted``,
``connections_refused_busy``, ``connections_idle_closed``, ``accept_errors``,
``requests``, ``transactions``, ``rejected_<code>`` per other ``ErrorCode``);
``KioskInterfaceConfig``;
``ErrorCode`` (the ``error`` values that are not a gate ``Refusal``);
``KioskSocketError``. Never imports paho and never opens a network socket.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.errors import AgentError
from agent.install_gate import GateRefusedError, InstallGate
from protocol.usage import UsageBody

__all__ = ["ErrorCode", "KioskInterface", "KioskInterfaceConfig", "KioskSocketError"]

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
_ACCEPT_ERROR_PAUSE_S = 0.1
_PROBE_TIMEOUT_S = 1.0
_DRAIN_CHUNKS = 16  # at most 1 MiB of unread input discarded before a refusal closes


class ErrorCode(StrEnum):
    """``error`` values of an answer that the socket layer gives (the gate's are ``Refusal``)."""

    MALFORMED = "malformed"  # not a UTF-8 JSON object
    BAD_REQUEST = "bad_request"  # unknown request or a field of the wrong shape
    TOO_LARGE = "too_large"  # the line exceeds max_line_bytes; the connection is closed
    BUSY = "busy"  # max_connections are open; the connection is closed
    NOT_RECORDING = "not_recording"  # a transaction, but this agent sends no usage events
    NOT_STORED = "not_stored"  # a valid transaction the agent could not store: send it again


class KioskSocketError(AgentError):
    """The socket cannot be set up at ``.path``; ``.reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"kiosk interface socket {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class KioskInterfaceConfig:
    """Where the socket lives, who may connect, and the bounds of one connection."""

    path: Path
    group: str | None = None  # owner group of the socket; None keeps the agent's own
    max_line_bytes: int = 4096
    max_connections: int = 8
    idle_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_line_bytes < 64 or self.max_connections < 1 or self.idle_timeout_s <= 0:
            raise ValueError(f"kiosk interface bounds must be positive: {self}")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _SessionStart(_Request):
    request: Literal["session_start"]


class _SessionEnd(_Request):
    request: Literal["session_end"]
    session: Annotated[str, Field(min_length=1, max_length=64)]


class _DeferInstall(_Request):
    request: Literal["defer_install"]
    seconds: Annotated[int, Field(gt=0)]


class _Status(_Request):
    request: Literal["status"]


class _Transaction(UsageBody):
    """One finished citizen transaction: the wire body's fields (``protocol.usage``), flat."""

    request: Literal["transaction"]

    def body(self) -> UsageBody:
        return UsageBody.model_validate(self.model_dump(exclude={"request"}))


_REQUEST = TypeAdapter(
    Annotated[
        _SessionStart | _SessionEnd | _DeferInstall | _Status | _Transaction,
        Field(discriminator="request"),
    ]
)


def _peer_of(conn: socket.socket) -> str:
    """The connecting process as ``pid N uid N`` (SO_PEERCRED, Linux), for the log lines."""
    try:
        pid, uid, _ = struct.unpack(
            "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        )
    except OSError:
        return "an unknown process"
    return f"pid {pid} uid {uid}"


def _rule(error: Any) -> str:
    """Pydantic's message for one error, minus the one kind that quotes the input (an
    unknown ``request`` tag): a refused line's values never reach the answer or the log."""
    if error["type"] == "union_tag_invalid":
        return "unknown request"
    return str(error["msg"])


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


class KioskInterface:
    """Serves the kiosk application's requests on a Unix socket, one thread per connection."""

    def __init__(
        self,
        gate: InstallGate,
        config: KioskInterfaceConfig,
        on_transaction: Callable[[UsageBody], bool] | None = None,
    ) -> None:
        """``on_transaction`` receives each valid ``transaction`` (from a connection's
        thread; thread-safe, bounded in time) and returns True once it is stored; False is
        answered ``not_stored``. None answers every transaction ``not_recording``."""
        self._on_transaction = on_transaction
        self._gate = gate
        self._config = config
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._counters: dict[str, int] = {
            "connections_accepted": 0,
            "connections_refused_busy": 0,
            "connections_idle_closed": 0,
            "accept_errors": 0,
            "requests": 0,
            "transactions": 0,
            **{f"rejected_{code.value}": 0 for code in ErrorCode if code is not ErrorCode.BUSY},
        }

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (0660, the configured group) and serve. Raises ``KioskSocketError``."""
        self._listener = self._bind()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="kiosk-interface", daemon=True
        )
        self._accept_thread.start()
        log.info("kiosk interface listening on %s", self._config.path)

    def close(self) -> None:
        """Stop accepting, close open connections, remove the socket file."""
        with self._lock:
            self._closing = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:  # the accept loop has ended: no connection is added after this
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the connection's recv()
        for thread in threads:
            thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            if self._listener is not None:
                self._config.path.unlink()
        self._listener = None

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    # -- binding ---------------------------------------------------------------

    def _bind(self) -> socket.socket:
        path = self._config.path
        gid = self._group_id()
        self._refuse_live_or_foreign(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.binding")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(temporary))
            os.chmod(temporary, SOCKET_MODE)
            if gid is not None:
                os.chown(temporary, -1, gid)
            os.replace(temporary, path)
            listener.listen(self._config.max_connections)
        except OSError as exc:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise KioskSocketError(path, f"cannot bind: {exc}") from exc
        return listener

    def _group_id(self) -> int | None:
        if self._config.group is None:
            return None
        try:
            return grp.getgrnam(self._config.group).gr_gid
        except KeyError:
            raise KioskSocketError(
                self._config.path, f"group {self._config.group!r} does not exist"
            ) from None

    @staticmethod
    def _refuse_live_or_foreign(path: Path) -> None:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise KioskSocketError(path, "exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(_PROBE_TIMEOUT_S)  # a live listener with a full backlog would block
        try:
            probe.connect(str(path))
        except OSError:
            return  # stale: nobody listens, the rename replaces it
        finally:
            probe.close()
        raise KioskSocketError(path, "another process is listening on it")

    # -- serving ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError as exc:
                with self._lock:
                    if self._closing:
                        return
                    self._counters["accept_errors"] += 1
                log.error("kiosk interface: accept failed, going on: %s", exc)
                time.sleep(_ACCEPT_ERROR_PAUSE_S)  # e.g. out of file descriptors: do not spin
                continue
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                busy = len(self._connections) >= self._config.max_connections
                if not busy:
                    self._connections.add(conn)
                    self._counters["connections_accepted"] += 1
                else:
                    self._counters["connections_refused_busy"] += 1
            if busy:
                log.warning(
                    "kiosk interface: %d connections open, refusing another",
                    self._config.max_connections,
                )
                self._send_and_close(conn, _error(ErrorCode.BUSY, "too many connections"))
                continue
            thread = threading.Thread(
                target=self._serve, args=(conn,), name="kiosk-connection", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    @staticmethod
    def _send_and_close(conn: socket.socket, answer: dict[str, Any]) -> None:
        """Send a last answer, then close without resetting it away.

        Closing with unread input makes the kernel reset the connection, and the
        peer may then lose the answer; so what has arrived already (bounded) is read
        and discarded first, without waiting for more.
        """
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            conn.setblocking(False)
            for _ in range(_DRAIN_CHUNKS):
                if not conn.recv(65536):
                    break
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self._config.idle_timeout_s)
        peer = _peer_of(conn)
        buffer = bytearray()
        try:
            while True:
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) > self._config.max_line_bytes:
                        self._reject_too_large(conn, peer)
                        return
                    try:
                        chunk = conn.recv(4096)
                    except TimeoutError:
                        self._count("connections_idle_closed")
                        log.info(
                            "kiosk interface: closing the connection of %s, idle for %.0f s",
                            peer,
                            self._config.idle_timeout_s,
                        )
                        return
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                if len(line) > self._config.max_line_bytes:
                    self._reject_too_large(conn, peer)
                    return
                if line.strip():
                    conn.sendall(json.dumps(self._answer(line, peer)).encode() + b"\n")
        except OSError as exc:
            log.info("kiosk interface: the connection of %s ended: %s", peer, exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def _reject_too_large(self, conn: socket.socket, peer: str) -> None:
        self._count(f"rejected_{ErrorCode.TOO_LARGE}")
        log.warning(
            "kiosk interface: a line from %s exceeds %d bytes; closing the connection",
            peer,
            self._config.max_line_bytes,
        )
        self._send_and_close(
            conn,
            _error(
                ErrorCode.TOO_LARGE, f"a line may hold at most {self._config.max_line_bytes} bytes"
            ),
        )

    def _answer(self, line: bytes, peer: str) -> dict[str, Any]:
        """One request line in, one answer out; never raises for any input."""
        self._count("requests")
        try:
            document = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._rejected(ErrorCode.MALFORMED, f"not a UTF-8 JSON line: {exc}", peer)
        if not isinstance(document, dict):
            return self._rejected(ErrorCode.MALFORMED, "a request is a JSON object", peer)
        try:
            # JSON mode on the same (already parsed once) bytes: strict, yet strings become
            # enums (a transaction's outcome). The answer and the log name the field and
            # the rule it broke, never the value sent (``_rule``).
            request = _REQUEST.validate_json(line)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {_rule(e)}"
                for e in exc.errors()[:3]
            )
            return self._rejected(ErrorCode.BAD_REQUEST, problems, peer)
        if isinstance(request, _Transaction):
            return self._transaction(request, peer)
        try:
            answer = {"ok": True, "request": request.request, **self._call(request)}
        except GateRefusedError as refused:
            log.info(
                "kiosk interface: %s from %s refused: %s", request.request, peer, refused.reason
            )
            return {**_error(refused.reason, str(refused)), "request": request.request}
        if not isinstance(request, _Status):
            log.info("kiosk interface: %s from %s", request.request, peer)  # never the token
        return answer

    def _transaction(self, request: _Transaction, peer: str) -> dict[str, Any]:
        if self._on_transaction is None:
            return self._rejected(
                ErrorCode.NOT_RECORDING, "this agent does not record transactions", peer
            )
        if not self._on_transaction(request.body()):
            return self._rejected(
                ErrorCode.NOT_STORED, "the agent could not store the transaction", peer
            )
        self._count("transactions")
        return {"ok": True, "request": request.request}

    def _call(self, request: _Request) -> dict[str, Any]:
        gate = self._gate
        match request:
            case _SessionStart():
                return {"session": gate.session_start(), "expires_in_s": gate.limits.max_session_s}
            case _SessionEnd(session=token):
                gate.session_end(token)
                return {}
            case _DeferInstall(seconds=seconds):
                return {"deferred_for_s": gate.defer_install(seconds)}
            case _:
                status = gate.status()
                return {
                    "installing": status.installing,
                    "open_sessions": status.open_sessions,
                    "deferred_for_s": status.deferred_for_s,
                }

    def _rejected(self, code: ErrorCode, message: str, peer: str) -> dict[str, Any]:
        self._count(f"rejected_{code}")
        log.warning("kiosk interface: %s request from %s: %s", code, peer, message)
        return _error(code, message)

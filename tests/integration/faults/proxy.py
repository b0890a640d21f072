"""A loopback TCP proxy that can cut or stall the connections through it (fault injection).

``FaultProxy(upstream_port)`` listens on ``127.0.0.1:<port>`` and forwards each
accepted connection to ``127.0.0.1:<upstream_port>`` (the broker, PostgreSQL).
Point one client at it and the tests can break that client's link alone:

- ``cut()``: every connection through the proxy is reset (RST to both ends) and
  new ones are reset as soon as they are accepted, until ``restore()``: a cable
  pulled, a router rebooting;
- ``blackhole()``: connections stay open (new ones are even accepted) but no
  byte is forwarded in either direction; bytes wait in the proxy's and the
  kernel's buffers, as on a link that stopped passing packets while TCP holds
  the data. ``restore()`` lets them through again, unless an endpoint gave up
  (keepalive) and closed meanwhile;
- ``restore()``: forward normally again.

Each call returns once the proxy's thread has applied it (after ``cut()`` every
connection is closed). One thread with ``selectors``, no asyncio. It only ever
listens on and connects to loopback; it never inspects or alters the bytes.
"""

from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "ProxyMode"]

_CHUNK = 65536
_BUFFER_LIMIT = 1 << 20  # stop reading a side while 1 MiB waits for the other
_CONNECT_TIMEOUT_S = 2.0


class ProxyMode(enum.Enum):
    OPEN = "open"
    CUT = "cut"
    BLACKHOLE = "blackhole"


@dataclass(eq=False)
class _Pipe:
    client: socket.socket
    upstream: socket.socket | None = None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    closed: bool = False


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, not an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """127.0.0.1:``port`` → 127.0.0.1:``upstream_port``; start, then cut / blackhole / restore."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._mode = ProxyMode.OPEN
        self._pipes: set[_Pipe] = set()
        self._interest: dict[socket.socket, int] = {}
        self._commands: list[tuple[ProxyMode | None, threading.Event]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = False
        self.accepted = 0  # connections accepted (in any mode)
        self.refused = 0  # connections reset at once because the proxy was cut
        self.upstream_failures = 0  # connections closed because the upstream refused

    # --- public -------------------------------------------------------------------------

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @property
    def connections(self) -> int:
        """Connections currently held open through the proxy."""
        with self._lock:
            return len(self._pipes)

    def url(self, scheme: str = "mqtt") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._running = True
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="kf-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        """Reset every connection and every new one until ``restore()``."""
        self._command(ProxyMode.CUT)

    def blackhole(self) -> None:
        """Keep connections open but forward nothing until ``restore()``."""
        self._command(ProxyMode.BLACKHOLE)

    def restore(self) -> None:
        """Forward normally again."""
        self._command(ProxyMode.OPEN)

    def stop(self) -> None:
        """Close everything and end the thread (idempotent)."""
        if self._thread is None:
            return
        self._command(None)
        self._thread.join(5)
        self._thread = None
        for sock in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()
        self._sel.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the proxy thread ---------------------------------------------------------------

    def _command(self, mode: ProxyMode | None) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the proxy is not running")
        done = threading.Event()
        with self._lock:
            self._commands.append((mode, done))
        self._wake_w.send(b"x")
        if not done.wait(5):
            raise RuntimeError("the proxy thread did not apply the command")

    def _run(self) -> None:
        try:
            while self._running:
                for key, mask in self._sel.select(0.5):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                        self._apply_commands()
                    else:
                        self._service(key.data, key.fileobj, mask)  # type: ignore[arg-type]
        finally:
            for pipe in list(self._pipes):
                self._close(pipe, reset=True)
            self._apply_commands()  # release anyone still waiting

    def _apply_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for mode, done in commands:
            if mode is None:
                self._running = False
            else:
                self._mode = mode
                if mode is ProxyMode.CUT:
                    for pipe in list(self._pipes):
                        self._close(pipe, reset=True)
                for pipe in list(self._pipes):
                    if mode is ProxyMode.OPEN and pipe.upstream is None:
                        self._connect_upstream(pipe)
                    self._refresh(pipe)
            done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except BlockingIOError:
                return
            self.accepted += 1
            if self._mode is ProxyMode.CUT:
                self.refused += 1
                _reset(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client)
            with self._lock:
                self._pipes.add(pipe)
            if self._mode is ProxyMode.OPEN:
                self._connect_upstream(pipe)
            self._refresh(pipe)

    def _connect_upstream(self, pipe: _Pipe) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=_CONNECT_TIMEOUT_S)
        except OSError:
            self.upstream_failures += 1
            self._close(pipe, reset=True)
            return
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.upstream = upstream

    def _service(self, pipe: _Pipe, sock: socket.socket, mask: int) -> None:
        if pipe.closed or self._mode is not ProxyMode.OPEN or pipe.upstream is None:
            return
        from_client = sock is pipe.client
        inbox = pipe.to_upstream if from_client else pipe.to_client
        outbox = pipe.to_client if from_client else pipe.to_upstream
        if mask & selectors.EVENT_WRITE and outbox:
            try:
                sent = sock.send(outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(pipe, reset=True)
                return
            del outbox[:sent]
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(pipe, reset=True)
                return
            if data == b"":  # orderly close by this end: pass on what is left, then close
                self._flush_and_close(pipe)
                return
            if data:
                inbox.extend(data)
        self._refresh(pipe)

    def _flush_and_close(self, pipe: _Pipe) -> None:
        for sock, pending in ((pipe.client, pipe.to_client), (pipe.upstream, pipe.to_upstream)):
            if sock is not None and pending:
                with contextlib.suppress(OSError):
                    sock.setblocking(True)
                    sock.settimeout(1.0)
                    sock.sendall(pending)
        self._close(pipe, reset=False)

    def _refresh(self, pipe: _Pipe) -> None:
        if pipe.closed:
            return
        forwarding = self._mode is ProxyMode.OPEN and pipe.upstream is not None
        for sock, inbox, outbox in (
            (pipe.client, pipe.to_upstream, pipe.to_client),
            (pipe.upstream, pipe.to_client, pipe.to_upstream),
        ):
            if sock is None:
                continue
            events = 0
            if forwarding:
                if len(inbox) < _BUFFER_LIMIT:
                    events |= selectors.EVENT_READ
                if outbox:
                    events |= selectors.EVENT_WRITE
            self._set_interest(sock, events, pipe)

    def _set_interest(self, sock: socket.socket, events: int, pipe: _Pipe) -> None:
        current = self._interest.get(sock, 0)
        if events == current:
            return
        if current and events:
            self._sel.modify(sock, events, pipe)
        elif events:
            self._sel.register(sock, events, pipe)
        else:
            self._sel.unregister(sock)
        if events:
            self._interest[sock] = events
        else:
            self._interest.pop(sock, None)

    def _close(self, pipe: _Pipe, *, reset: bool) -> None:
        if pipe.closed:
            return
        pipe.closed = True
        for sock in (pipe.client, pipe.upstream):
            if sock is None:
                continue
            if self._interest.pop(sock, 0):
                self._sel.unregister(sock)
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        with self._lock:
            self._pipes.discard(pipe)

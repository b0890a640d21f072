"""The fault proxy forwards bytes both ways, cuts every connection, and stalls them without loss."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.integration.faults.proxy import FaultProxy, ProxyMode

pytestmark = pytest.mark.integration


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback TCP server echoing every byte back (one thread per connection)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _link_broken(sock: socket.socket) -> bool:
    """True once the connection is reset or closed (a write fails, or a read gets EOF)."""
    try:
        sock.sendall(b"x" * 100_000)
        return sock.recv(10) == b""
    except OSError:
        return True


def _new_connection_broken(port: int) -> bool:
    """True if a new connection is reset, during the connect or at its first use."""
    try:
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:  # the RST can arrive before connect() returns
        return True
    with late:
        late.settimeout(5)
        return _link_broken(late)


def test_open_proxy_forwards_a_large_stream_both_ways_unchanged(echo_port: int) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: more than the proxy's per-side buffer
    with FaultProxy(echo_port) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.settimeout(10)
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        assert _recv_exactly(s, len(payload)) == payload
        sender.join()
        assert proxy.connections == 1


def test_cut_resets_open_connections_and_refuses_new_ones_until_restored(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"ping")
        assert _recv_exactly(s, 4) == b"ping"
        proxy.cut()
        assert proxy.mode is ProxyMode.CUT
        assert proxy.connections == 0
        assert _link_broken(s)
        s.close()
        assert _new_connection_broken(proxy.port)
        assert proxy.refused >= 1
        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as fresh:
            fresh.sendall(b"back")
            assert _recv_exactly(fresh, 4) == b"back"


def test_blackhole_holds_bytes_on_open_connections_and_restore_delivers_them(
    echo_port: int,
) -> None:
    with FaultProxy(echo_port) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"before")
        assert _recv_exactly(s, 6) == b"before"
        proxy.blackhole()
        s.sendall(b"during")
        late = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        late.sendall(b"late")
        for sock in (s, late):
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(10)
        assert proxy.connections == 2
        proxy.restore()
        for sock, expected in ((s, b"during"), (late, b"late")):
            sock.settimeout(5)
            assert _recv_exactly(sock, len(expected)) == expected
            sock.close()

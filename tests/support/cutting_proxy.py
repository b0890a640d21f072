"""A real HTTP proxy on loopback in front of the server that can break one download.

``CuttingProxy(upstream)`` forwards every GET (with its ``Range`` header) to ``upstream``
and records ``(path, range)`` of each. After ``cut_next_target(n)``, the next response
under ``/tuf/targets/`` sends its status and headers (the full ``Content-Length``), the
first ``n`` bytes of the body, and closes the connection: what a terminal sees when the
network drops mid-download. ``stall_next_target(n)`` sends the first ``n`` bytes and then
nothing more until the proxy stops (a download in progress, for a test that kills the
downloader there). Only the next one: later requests pass through whole.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

__all__ = ["CuttingProxy", "cutting_proxy"]


class CuttingProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, str | None]] = []
        self._cut: int | None = None
        self._stall = False
        self._lock = threading.Lock()
        self.released = threading.Event()  # set when the proxy stops: stalled answers end

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def cut_next_target(self, after_bytes: int, *, stall: bool = False) -> None:
        with self._lock:
            self._cut, self._stall = after_bytes, stall

    def stall_next_target(self, after_bytes: int) -> None:
        self.cut_next_target(after_bytes, stall=True)

    def take_cut(self, path: str) -> tuple[int, bool] | None:
        with self._lock:
            if self._cut is None or not path.startswith("/tuf/targets/"):
                return None
            cut, self._cut = self._cut, None
            return cut, self._stall


class _Forward(BaseHTTPRequestHandler):
    server: CuttingProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        self.server.requests.append((self.path, wanted))
        headers = {"Range": wanted} if wanted else {}
        upstream = httpx.get(self.server.upstream + self.path, headers=headers, timeout=10)
        body = upstream.content
        cut = self.server.take_cut(self.path)
        self.send_response(upstream.status_code)
        for name in ("Content-Type", "Content-Range", "Cache-Control", "Accept-Ranges"):
            if name in upstream.headers:
                self.send_header(name, upstream.headers[name])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is None:
            self.wfile.write(body)
            return
        after, stall = cut
        self.wfile.write(body[:after])
        self.wfile.flush()
        if stall:
            self.server.released.wait()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def cutting_proxy(upstream: str) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(upstream)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.released.set()
        proxy.shutdown()
        proxy.server_close()
        thread.join()

"""The weekly hall report's render limit over real HTTP on a running server (real mosquitto,
SQLite): with the process's renders all taken (renders that block on an event hold the
server's own gate), one more report over the API and the console's download answers 429
with ``Retry-After`` and is counted; released, the same request renders, and asked again
is answered from the kept copy."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.access import Role
from server.console.web import CONSOLE_PREFIX
from tests.integration.conftest import ServerFactory, bearer, metric, token, wait_until
from tests.integration.test_console import _httpx_login, add_user

pytestmark = pytest.mark.integration

RENDERS = "kioskfleet_hall_report_renders_total"


def test_reports_beyond_the_render_limit_answer_429_with_retry_after_and_the_limit_renders(
    start_server: ServerFactory,
) -> None:
    server = start_server(report_renders_max=2)
    gate = server.hall_reports.gate
    assert gate is not None
    viewer = bearer(token(server, Role.VIEWER))
    add_user(server, "vera", Role.VIEWER)
    console = _httpx_login(server, "vera")
    params = {"hall": "hall-01", "week": "2026-W48", "format": "html"}
    release, started = threading.Event(), list[str]()

    def held(name: str) -> Callable[[], bytes]:
        def render() -> bytes:
            started.append(name)
            release.wait()
            return name.encode()

        return render

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            renders = [pool.submit(gate.run, n, held(n)) for n in ("one", "two")]
            wait_until(lambda: len(started) == 2, 10, "two renders to hold the gate")
            api = httpx.get(
                server.base_url + "/api/v1/analytics/report", params=params, headers=viewer
            )
            assert api.status_code == 429, api.text
            assert api.headers["retry-after"] == "5"
            assert api.json()["error"] == "busy"
            page = console.get(
                CONSOLE_PREFIX + "/halls/hall-01/report",
                params={"week": "2026-W48", "format": "html"},
            )
            assert page.status_code == 429
            assert page.headers["retry-after"] == "5"
            assert "Too many reports are being made now." in page.text
            assert metric(server, RENDERS, result="refused") == 2
            release.set()
            assert sorted(r.result(timeout=10) for r in renders) == [b"one", b"two"]
        for _ in range(2):  # the first renders, the second is the kept copy
            done = httpx.get(
                server.base_url + "/api/v1/analytics/report",
                params=params,
                headers=viewer,
                timeout=60,
            )
            assert done.status_code == 200, done.text
            assert done.headers["content-type"].startswith("text/html")
            assert done.headers["cache-control"] == "no-store"
        assert metric(server, RENDERS, result="rendered") == 3
        assert metric(server, RENDERS, result="cached") == 1
    finally:
        release.set()
        console.close()

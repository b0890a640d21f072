"""The API's interactive docs work without the internet: every script, style and icon that
``/docs`` and ``/redoc`` load comes from the server itself (offline-first)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration

_ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_assets_this_server_serves(
    start_server: ServerFactory, page: str
) -> None:
    server = start_server()
    html = httpx.get(server.base_url + page, timeout=5)  # open, like /openapi.json
    assert html.status_code == 200
    assert "text/html" in html.headers["content-type"]
    assets = {a or b for a, b in _ASSET.findall(html.text)}
    assert "/openapi.json" in assets  # the page reads this server's API description
    assert [a for a in assets if "//" in a] == []  # no CDN, no font service, no other host
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, html.text
    for asset in assets:
        answer = httpx.get(server.base_url + asset, timeout=5)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 100, asset
    spec = httpx.get(server.base_url + "/openapi.json", timeout=5).json()
    assert spec["openapi"].startswith("3.1")  # what Swagger UI 5 renders (4 does not)

"""The Prometheus pages `make demo` prints answer on the installed Prometheus.

Debian's prometheus 2.x serves only the classic UI, under /classic/...; a Prometheus with
the React UI serves /alerts. The demo asks the running server (LocalPrometheus.ui_prefix)
instead of guessing; this test runs the real binary.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kioskfleet.local_prometheus import UI_PREFIXES, LocalPrometheus, prometheus_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="the prometheus binary is not installed (apt-get install prometheus)",
    ),
]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_printed_pages_answer_200_on_the_installed_prometheus(tmp_path: Path) -> None:
    with LocalPrometheus(tmp_path / "prometheus", ["127.0.0.1:1"]) as prom:
        prefix = prom.ui_prefix()
        assert prefix in UI_PREFIXES
        for page in (prom.alerts_page, prom.targets_page, prom.ui_page("graph")):
            assert _status(page) == 200, page
        with urllib.request.urlopen(prom.alerts_page, timeout=5) as response:  # noqa: S310
            assert b"Alerts" in response.read()
        if prefix == "/classic":  # the React UI's address is then a 404: never print it
            assert _status(f"{prom.url}/alerts") == 404
        assert prom.ui_prefix() == prefix  # remembered

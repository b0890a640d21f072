"""Online/offline over the real broker: the retained will, silence, coming back."""

from __future__ import annotations

import pytest

from server.main import Server
from tests.integration.conftest import ServerFactory, TerminalFactory, api, metric, wait_until

pytestmark = pytest.mark.integration


def _state(server: Server, tid: str) -> tuple[str, str | None] | None:
    r = api(server, f"/api/v1/terminals/{tid}")
    if r.status_code != 200:
        return None
    body = r.json()
    return body["state"], body["offline_reason"]


def test_terminal_whose_connection_drops_goes_offline_by_its_retained_will(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    server = private_server()  # exact will count: no other test's terminals here
    t = private_terminals(with_will=True)
    t.online()
    t.report()
    wait_until(lambda: _state(server, t.id) == ("online", None), what="online")
    t.vanish()
    wait_until(lambda: _state(server, t.id) == ("offline", "will"), what="offline by will")
    assert metric(server, "kioskfleet_terminals_offline_detected_total", reason="will") == 1
    # Transitions reach the history with the next batched write: wait for the offline one.
    history = wait_until(
        lambda: (
            (h := api(server, f"/api/v1/terminals/{t.id}").json()["transitions"])
            and h[0]["to_state"] == "offline"
            and h
        ),
        what="the offline transition in the history",
    )
    assert (history[0]["to_state"], history[0]["reason"]) == ("offline", "will")


def test_server_started_after_the_will_learns_the_offline_from_the_retained_message(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    t = terminals(with_will=True)
    t.online()
    t.vanish()
    server = start_server()
    wait_until(lambda: _state(server, t.id) == ("offline", "will"), what="retained will")
    assert _state(server, t.id) == ("offline", "will")


def test_terminal_that_stops_reporting_goes_offline_by_timeout_and_comes_back(
    start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = start_server(offline_check_interval_s=0.1)
    t = terminals()
    t.report(interval=0.3)
    wait_until(lambda: _state(server, t.id) == ("online", None), what="online")
    wait_until(lambda: _state(server, t.id) == ("offline", "timeout"), 5, "offline by timeout")
    assert metric(server, "kioskfleet_terminals_offline_detected_total", reason="timeout") >= 1
    t.report(interval=0.3)
    wait_until(lambda: _state(server, t.id) == ("online", None), what="back online")

"""Update statuses (kf.update) from a terminal through a real mosquitto to a real server on
SQLite and PostgreSQL: stored once, shown as a timeline and as rollout counts in the API,
malformed ones counted as rejected."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from protocol.codec import decode
from protocol.messages import Message
from protocol.topics import Channel
from server.update_status_store import rollout_terminals
from tests.integration.conftest import RawTerminal, ServerFactory, TerminalFactory, api, metric
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def _status(t: RawTerminal, state: str, *, seq: int | None = None, **body: Any) -> Message:
    raw = {
        "schema": "kf.update",
        "version": 1,
        "terminal_id": t.id,
        "boot_id": t.boot,
        "seq": t.next_seq() if seq is None else seq,
        "sent_at": datetime.now(UTC).isoformat(),
        "body": {"rollout_id": "R-7", "directive_seq": 12, "state": state, **body},
    }
    return decode(t.topic(Channel.UPDATE), json.dumps(raw).encode())


def _timeline(server: Any, terminal_id: str) -> list[dict[str, Any]]:
    response = api(server, f"/api/v1/terminals/{terminal_id}/updates")
    assert response.status_code == 200, response.text
    updates: list[dict[str, Any]] = response.json()["updates"]
    return updates


def test_update_statuses_reach_the_timeline_and_rollout_counts_stored_once(
    private_server: ServerFactory, private_terminals: TerminalFactory, database_url: str
) -> None:
    server = private_server(database_url=database_url)
    first, second = private_terminals("T-UPD-1"), private_terminals("T-UPD-2")
    first.report()
    for state in ("notified", "downloading", "installing"):
        first.publish(_status(first, state))
    rolled_back = _status(first, "rolled_back", reason="health_check_failed", detail="probe 503")
    first.publish(rolled_back)
    first.publish(rolled_back)  # a redelivery: stored once
    second.report()
    second.publish(_status(second, "succeeded"))

    wait_until(lambda: len(_timeline(server, "T-UPD-1")) == 4, 10, "four statuses of T-UPD-1")
    wait_until(lambda: len(_timeline(server, "T-UPD-2")) == 1, 10, "the status of T-UPD-2")
    timeline = _timeline(server, "T-UPD-1")
    assert [u["state"] for u in timeline] == [
        "rolled_back",
        "installing",
        "downloading",
        "notified",
    ]
    assert timeline[0]["reason"] == "health_check_failed"
    assert timeline[0]["detail"] == "probe 503"
    assert timeline[0]["rollout_id"] == "R-7"
    assert timeline[0]["directive_seq"] == 12
    assert metric(server, "kioskfleet_ingest_duplicates_total") >= 1
    assert metric(server, "kioskfleet_update_statuses_total", state="rolled_back") == 1
    assert metric(server, "kioskfleet_update_terminals", state="rolled_back") == 1
    assert metric(server, "kioskfleet_update_terminals", state="succeeded") == 1
    assert metric(server, "kioskfleet_update_terminals", state="installing") == 0

    rollout = api(server, "/api/v1/rollouts/R-7/terminals").json()
    assert rollout["counts"] == {"rolled_back": 1, "succeeded": 1}
    assert [(t["terminal_id"], t["state"]) for t in rollout["terminals"]] == [
        ("T-UPD-1", "rolled_back"),
        ("T-UPD-2", "succeeded"),
    ]
    assert rollout["next_after"] is None
    page = api(server, "/api/v1/rollouts/R-7/terminals", limit=1).json()
    assert [t["terminal_id"] for t in page["terminals"]] == ["T-UPD-1"]
    assert page["next_after"] == "T-UPD-1"
    rest = api(server, "/api/v1/rollouts/R-7/terminals", limit=1, after="T-UPD-1").json()
    assert [t["terminal_id"] for t in rest["terminals"]] == ["T-UPD-2"]
    assert rest["counts"] == rollout["counts"]
    assert api(server, "/api/v1/rollouts/R-other/terminals").json()["counts"] == {}
    assert api(server, "/api/v1/rollouts/bad id!/terminals").status_code == 422
    assert api(server, "/api/v1/terminals/T-UPD-1/updates", limit=0).status_code == 422


def test_a_status_replayed_after_a_restart_is_stored_once(
    private_server: ServerFactory, private_terminals: TerminalFactory, database_url: str
) -> None:
    server = private_server(database_url=database_url)
    t = private_terminals("T-UPD-R")
    t.report()
    status = _status(t, "downloaded")
    t.publish(status)
    wait_until(lambda: len(_timeline(server, t.id)) == 1, 10, "the first status")
    server.stop()
    restarted = private_server(database_url=database_url)
    # the gauge is seeded from the database at start
    assert metric(restarted, "kioskfleet_update_terminals", state="downloaded") == 1
    t.publish(status)  # same (terminal, boot_id, seq)
    t.publish(_status(t, "installing"))
    wait_until(lambda: len(_timeline(restarted, t.id)) >= 2, 10, "the next status")
    states = [u["state"] for u in _timeline(restarted, t.id)]
    assert states == ["installing", "downloaded"]
    page = rollout_terminals(restarted.storage.engine, "R-7", 10)
    assert page.counts == {"installing": 1}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"schema":"kf.update","version":1}', "invalid"),
        (b"{not json", "bad_json"),
    ],
)
def test_malformed_update_status_is_counted_as_rejected_and_the_server_goes_on(
    private_server: ServerFactory,
    private_terminals: TerminalFactory,
    payload: bytes,
    reason: str,
) -> None:
    server = private_server()
    t = private_terminals("T-UPD-BAD")
    t.report()
    t.publish_raw(t.topic(Channel.UPDATE), payload)
    failed = _status(t, "failed", reason="install_failed")
    bad_body = failed.model_dump(mode="json", by_alias=True)
    bad_body["body"]["state"] = "exploded"
    t.publish_raw(t.topic(Channel.UPDATE), json.dumps(bad_body).encode())
    wait_until(
        lambda: (
            metric(server, "kioskfleet_ingest_rejected_total", reason=reason) >= 1
            and metric(server, "kioskfleet_ingest_rejected_total", reason="invalid") >= 1
        ),
        10,
        f"the {reason} reject",
    )
    t.publish(_status(t, "succeeded"))  # the next valid one is still applied
    wait_until(lambda: len(_timeline(server, t.id)) == 1, 10, "the valid status")
    assert metric(server, "kioskfleet_ingest_rejected_total", reason="internal") == 0
    assert _timeline(server, t.id)[0]["state"] == "succeeded"

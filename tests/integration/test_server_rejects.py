"""Garbage from a raw client is counted by reason; the server keeps serving and ingesting."""

from __future__ import annotations

import json
import subprocess

import pytest

from protocol.codec import encode
from protocol.topics import Channel, topic
from tests.integration.conftest import ServerFactory, TerminalFactory, api, wait_until
from tests.support.fleet_messages import report

pytestmark = pytest.mark.integration


def _rejected(server_url_metrics: str, reason: str) -> float:
    for line in server_url_metrics.splitlines():
        if line.startswith(f'kioskfleet_ingest_rejected_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no reject series for {reason}")


def test_each_kind_of_garbage_counts_its_reason_and_a_later_report_is_still_ingested(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    server = private_server(max_payload_bytes=2048)
    t = private_terminals()
    good = json.loads(encode(report(t.id)))
    report_topic = t.topic(Channel.REPORT)
    garbage = {
        "bad_json": [(report_topic, b"{this is not json"), (report_topic, b"\xff\xfe\xfa")],
        "unknown_schema": [(report_topic, json.dumps({**good, "schema": "kf.x"}).encode())],
        "invalid": [(report_topic, json.dumps({**good, "seq": -1}).encode())],
        "id_mismatch": [(topic("SOMEONE-ELSE", Channel.REPORT), json.dumps(good).encode())],
        "oversize": [(report_topic, b"{" + b" " * 4096 + b"}")],
        "channel_mismatch": [(t.topic(Channel.EVENT), json.dumps(good).encode())],
    }
    for items in garbage.values():
        for name, payload in items:
            t.publish_raw(name, payload)

    def all_counted() -> str | None:
        text = api(server, "/metrics").text
        done = all(_rejected(text, r) == len(items) for r, items in garbage.items())
        return text if done else None

    text = wait_until(all_counted, what="every reject to be counted")
    assert _rejected(text, "internal") == 0
    assert api(server, "/healthz").status_code == 200

    t.report()
    wait_until(
        lambda: api(server, f"/api/v1/terminals/{t.id}").status_code == 200,
        what="the valid report after the garbage",
    )


def test_duplicates_are_counted_and_not_applied_twice(
    private_server: ServerFactory, private_terminals: TerminalFactory
) -> None:
    server = private_server()
    t = private_terminals()
    first = t.report(seq=1)
    t.publish(first)
    t.publish(first)
    t.report(seq=4)

    def counted() -> bool:
        return (
            server.registry.get_sample_value("kioskfleet_ingest_duplicates_total") == 2
            and server.registry.get_sample_value("kioskfleet_ingest_seq_gaps_total") == 2
        )

    wait_until(counted, what="two duplicates and a gap of two")
    assert (
        server.registry.get_sample_value("kioskfleet_ingest_messages_total", {"channel": "report"})
        == 2
    )


@pytest.mark.parametrize("channel", ["state", "report", "event", "update"])
def test_garbage_from_mosquitto_pub_on_any_terminal_channel_is_counted_and_survived(
    private_server: ServerFactory, private_terminals: TerminalFactory, channel: str
) -> None:
    """The issue's own acceptance check, with the real command-line client."""
    server = private_server()
    before = _rejected(api(server, "/metrics").text, "bad_json")
    subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(server.settings.broker_url.rsplit(":", 1)[1]),
            "-q",
            "1",
            "-t",
            f"kf/v1/terminals/GARBAGE-1/{channel}",
            "-m",
            "garbage, not json",
        ],
        check=True,
        timeout=10,
    )
    wait_until(
        lambda: _rejected(api(server, "/metrics").text, "bad_json") == before + 1,
        what=f"the bad_json reject on {channel}",
    )
    assert api(server, "/healthz").status_code == 200
    t = private_terminals()
    t.report()
    wait_until(
        lambda: api(server, f"/api/v1/terminals/{t.id}").status_code == 200,
        what="a valid report after the garbage",
    )

"""Garbage on every agent channel, through a real mosquitto to a real server.

Hypothesis generates payloads of each kind the issue lists (invalid UTF-8, deep
nesting, huge numbers, NaN/Infinity, negative seq, timestamps far in the future
or past, duplicated keys, oversize strings, wrong ids, plus unknown schemas,
wrong channels and arbitrary bytes). Each generated item carries the reject
reason the documented order of checks (docs/protocol.md, "Strictness") gives
it, worked out from how it was built, not by asking the decoder. The tests
prove that the server:

- never crashes: ``/healthz`` answers and a valid report is ingested afterwards;
- stores nothing for garbage: no terminal, event or transition rows, no fleet entry;
- counts each rejection by its reason: per example, the deltas of
  ``kioskfleet_ingest_rejected_total{reason}`` equal what was sent, and nothing
  is accepted, counted as a duplicate or as an internal error;
- keeps its memory flat under a sustained stream of garbage (a server
  subprocess, RSS measured with psutil).

The ``cmd`` channel is server → agent: the server does not subscribe to it, so
garbage there never reaches it (checked too). A payload above the broker's
``message_size_limit`` (256 KiB, broker/mosquitto.conf) never reaches the server
at all; one between the server's ``max_payload_bytes`` (64 KiB) and that limit
is rejected by the server as ``oversize``.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from kioskfleet.local_broker import LocalBroker, free_port
from protocol.codec import DEFAULT_MAX_PAYLOAD_BYTES, decode
from protocol.topics import Channel, topic
from server.main import Server
from tests.integration.conftest import (
    ServerFactory,
    admin_token_in,
    api,
    bearer,
    metric,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

BROKER_MESSAGE_SIZE_LIMIT = 262_144  # broker/mosquitto.conf message_size_limit
SERVER_MAX_PAYLOAD = DEFAULT_MAX_PAYLOAD_BYTES  # the server's default max_payload_bytes
REASONS = (
    "bad_topic",
    "oversize",
    "bad_json",
    "unknown_schema",
    "invalid",
    "channel_mismatch",
    "id_mismatch",
)
GARBAGE_CHANNELS = (Channel.STATE, Channel.REPORT, Channel.EVENT, Channel.UPDATE, Channel.USAGE)

# --- valid messages, the starting point of every mutation -----------------------------------


def valid(channel: Channel, terminal_id: str, seq: int = 1) -> dict[str, Any]:
    """A valid message for ``channel`` as a JSON-ready dict.

    ``update`` and ``usage`` get a report: the server refuses that one as
    ``channel_mismatch`` whatever else is wrong in it.
    """
    envelope: dict[str, Any] = {
        "version": 1,
        "terminal_id": terminal_id,
        "boot_id": "garbage-stream-1",
        "seq": seq,
        "sent_at": "2026-01-01T00:00:00Z",
    }
    if channel is Channel.STATE:
        return {
            "schema": "kf.state",
            **envelope,
            "body": {"state": "online", "reason": "connect", "hall": "Hall A"},
        }
    if channel is Channel.EVENT:
        return {
            "schema": "kf.event",
            **envelope,
            "body": {
                "type": "peripheral_changed",
                "peripheral": {"name": "printer", "kind": "receipt_printer", "condition": "jam"},
                "previous": "ok",
            },
        }
    return {
        "schema": "kf.report",
        **envelope,
        "body": {
            "hall": "Hall A",
            "region": "North",
            "model": "KF-200",
            "agent_version": "1.0.0",
            "uptime_s": 5.0,
            "report_interval_s": 10.0,
            "peripherals": [
                {"name": "printer", "kind": "receipt_printer", "condition": "ok", "detail": "x"}
            ],
            "software": {},
            "dropped_reports": 0,
        },
    }


@dataclass(frozen=True)
class Garbage:
    kind: str  # what was done to it (for failure messages)
    topic: str
    payload: bytes
    reason: str  # the reject reason the server must count


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _semantic(channel: Channel, reason: str) -> str:
    """A known schema on a channel it does not belong to is refused before the content is read."""
    return "channel_mismatch" if channel in (Channel.UPDATE, Channel.USAGE) else reason


# --- Hypothesis strategies, one per kind of garbage -----------------------------------------

_ids = st.from_regex(r"\A[A-Z][A-Z0-9-]{2,20}\Z").map(lambda s: f"GARBAGE-{s}")
_channels = st.sampled_from(GARBAGE_CHANNELS)


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    text = _dumps(valid(channel, tid))
    bad = draw(
        st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80", b"\x80"])
    )
    at = draw(st.integers(0, len(text)))
    return Garbage("invalid_utf8", topic(tid, channel), text[:at] + bad + text[at:], "bad_json")


@st.composite
def deep_nesting(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    depth = draw(st.integers(17, 10_000))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opening * depth + "1" + closing * depth
    message = valid(channel, tid)
    field = draw(st.sampled_from(["body", "extra"]))
    text = _dumps({**message, field: "@@"}).replace(b'"@@"', nested.encode())
    return Garbage("deep_nesting", topic(tid, channel), text, "bad_json")


@st.composite
def huge_numbers(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    form = draw(st.sampled_from(["int_beyond_parser", "int_beyond_range", "float_overflow"]))
    if form == "int_beyond_parser":  # more digits than Python converts: not JSON we accept
        literal, reason = "9" * draw(st.integers(4301, 20_000)), "bad_json"
    elif form == "int_beyond_range":  # JSON, but above the envelope's 2**53
        literal = str(draw(st.integers(2**53 + 1, 10**300)))
        reason = _semantic(channel, "invalid")
    else:  # parses to infinity, which no field accepts
        literal = f"1e{draw(st.integers(309, 100_000))}"
        reason = _semantic(channel, "invalid")
    text = _dumps({**valid(channel, tid), "seq": "@@"}).replace(b'"@@"', literal.encode())
    return Garbage(f"huge_numbers:{form}", topic(tid, channel), text, reason)


@st.composite
def non_finite(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
    field = draw(st.sampled_from(["seq", "version", "extra"]))
    text = _dumps({**valid(channel, tid), field: "@@"}).replace(b'"@@"', literal.encode())
    return Garbage("non_finite", topic(tid, channel), text, "bad_json")


@st.composite
def negative_seq(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    message = {**valid(channel, tid), "seq": draw(st.integers(-(2**63), -1))}
    return Garbage(
        "negative_seq", topic(tid, channel), _dumps(message), _semantic(channel, "invalid")
    )


@st.composite
def implausible_time(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    when = draw(
        st.one_of(
            st.datetimes(datetime(1, 1, 1), datetime(1999, 12, 31), timezones=st.just(UTC)),
            st.datetimes(datetime(2200, 1, 2), datetime(9999, 12, 31), timezones=st.just(UTC)),
        )
    )
    sent_at: Any = draw(
        st.sampled_from(
            [
                when.isoformat(),
                when.strftime("%Y-%m-%dT%H:%M:%S"),  # naive: refused whatever the year
                int(when.timestamp()),  # a bare number: refused
                "+10000-01-01T00:00:00Z",
            ]
        )
    )
    message = {**valid(channel, tid), "sent_at": sent_at}
    return Garbage(
        "implausible_time", topic(tid, channel), _dumps(message), _semantic(channel, "invalid")
    )


@st.composite
def duplicated_keys(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    text = _dumps(valid(channel, tid))
    key = draw(st.sampled_from(["seq", "terminal_id", "schema"]))
    if draw(st.booleans()):
        text = b'{"%s":1,' % key.encode() + text[1:]  # repeated at the top level
    else:
        text = text.replace(b'"body":{', b'"body":{"dup":1,"dup":2,', 1)  # inside the body
    return Garbage("duplicated_keys", topic(tid, channel), text, "bad_json")


@st.composite
def long_strings(draw: st.DrawFn) -> Garbage:
    """A long string in a text field: invalid below the size limit, oversize above it."""
    channel, tid = draw(_channels), draw(_ids)
    char = draw(st.sampled_from(["a", "é", "\u4e2d"]))
    width = len(char.encode())  # the limits are in bytes
    length = draw(
        st.one_of(
            st.integers(65, (SERVER_MAX_PAYLOAD - 2000) // width),
            st.integers(SERVER_MAX_PAYLOAD // width + 1, 200_000 // width),
        )
    )
    message = valid(channel, tid)
    message["boot_id"] = char * length
    payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    reason = "oversize" if len(payload) > SERVER_MAX_PAYLOAD else _semantic(channel, "invalid")
    return Garbage("long_strings", topic(tid, channel), payload, reason)


@st.composite
def wrong_ids(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    form = draw(st.sampled_from(["other_terminal", "bad_topic_id", "bad_envelope_id"]))
    message = valid(channel, tid)
    if form == "other_terminal":
        message["terminal_id"] = draw(_ids.filter(lambda other: other != tid))
        return Garbage(
            form, topic(tid, channel), _dumps(message), _semantic(channel, "id_mismatch")
        )
    if form == "bad_topic_id":
        bad = draw(
            st.one_of(
                st.just(""),
                st.just("X" * 65),
                st.text(alphabet=" !$%&*()é€?:;,", min_size=1, max_size=10).map(lambda s: "A" + s),
                st.just(".hidden"),
            )
        )
        name = f"kf/v1/terminals/{bad}/{channel.value}"
        return Garbage(form, name, _dumps(message), "bad_topic")
    message["terminal_id"] = draw(st.sampled_from(["../etc", "a b", "", "é", "x" * 65]))
    return Garbage(form, topic(tid, channel), _dumps(message), _semantic(channel, "invalid"))


@st.composite
def unknown_schemas(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    message = valid(channel, tid)
    change: dict[str, Any] = draw(
        st.sampled_from(
            [
                {"schema": "kf.bogus"},
                {"version": 2},
                {"version": "1"},
                {"schema": None},
                {"version": 1.0},
            ]
        )
    )
    message.update(change)
    return Garbage("unknown_schema", topic(tid, channel), _dumps(message), "unknown_schema")


@st.composite
def wrong_channel(draw: st.DrawFn) -> Garbage:
    tid = draw(_ids)
    source = draw(st.sampled_from([Channel.STATE, Channel.REPORT, Channel.EVENT]))
    target = draw(_channels.filter(lambda c: c is not source))
    return Garbage(
        "wrong_channel", topic(tid, target), _dumps(valid(source, tid)), "channel_mismatch"
    )


@st.composite
def not_an_object(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    value = draw(
        st.one_of(
            st.lists(st.integers(), max_size=5),
            st.text(max_size=20),
            st.integers(),
            st.booleans(),
            st.none(),
        )
    )
    return Garbage("not_an_object", topic(tid, channel), _dumps(value), "bad_json")


@st.composite
def arbitrary_bytes(draw: st.DrawFn) -> Garbage:
    channel, tid = draw(_channels), draw(_ids)
    # A leading control byte can never start JSON, whatever follows.
    payload = draw(st.sampled_from([b"\x01", b"\x00", b"\x1b"])) + draw(st.binary(max_size=300))
    return Garbage("arbitrary_bytes", topic(tid, channel), payload, "bad_json")


GARBAGE = st.one_of(
    invalid_utf8(),
    deep_nesting(),
    huge_numbers(),
    non_finite(),
    negative_seq(),
    implausible_time(),
    duplicated_keys(),
    long_strings(),
    wrong_ids(),
    unknown_schemas(),
    wrong_channel(),
    not_an_object(),
    arbitrary_bytes(),
)


# --- publishing -----------------------------------------------------------------------------


class Publisher:
    """One raw paho client publishing arbitrary bytes at QoS 1 and waiting for each PUBACK."""

    def __init__(
        self, broker: LocalBroker, *, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
    ) -> None:
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=unique("garbage-pub"),
            protocol=protocol,
            reconnect_on_failure=False,
        )
        self.client.max_inflight_messages_set(200)
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(5):
            raise RuntimeError("the garbage publisher could not connect")

    def publish(self, items: list[tuple[str, bytes]]) -> None:
        pending = []
        for name, payload in items:
            pending.append(self.client.publish(name, payload, qos=1))
            if len(pending) >= 500:
                self._wait(pending)
                pending = []
        self._wait(pending)

    @staticmethod
    def _wait(pending: list[mqtt.MQTTMessageInfo]) -> None:
        for info in pending:
            info.wait_for_publish(10)
            assert info.is_published(), "the broker did not acknowledge a garbage message"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(private_broker: LocalBroker) -> Iterator[Publisher]:
    pub = Publisher(private_broker)
    try:
        yield pub
    finally:
        pub.close()


def _counters(server: Server) -> dict[str, float]:
    values = {r: metric(server, "kioskfleet_ingest_rejected_total", reason=r) for r in REASONS}
    values["internal"] = metric(server, "kioskfleet_ingest_rejected_total", reason="internal")
    values["duplicates"] = metric(server, "kioskfleet_ingest_duplicates_total")
    for channel in GARBAGE_CHANNELS:
        values[f"accepted:{channel.value}"] = metric(
            server, "kioskfleet_ingest_messages_total", channel=channel.value
        )
    return values


def _stored_rows(database_url: str) -> dict[str, int]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            return {
                name: conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()  # noqa: S608 - fixed names
                for name in ("terminal", "peripheral", "transition", "event")
                if name in tables
            }
    finally:
        engine.dispose()


def _assert_nothing_stored(server: Server) -> None:
    assert len(server.fleet) == 0
    assert api(server, "/api/v1/terminals").json()["total"] == 0
    rows = _stored_rows(server.settings.database_url)
    assert rows.get("terminal") == 0, rows
    assert all(count == 0 for count in rows.values()), rows


# --- the tests ------------------------------------------------------------------------------


def test_the_unmutated_messages_are_valid_so_each_mutation_is_what_gets_rejected() -> None:
    for channel in (Channel.STATE, Channel.REPORT, Channel.EVENT):
        message = decode(topic("GARBAGE-BASE", channel), _dumps(valid(channel, "GARBAGE-BASE")))
        assert message.terminal_id == "GARBAGE-BASE"


def test_garbage_on_every_channel_is_counted_by_reason_and_never_stored_or_fatal(
    private_server: ServerFactory, publisher: Publisher
) -> None:
    server = private_server()
    sent: Counter[str] = Counter()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(batch=st.lists(GARBAGE, min_size=1, max_size=8))
    def publish_and_count(batch: list[Garbage]) -> None:
        before = _counters(server)
        publisher.publish([(g.topic, g.payload) for g in batch])
        expected = dict(before)
        for g in batch:
            expected[g.reason] += 1
        deadline = time.monotonic() + 10
        while (got := _counters(server)) != expected:
            if time.monotonic() > deadline:
                kinds = [(g.kind, g.reason, g.topic[:60]) for g in batch]
                pytest.fail(f"sent {kinds}: expected {expected}, got {got}")
            time.sleep(0.02)
        sent.update(g.reason for g in batch)

    publish_and_count()

    assert sent.total() >= 40  # every example was published and counted
    assert metric(server, "kioskfleet_ingest_rejected_total", reason="internal") == 0
    assert api(server, "/healthz").status_code == 200
    _assert_nothing_stored(server)

    good = valid(Channel.REPORT, "GOOD-1")
    publisher.publish([(topic("GOOD-1", Channel.REPORT), _dumps(good))])
    wait_until(lambda: server.fleet.get("GOOD-1") is not None, what="a valid report afterwards")
    assert api(server, "/api/v1/terminals/GOOD-1").status_code == 200


def test_payload_above_the_brokers_size_limit_never_reaches_the_server(
    private_server: ServerFactory, private_broker: LocalBroker
) -> None:
    """1 MB: an MQTT 3.1.1 publisher gets its PUBACK and mosquitto drops the message."""
    server = private_server()
    before = _counters(server)
    message = valid(Channel.REPORT, "GARBAGE-HUGE")
    message["body"]["peripherals"][0]["detail"] = "x" * (1 << 20)
    payload = _dumps(message)
    assert len(payload) > BROKER_MESSAGE_SIZE_LIMIT
    old = Publisher(private_broker, protocol=MQTTProtocolVersion.MQTTv311)
    try:
        old.publish([(topic("GARBAGE-HUGE", Channel.REPORT), payload)])
        # A marker behind it: once it is counted, the huge message had its chance.
        old.publish([(topic("GARBAGE-MARK", Channel.REPORT), b"\x01marker")])
    finally:
        old.close()
    expected = {**before, "bad_json": before["bad_json"] + 1}
    wait_until(lambda: _counters(server) == expected, 10, "only the marker to be counted")
    assert api(server, "/healthz").status_code == 200
    _assert_nothing_stored(server)


def test_garbage_on_the_cmd_channel_is_not_the_servers_business(
    private_server: ServerFactory, publisher: Publisher
) -> None:
    server = private_server()
    before = _counters(server)
    publisher.publish(
        [
            (topic("GARBAGE-CMD", Channel.CMD), b"\xff not json"),
            (topic("GARBAGE-CMD", Channel.CMD), _dumps(valid(Channel.REPORT, "GARBAGE-CMD"))),
            (topic("GARBAGE-CMD", Channel.REPORT), b"\x01marker"),
        ]
    )
    expected = {**before, "bad_json": before["bad_json"] + 1}
    wait_until(lambda: _counters(server) == expected, 10, "only the marker on report")
    _assert_nothing_stored(server)


# --- memory under a sustained stream --------------------------------------------------------


def _garbage_round(rng: random.Random, count: int) -> list[tuple[str, bytes, str]]:
    """``count`` garbage messages of every kind, each from a terminal id never used before."""
    out = []
    for i in range(count):
        tid = f"GARBAGE-{secrets.token_hex(6)}"
        channel = GARBAGE_CHANNELS[i % len(GARBAGE_CHANNELS)]
        base = valid(channel, tid, seq=rng.randint(1, 10**6))
        text = _dumps(base)
        match i % 10:
            case 0:
                out.append((topic(tid, channel), text[:-1] + b"\xff}", "bad_json"))
            case 1:
                depth = rng.randint(17, 2000)
                out.append((topic(tid, channel), b"[" * depth + b"]" * depth, "bad_json"))
            case 2:
                out.append(
                    (
                        topic(tid, channel),
                        _dumps({**base, "seq": -i}),
                        _semantic(channel, "invalid"),
                    )
                )
            case 3:
                bad = {**base, "sent_at": "2999-01-01T00:00:00Z"}
                out.append((topic(tid, channel), _dumps(bad), _semantic(channel, "invalid")))
            case 4:
                out.append((topic(tid, channel), b'{"seq":1,' + text[1:], "bad_json"))
            case 5:
                other = {**base, "terminal_id": f"OTHER-{secrets.token_hex(6)}"}
                out.append((topic(tid, channel), _dumps(other), _semantic(channel, "id_mismatch")))
            case 6:
                out.append((f"kf/v1/terminals/bad id {i}/{channel.value}", text, "bad_topic"))
            case 7:
                out.append(
                    (topic(tid, channel), _dumps({**base, "schema": f"kf.x{i}"}), "unknown_schema")
                )
            case 8:
                big = {**base, "boot_id": "b" * rng.randint(SERVER_MAX_PAYLOAD, 66_000)}
                out.append((topic(tid, channel), _dumps(big), "oversize"))
            case _:
                out.append(
                    (
                        topic(tid, channel),
                        rng.randbytes(rng.randint(1, 2000)).replace(b"{", b"(") + b"\x01",
                        "bad_json",
                    )
                )
    return out


def _rejected_total(base_url: str, token: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", headers=bearer(token), timeout=5).text
    found = {}
    for match in re.finditer(
        r'^kioskfleet_ingest_rejected_total\{reason="(\w+)"\} (\S+)$', text, re.M
    ):
        found[match.group(1)] = float(match.group(2))
    return found


@pytest.fixture
def server_process(
    private_broker: LocalBroker, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """``kioskfleet server`` as a subprocess on SQLite (with an admin token), so its RSS is its own."""
    port = free_port()
    env = {
        **os.environ,
        "KIOSKFLEET_DATABASE_URL": f"sqlite:///{tmp_path}/server.db",
        "KIOSKFLEET_BROKER_URL": private_broker.url,
        "KIOSKFLEET_HTTP_PORT": str(port),
        "KIOSKFLEET_MQTT_CLIENT_ID": unique("kf-garbage-server"),
        "KIOSKFLEET_MQTT_SESSION_EXPIRY_S": "0",
        "KIOSKFLEET_DB_FLUSH_INTERVAL_S": "0.1",
    }
    binary = shutil.which("kioskfleet", path=str(Path(sys.executable).parent)) or "kioskfleet"
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [binary, "--log-level", "ERROR", "server"], env=env, stdout=log, stderr=log
    )
    base_url = f"http://127.0.0.1:{port}"
    token = admin_token_in(env["KIOSKFLEET_DATABASE_URL"])

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
        try:
            return httpx.get(base_url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 30, "the server subprocess to be ready")
        yield proc, base_url, token
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


MEMORY_ROUND = 6_000
# Every message of a round comes from a terminal id never seen before. A server that
# kept something per message or per id would grow with each round: measured here, the
# same rounds made of VALID reports (one fleet entry per new id) grew the server's RSS
# by 8-9 MB per round (~1.5 KB per terminal); the garbage rounds grew it by 0.1-0.2 MB
# (allocator noise). The bound sits between: 3 MiB, ~500 bytes per message.
MEMORY_GROWTH_BOUND = 3 * 2**20


def test_a_sustained_stream_of_garbage_does_not_grow_the_servers_memory(
    server_process: tuple[subprocess.Popen[bytes], str, str], private_broker: LocalBroker
) -> None:
    proc, base_url, token = server_process
    rng = random.Random(4)
    process = psutil.Process(proc.pid)
    pub = Publisher(private_broker)
    rss = []
    try:
        for _round in range(3):  # warm-up, then two measured rounds
            items = _garbage_round(rng, MEMORY_ROUND)
            before = _rejected_total(base_url, token)
            pub.publish([(name, payload) for name, payload, _ in items])
            expected = Counter(reason for _, _, reason in items)

            def counted(b: dict[str, float] = before, e: Counter[str] = expected) -> bool:
                now = _rejected_total(base_url, token)
                return all(now.get(r, 0) - b.get(r, 0) == e.get(r, 0) for r in REASONS)

            wait_until(
                counted,
                60,
                "the round's rejects to be counted",
            )
            time.sleep(0.5)
            rss.append(process.memory_info().rss)
    finally:
        pub.close()
    growth = rss[2] - rss[1]
    print(f"server RSS after each round (MB): {[round(r / 2**20, 1) for r in rss]}")
    after = _rejected_total(base_url, token)
    assert after.get("internal", 0) == 0
    assert httpx.get(base_url + "/healthz", timeout=5).status_code == 200
    terminals = httpx.get(base_url + "/api/v1/terminals", headers=bearer(token), timeout=5).json()
    assert terminals["total"] == 0
    assert growth < MEMORY_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MiB in the second round"

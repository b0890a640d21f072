"""Fixtures for the server's integration tests: a throw-away PostgreSQL database, running
servers, and raw MQTT terminals that publish ``protocol`` messages exactly as an agent would.

PostgreSQL comes from ``KIOSKFLEET_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``): each test gets a database
``kf_test_<random>`` that is dropped afterwards. If the server is unreachable
the test fails with a clear message, unless ``KIOSKFLEET_SKIP_POSTGRES=1``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright
from prometheus_client import CollectorRegistry

from kioskfleet.local_broker import LocalBroker
from kioskfleet.local_prometheus import LocalPrometheus, project_rules_file, shortened_rules
from kioskfleet.scratch_database import default_admin_url, scratch_postgres
from protocol.codec import encode
from protocol.messages import SCHEMA_CHANNEL, Message
from protocol.topics import Channel, topic
from server.access import Role
from server.access_store import AccessStore
from server.config import Settings
from server.main import Server
from server.storage import Storage
from server.tokens import Tokens, write_secret_file
from tests.support.fleet_messages import periph, peripheral_event, report, state
from tests.support.pki import ClientFiles
from tests.support.waiting import HTTP_TIMEOUT_S, wait_until


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped after the test."""
    if os.environ.get("KIOSKFLEET_SKIP_POSTGRES") == "1":
        pytest.skip("KIOSKFLEET_SKIP_POSTGRES=1")
    admin = default_admin_url()
    database = contextlib.ExitStack()
    try:
        url = database.enter_context(scratch_postgres(admin))
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at {admin} is unreachable ({exc}). Start it, point "
            "KIOSKFLEET_TEST_POSTGRES_URL at one, or set KIOSKFLEET_SKIP_POSTGRES=1 to skip.",
            pytrace=False,
        )
    with database:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db/kioskfleet.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    """An open store (the migrations ran) on each database; a test file may define its own."""
    opened = Storage(database_url)
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


# --- running servers ------------------------------------------------------------------------


def server_settings(broker_url: str, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "broker_url": broker_url,
        "http_port": 0,
        "mqtt_client_id": unique("kf-test-server"),
        "mqtt_session_expiry_s": 0,  # gone at disconnect: no stale share-group member
        "mqtt_keepalive_s": 5,
        "db_flush_interval_s": 0.1,
        "offline_check_interval_s": 0.2,
        "reject_log_interval_s": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


_ADMIN_TOKENS: weakref.WeakKeyDictionary[Server, str] = weakref.WeakKeyDictionary()


def admin_token_in(database_url: str) -> str:
    """A new admin token stored in the database at ``database_url`` (migrated first), made
    through the token module as ``kioskfleet token create`` would; returns its secret. A
    server started on that database then makes no bootstrap token."""
    storage = Storage(Settings(database_url=database_url).database_url)
    storage.open()
    try:
        _record, secret = Tokens(AccessStore(storage)).create(
            name=unique("test-admin"), role=Role.ADMIN, created_by="test"
        )
    finally:
        storage.close()
    return secret


def admin_token(server: Server) -> str:
    """The admin token the fixtures made for ``server`` (what ``api()`` sends); for a
    server a test built itself, one made now on the running server."""
    if server not in _ADMIN_TOKENS:
        _ADMIN_TOKENS[server] = token(server, Role.ADMIN)
    return _ADMIN_TOKENS[server]


def token(server: Server, role: Role, *, name: str | None = None, vendor: str | None = None) -> str:
    """A new token of ``role`` (a vendor token for vendor ``acme`` unless told) on a running
    ``server``; returns its secret."""
    if role is Role.VENDOR and vendor is None:
        vendor = "acme"
    _record, secret = server.tokens.create(
        name=name or unique(f"test-{role.value}"), role=role, vendor=vendor, created_by="test"
    )
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


class ServerFactory:
    """Starts servers on free ports; stops every one it started at teardown. Each gets an
    admin token made before its start (``admin_token(server)``, sent by ``api()``)."""

    def __init__(self, broker: LocalBroker, default_db: str) -> None:
        self.broker = broker
        self.default_db = default_db
        self.started: list[Server] = []

    def __call__(self, **overrides: Any) -> Server:
        broker_url = overrides.pop("broker_url", self.broker.url)
        database_url = overrides.pop("database_url", self.default_db)
        secret = admin_token_in(database_url)
        server = Server(
            server_settings(broker_url, database_url, **overrides), registry=CollectorRegistry()
        )
        _ADMIN_TOKENS[server] = secret
        self.started.append(server)
        server.start()
        wait_until(lambda: server.mqtt.connected, 10, "the server to subscribe")
        return server

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


@pytest.fixture
def start_server(broker: LocalBroker, tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(broker, f"sqlite:///{tmp_path}/kioskfleet.db")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def private_server(private_broker: LocalBroker, tmp_path: Path) -> Iterator[ServerFactory]:
    """Servers on this test's own mosquitto: nothing another test left behind reaches them."""
    factory = ServerFactory(private_broker, f"sqlite:///{tmp_path}/kioskfleet.db")
    try:
        yield factory
    finally:
        factory.stop_all()


def api(server: Server, path: str, **params: Any) -> httpx.Response:
    """GET ``path`` with the server's admin token."""
    return httpx.get(
        server.base_url + path,
        params=params,
        headers=bearer(admin_token(server)),
        timeout=HTTP_TIMEOUT_S,
    )


def scrape(server: Server) -> str:
    """``/metrics`` as Prometheus reads it (with the admin token)."""
    response = api(server, "/metrics")
    response.raise_for_status()
    return response.text


def metric(server: Server, name: str, **labels: str) -> float:
    value = server.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


# --- raw MQTT terminals ---------------------------------------------------------------------


def _use_tls(client: mqtt.Client, files: ClientFiles | None) -> None:
    if files is not None:
        client.tls_set(
            ca_certs=str(files.ca_file), certfile=str(files.cert_file), keyfile=str(files.key_file)
        )


class RawTerminal:
    """One terminal as the broker sees it: a raw paho client publishing protocol messages."""

    def __init__(
        self,
        broker: LocalBroker,
        terminal_id: str,
        *,
        hall: str = "Hall A",
        region: str = "North",
        with_will: bool = False,
        tls: ClientFiles | None = None,
    ) -> None:
        """``tls``: connect with this certificate (a broker in identity mode)."""
        self.id = terminal_id
        self.tls = tls
        self.hall = hall
        self.region = region
        self.boot = "boot-" + secrets.token_hex(6)
        self.seq = 0
        self.retained_topics: set[str] = set()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=unique(f"raw-{terminal_id}"),
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.on_connect = lambda *_a: self._connected.set()
        _use_tls(self.client, tls)
        if with_will:
            will = state(self.id, False, seq=0, boot=self.boot, sent_at=datetime.now(UTC))
            self.client.will_set(self.topic(Channel.STATE), encode(will), qos=1, retain=True)
            self.retained_topics.add(self.topic(Channel.STATE))
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        if not self._connected.wait(5):
            raise RuntimeError("raw terminal could not connect")

    def topic(self, channel: Channel) -> str:
        return topic(self.id, channel)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def publish(self, message: Message, *, retain: bool = False) -> None:
        channel = SCHEMA_CHANNEL[message.schema_]
        self.publish_raw(self.topic(channel), encode(message), retain=retain)

    def publish_raw(self, topic_name: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic_name, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        if retain:
            self.retained_topics.add(topic_name)

    def report(
        self,
        peripherals: list[dict[str, str]] | None = None,
        *,
        interval: float = 10.0,
        seq: int | None = None,
        software: dict[str, str] | None = None,
    ) -> Message:
        message = report(
            self.id,
            self.next_seq() if seq is None else seq,
            boot=self.boot,
            sent_at=datetime.now(UTC),
            peripherals=peripherals,
            hall=self.hall,
            region=self.region,
            interval=interval,
            software=software,
        )
        self.publish(message)
        return message

    def event(self, p: dict[str, str], previous: str | None) -> Message:
        message = peripheral_event(
            self.id, self.next_seq(), p, previous, sent_at=datetime.now(UTC), boot=self.boot
        )
        self.publish(message)
        return message

    def online(self) -> None:
        message = state(self.id, True, seq=self.seq, boot=self.boot, sent_at=datetime.now(UTC))
        self.publish(message, retain=True)

    def vanish(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the will."""
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client.loop_stop()

    def close(self, broker: LocalBroker) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        if self.retained_topics:  # leave no retained state behind for later tests
            cleaner = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            _use_tls(cleaner, self.tls)
            cleaner.connect("127.0.0.1", broker.port)
            cleaner.loop_start()
            for name in self.retained_topics:
                cleaner.publish(name, b"", qos=1, retain=True).wait_for_publish(5)
            cleaner.disconnect()
            cleaner.loop_stop()


class TerminalFactory:
    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self.made: list[RawTerminal] = []

    def __call__(self, terminal_id: str | None = None, **kwargs: Any) -> RawTerminal:
        terminal = RawTerminal(self.broker, terminal_id or unique("T"), **kwargs)
        self.made.append(terminal)
        return terminal


@pytest.fixture
def terminals(broker: LocalBroker) -> Iterator[TerminalFactory]:
    factory = TerminalFactory(broker)
    try:
        yield factory
    finally:
        for t in factory.made:
            t.close(broker)


@pytest.fixture
def private_terminals(private_broker: LocalBroker) -> Iterator[TerminalFactory]:
    """Raw terminals on the test's own mosquitto (see ``private_server``)."""
    factory = TerminalFactory(private_broker)
    try:
        yield factory
    finally:
        for t in factory.made:
            t.close(private_broker)


__all__ = [
    "RawTerminal",
    "ServerFactory",
    "TerminalFactory",
    "admin_token",
    "admin_token_in",
    "api",
    "bearer",
    "metric",
    "periph",
    "scrape",
    "server_settings",
    "token",
    "unique",
    "wait_until",
]


# --- a real Prometheus and a real Chromium --------------------------------------------------

ALERT_FOR = "2s"  # the ``for:`` of the alerts under test, shortened
SHORTENED = {"TerminalOffline": ALERT_FOR, "PrinterPaperOut": ALERT_FOR}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[Server], LocalPrometheus]]:
    """Start a Prometheus with the shortened rules that scrapes the given server every second."""
    started: list[LocalPrometheus] = []

    def start(server: Server) -> LocalPrometheus:
        rules = tmp_path / "kioskfleet.rules.yml"
        rules.write_text(shortened_rules(project_rules_file().read_text(), SHORTENED))
        target = server.base_url.removeprefix("http://")
        token_file = tmp_path / "prometheus.token"  # /metrics needs a viewer token
        write_secret_file(token_file, token(server, Role.VIEWER, name="prometheus"))
        prom = LocalPrometheus(
            tmp_path / "prometheus",
            [target],
            token_file=token_file,
            rule_files=[rules],
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(locale="en-US")
    try:
        yield made
    finally:
        made.close()

"""What a run left on a broker, and removing it: retained messages and sessions by client id.

``make demo`` may be pointed at a shared broker some day, and its own broker lives
on between Ctrl-C and the next run's start: it must leave nothing of its own behind.
Its terminals and its server connect without a persistent session (session expiry
0), and at the end ``sweep_retained`` clears the retained messages under
``kf/v1/terminals/<prefix>*`` (the terminals' ``state``: their last ``offline``),
connected as the server identity (the only one the ACL lets write other terminals'
``state``). ``retained_topics`` and ``session_present`` are how a test checks.

The one paho adapter of the kioskfleet tools: everything else gets topic names and
booleans. MQTT 5, a clean start and no session of its own. Raises ``BrokerSweepError``.
"""

from __future__ import annotations

import secrets
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.broker_url import parse_broker_url
from protocol.topics import TOPIC_PREFIX

__all__ = [
    "BrokerLogin",
    "BrokerSweepError",
    "retained_topics",
    "session_present",
    "sweep_retained",
]

_TIMEOUT_S = 10.0
_BARRIER = "kioskfleet/sweep/barrier"  # an extra SUBSCRIBE whose SUBACK ends the retained burst


class BrokerSweepError(RuntimeError):
    """The broker could not be reached, refused us, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    """Where and as whom: ``mqtt://`` or ``mqtts://`` URL, and for TLS the CA chain and
    optionally a client certificate and key."""

    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class _Client:
    def __init__(self, login: BrokerLogin, client_id: str | None, clean_start: bool) -> None:
        self.login = login
        self.clean_start = clean_start
        self.connack = threading.Event()
        self.session_present = False
        self.refused: str | None = None
        self.subacks: dict[int, threading.Event] = {}
        self.pubacks: dict[int, threading.Event] = {}
        self.retained: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"kioskfleet-sweep-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        address = parse_broker_url(login.url)
        self.host, self.port = address.host, address.port
        if address.tls:
            self.client.tls_set(
                ca_certs=str(login.ca_file) if login.ca_file else None,
                certfile=str(login.cert_file) if login.cert_file else None,
                keyfile=str(login.key_file) if login.key_file else None,
            )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.refused = str(rc)
        else:
            self.session_present = bool(flags.session_present)
        self.connack.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        with self._lock:
            self.subacks.setdefault(mid, threading.Event()).set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self.pubacks.setdefault(mid, threading.Event()).set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.payload:
            with self._lock:
                self.retained.append(msg.topic)

    def __enter__(self) -> _Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.SessionExpiryInterval = 0
        try:
            self.client.connect(
                self.host, self.port, keepalive=30, clean_start=self.clean_start, properties=props
            )
        except (OSError, ssl.SSLError) as exc:
            raise BrokerSweepError(f"cannot reach {self.login.url}: {exc}") from exc
        self.client.loop_start()
        if not self.connack.wait(_TIMEOUT_S):
            self.__exit__()
            raise BrokerSweepError(f"no CONNACK from {self.login.url}")
        if self.refused is not None:
            self.__exit__()
            raise BrokerSweepError(f"{self.login.url} refused the connection: {self.refused}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _wait(self, table: dict[int, threading.Event], mid: int, what: str) -> None:
        with self._lock:
            event = table.setdefault(mid, threading.Event())
        if not event.wait(_TIMEOUT_S):
            raise BrokerSweepError(f"no {what} from {self.login.url}")

    def retained_under(self, topic_filter: str) -> list[str]:
        """Topics holding a retained message that match ``topic_filter``."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        self._wait(self.subacks, int(mid or 0), "SUBACK")
        # The broker sends a subscription's retained messages before it handles the next
        # SUBSCRIBE of the same connection: the barrier's SUBACK ends the burst.
        _, barrier = self.client.subscribe(_BARRIER, qos=0)
        self._wait(self.subacks, int(barrier or 0), "SUBACK")
        with self._lock:
            return sorted(set(self.retained))

    def clear(self, topic_name: str) -> None:
        info = self.client.publish(topic_name, b"", qos=1, retain=True)
        self._wait(self.pubacks, info.mid, "PUBACK")


def _terminal_filter() -> str:
    return f"{TOPIC_PREFIX}/+/+"


def _own(topics: list[str], terminal_prefix: str) -> list[str]:
    start = f"{TOPIC_PREFIX}/{terminal_prefix}"
    return [t for t in topics if t.startswith(start)]


def retained_topics(login: BrokerLogin, terminal_prefix: str = "") -> list[str]:
    """The terminal topics (``kf/v1/terminals/<prefix>*/...``) holding a retained message."""
    with _Client(login, None, True) as client:
        return _own(client.retained_under(_terminal_filter()), terminal_prefix)


def sweep_retained(login: BrokerLogin, terminal_prefix: str) -> list[str]:
    """Clear every retained message under ``kf/v1/terminals/<terminal_prefix>*``; the topics
    cleared. ``terminal_prefix`` must not be empty (never sweep a whole shared fleet)."""
    if not terminal_prefix:
        raise ValueError("sweep_retained needs the run's own terminal id prefix")
    with _Client(login, None, True) as client:
        topics = _own(client.retained_under(_terminal_filter()), terminal_prefix)
        for topic_name in topics:
            client.clear(topic_name)
    return topics


def session_present(login: BrokerLogin, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id`` (connects once as it without a
    clean start and session expiry 0, so it leaves none either)."""
    with _Client(login, client_id, False) as client:
        return client.session_present

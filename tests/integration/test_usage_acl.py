"""The ``usage`` channel through the production broker setup (TLS listener, per-terminal
certificates, the generated ACL): a terminal's transaction reaches the server's
``usage_event``; one it publishes under another terminal's id is dropped by the broker."""

from __future__ import annotations

import pytest

from kioskfleet.broker_setup import BrokerSetup
from protocol.codec import encode
from protocol.topics import Channel, topic
from server.usage_store import usage_events
from tests.integration import test_broker_identity
from tests.integration.conftest import ServerFactory, TerminalFactory, api
from tests.integration.test_broker_identity import identified_server
from tests.support.fleet_messages import usage
from tests.support.pki import TestPki
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

pki = test_broker_identity.pki
identity_broker = test_broker_identity.identity_broker
broker = test_broker_identity.broker
setup = test_broker_identity.setup


def test_a_terminal_may_publish_its_own_usage_and_not_anothers(
    pki: TestPki, setup: BrokerSetup, start_server: ServerFactory, terminals: TerminalFactory
) -> None:
    server = identified_server(start_server, setup, broker_url=start_server.broker.url)
    a = terminals("T-USE-A", tls=pki.terminal("T-USE-A"))
    b = terminals("T-USE-B", tls=pki.terminal("T-USE-B"))
    for t in (a, b):
        t.report()
    wait_until(lambda: api(server, "/api/v1/terminals/T-USE-B").status_code == 200, 10)

    forged = usage("T-USE-B", 50, "tax.invoice.print", boot=b.boot)
    a.publish_raw(topic("T-USE-B", Channel.USAGE), encode(forged))  # the ACL drops it
    own = usage("T-USE-A", a.next_seq(), "tax.invoice.print", boot=a.boot)
    a.publish(own)

    wait_until(
        lambda: len(usage_events(server.storage.engine, "T-USE-A", 10)) == 1, 10, "A's usage"
    )
    b.publish(usage("T-USE-B", b.next_seq(), "info.hours", boot=b.boot))  # after the forgery
    wait_until(
        lambda: len(usage_events(server.storage.engine, "T-USE-B", 10)) == 1, 10, "B's own usage"
    )
    assert [r.service for r in usage_events(server.storage.engine, "T-USE-B", 10)] == ["info.hours"]

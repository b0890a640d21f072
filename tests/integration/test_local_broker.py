"""The broker fixture really runs mosquitto with the project's config."""

from __future__ import annotations

import socket

from kioskfleet.local_broker import LocalBroker


def test_broker_fixture_listens_on_loopback_with_project_config(broker: LocalBroker) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=2) as sock:
        assert sock.getpeername()[1] == broker.port
    conf = (broker.workdir / "mosquitto.conf").read_text()
    assert "max_keepalive 300" in conf
    assert conf.startswith(f"listener {broker.port} 127.0.0.1")

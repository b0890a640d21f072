"""The server reaches the broker over TLS (mqtts://) with the CA it is given."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kioskfleet.local_broker import LocalBroker, free_port
from tests.integration.conftest import ServerFactory, TerminalFactory, api, wait_until

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[LocalBroker, int, Path]]:
    """A mosquitto with a plain listener and a TLS listener whose certificate our CA signed."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=kf-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=pki)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "broker.key", "-out", "broker.csr", cwd=pki)  # fmt: skip
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "broker.pem",
             cwd=pki)  # fmt: skip
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'broker.pem'}\nkeyfile {pki / 'broker.key'}\n"
    )
    broker = LocalBroker(tmp_path / "mosquitto", extra_conf=extra).start()
    try:
        yield broker, tls_port, pki / "ca.pem"
    finally:
        broker.stop()


def test_server_ingests_over_tls_with_the_fleet_ca(
    tls_broker: tuple[LocalBroker, int, Path], tmp_path: Path
) -> None:
    broker, tls_port, ca = tls_broker
    servers = ServerFactory(broker, f"sqlite:///{tmp_path}/kf.db")
    terminals = TerminalFactory(broker)  # terminals publish on the plain listener
    try:
        server = servers(broker_url=f"mqtts://127.0.0.1:{tls_port}", broker_ca_file=ca)
        t = terminals()
        t.report()
        wait_until(lambda: api(server, f"/api/v1/terminals/{t.id}").status_code == 200)
        assert server.settings.broker.tls
    finally:
        for t in terminals.made:
            t.close(broker)
        servers.stop_all()

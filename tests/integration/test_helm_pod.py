"""The chart's pod, run here: a real server with the chart's environment and files answers the chart's probes.

The chart is rendered by the Helm SDK (as in ``tests/unit/test_helm_chart.py``);
the container's environment is the ConfigMap plus the Deployment's ``env``, and
its mounts are emulated: every ``volumeMount`` path is re-rooted under a
temporary folder, the Secrets its volumes name are written there as the files
Kubernetes would project (their keys, or their ``items``), and every
``KIOSKFLEET_*`` value that is an absolute path is re-rooted the same way. Then
``kioskfleet server`` runs as a subprocess with that environment, against a real
mosquitto: plain MQTT with the default values, and with TLS to the broker (the
server identity ``kioskfleet broker-config`` issues), HTTPS and the device CA on
the data volume. Each probe of the container (startup, liveness, readiness) is
asked as the kubelet asks it: its scheme and path on the container port, no
certificate check. The one change to the chart's environment: the server binds
127.0.0.1 instead of 0.0.0.0 (this machine's tests listen on loopback only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml

from kioskfleet.local_broker import LocalBroker, free_port
from server.device_ca import generate_key, write_pem, write_private_key
from tests.integration.conftest import wait_until
from tests.support.pki import TestPki

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHART = Path(__file__).resolve().parents[2] / "helm" / "kioskfleet"
SERVER_IDENTITY = "kioskfleet:server"


def _rendered(values: dict[str, Any]) -> dict[str, Any]:
    """The chart's objects by kind (one of each kind used here)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="kf", namespace="kiosk", is_install=True)
    objects = [
        doc
        for path, text in rendered.items()
        if not path.endswith("/NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return {o["kind"]: o for o in objects}


@dataclass
class Pod:
    """One server container as the chart describes it, run as a local process."""

    root: Path  # where the container's absolute paths are re-rooted
    container: dict[str, Any]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        program, *arguments = self.container["command"]
        assert program == "kioskfleet"  # the console script of kioskfleet.cli:main
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kioskfleet.cli", *arguments],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def probe(self, name: str) -> int | None:
        """The status code the kubelet would get for the container's probe ``name``."""
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        get = self.container[name]["httpGet"]
        assert get["port"] == "http"
        (port,) = (p["containerPort"] for p in self.container["ports"] if p["name"] == "http")
        url = f"{get['scheme'].lower()}://127.0.0.1:{port}{get['path']}"
        try:
            return httpx.get(url, verify=False, timeout=2).status_code  # noqa: S501 -- as the kubelet
        except httpx.HTTPError:
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def pod_from_chart(
    values: dict[str, Any], secrets: dict[str, dict[str, Path]], root: Path, database_url: str
) -> Pod:
    """Render the chart with ``values`` and lay out its container under ``root``.

    ``secrets`` maps a Secret's name to its keys' files (what ``kubectl create secret
    generic NAME --from-file=KEY=FILE`` would hold)."""
    objects = _rendered(values)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue  # an emptyDir or a claim: an empty folder
        files = secrets[secret["secretName"]]
        items = secret.get("items") or [{"key": k, "path": k} for k in files]
        for item in items:
            shutil.copyfile(files[item["key"]], target / item["path"])
    env = dict(objects["ConfigMap"]["data"])
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("kioskfleet-database", "url")
            env[var["name"]] = database_url
    for name, value in env.items():
        if name.startswith("KIOSKFLEET_") and value.startswith("/"):
            env[name] = str(root / value.lstrip("/"))
    env["KIOSKFLEET_HTTP_HOST"] = "127.0.0.1"  # loopback only on this machine
    env["HOME"] = str(root / "tmp")
    keep = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_")}
    return Pod(root, container, {**keep, **env}, root / "server.log")


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    try:
        yield started
    finally:
        for pod in started:
            pod.stop()


def _wait_probes(pod: Pod) -> None:
    pod.start()
    wait_until(lambda: pod.probe("startupProbe") == 200, 60, "the startup probe")
    assert pod.probe("livenessProbe") == 200
    wait_until(lambda: pod.probe("readinessProbe") == 200, 30, "the readiness probe")


def test_default_values_pod_answers_its_probes(
    private_broker: LocalBroker, tmp_path: Path, pods: list[Pod]
) -> None:
    port = free_port()
    values = {"broker": {"url": private_broker.url}, "service": {"port": port}}
    pod = pod_from_chart(values, {}, tmp_path / "pod", f"sqlite:///{tmp_path}/db/kf.db")
    pods.append(pod)
    assert pod.container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    _wait_probes(pod)


def test_tls_pod_with_https_and_device_ca_answers_its_probes(
    tmp_path: Path, pods: list[Pod]
) -> None:
    pki = TestPki(tmp_path / "pki")
    broker_port = free_port()
    setup = pki.broker_setup(broker_port, (SERVER_IDENTITY,))
    broker = LocalBroker(tmp_path / "mosquitto", port=broker_port, identity=setup.identity).start()
    try:
        https_key = generate_key()
        https_cert = pki.ca.issue_service(
            "127.0.0.1", https_key.public_key(), sans=["127.0.0.1", "localhost"]
        )
        write_pem(tmp_path / "https.pem", https_cert, pki.ca.issuing)
        write_private_key(tmp_path / "https.key", https_key)
        cert, key = setup.server_credentials[SERVER_IDENTITY]
        secrets = {
            "kf-broker-tls": {"ca.crt": setup.identity.ca_file, "tls.crt": cert, "tls.key": key},
            "kf-https": {"tls.crt": tmp_path / "https.pem", "tls.key": tmp_path / "https.key"},
        }
        values = {
            "broker": {
                "url": f"mqtts://127.0.0.1:{broker_port}",
                "tls": {"existingSecret": "kf-broker-tls"},
            },
            "https": {"existingSecret": "kf-https"},
            "deviceCa": {"enabled": True},
            "service": {"port": free_port()},
        }
        root = tmp_path / "pod"
        pod = pod_from_chart(values, secrets, root, f"sqlite:///{tmp_path}/db/kf.db")
        pods.append(pod)
        # the device CA is copied onto the data volume, as docs/deploy.md says
        shutil.copytree(pki.ca_dir, Path(pod.env["KIOSKFLEET_CA_DIR"]))
        assert pod.container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
        assert pod.env["KIOSKFLEET_BROKER_CERT_FILE"].startswith(str(root / "etc"))
        # ready means subscribed: over TLS, with the mounted server identity
        _wait_probes(pod)
    finally:
        broker.stop()

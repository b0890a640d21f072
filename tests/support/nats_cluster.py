"""A private three-node nats-server JetStream cluster with an MQTT listener on each node.

Each node gets free loopback ports (client, monitoring HTTP, cluster route,
MQTT), its own JetStream store directory under ``workdir`` and a log file
there. ``start`` waits until every node answers ``/healthz`` and the cluster
has a JetStream meta leader (``/jsz``); ``kill(i)`` is a SIGKILL of one node
(nothing flushed), ``start_node(i)`` brings it back on the same ports and
store, and ``wait_healthy`` waits for the cluster to settle again. The MQTT
side of nats-server 2.9 speaks MQTT 3.1.1 only and refuses ``.`` and spaces in
topics. It never touches a nats-server it did not start (the system one on
4222 included).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from kioskfleet.local_broker import free_port

__all__ = ["NatsCluster", "NatsClusterError", "NatsNode"]

CLUSTER_NAME = "kf-test"
# where nats-server 2.9 keeps every QoS 1 message its MQTT clients publish
MQTT_MESSAGES_STREAM = "$MQTT_msgs"


class NatsClusterError(RuntimeError):
    """nats-server is missing, a node exited, or the cluster did not become healthy in time."""


@dataclass
class NatsNode:
    """One node's name, ports and current process."""

    name: str
    client_port: int
    http_port: int
    route_port: int
    mqtt_port: int
    store_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if found is None:
        raise NatsClusterError("nats-server is not installed (scripts/system-deps.sh)")
    return found


class NatsCluster:
    """Three nodes routed to each other; MQTT sessions and streams kept with 3 replicas."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.binary = _binary()
        self.nodes = self._new_nodes(nodes)

    def _new_nodes(self, count: int, attempt: int = 0) -> list[NatsNode]:
        stores = "store" if attempt == 0 else f"retry{attempt}-store"
        return [
            NatsNode(
                name=f"n{i + 1}",
                client_port=free_port(),
                http_port=free_port(),
                route_port=free_port(),
                mqtt_port=free_port(),
                store_dir=self.workdir / f"{stores}{i + 1}",
                log_path=self.workdir / f"n{i + 1}.log",
            )
            for i in range(count)
        ]

    def _config(self, node: NatsNode) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes)
        path = self.workdir / f"{node.name}.conf"
        path.write_text(
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f'jetstream {{ store_dir: "{node.store_dir}", max_memory_store: 256MB,'
            " max_file_store: 2GB }\n"
            f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{node.route_port},"
            f" routes: [ {routes} ] }}\n"
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: {len(self.nodes)} }}\n",
            encoding="utf-8",
        )
        return path

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node and wait for a healthy cluster. Raises NatsClusterError.

        A port taken between ``free_port`` and the node's bind (parallel test workers) makes
        a node exit at once: the cluster then starts again, twice at most, on new ports."""
        for attempt in range(3):
            for i in range(len(self.nodes)):
                self.start_node(i, wait=False)
            try:
                self.wait_healthy(timeout)
                return self
            except NatsClusterError as exc:
                if attempt == 2 or "address already in use" not in str(exc):
                    raise
                self.stop()
                self.nodes = self._new_nodes(len(self.nodes), attempt + 1)
        raise AssertionError("unreachable")

    def start_node(self, index: int, *, wait: bool = True, timeout: float = 30.0) -> None:
        """(Re)start node ``index`` on its ports and store; with ``wait``, until the cluster has
        a meta leader again (its streams may still be catching up: ``wait_healthy(current=False)``).
        """
        node = self.nodes[index]
        if node.running:
            raise NatsClusterError(f"{node.name} is already running")
        with node.log_path.open("ab") as log:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(self._config(node))],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_healthy(timeout, current=False)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: nothing flushed; its clients see the socket close."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
        node.proc = None

    def stop(self) -> None:
        """SIGTERM every node (SIGKILL after 10 s)."""
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)
            node.proc = None

    def meta_leader(self, index: int) -> str | None:
        """The JetStream meta leader as node ``index`` sees it (None: none, or no answer)."""
        node = self.nodes[index]
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            jsz = httpx.get(f"http://127.0.0.1:{node.http_port}/jsz", timeout=1).json()
            leader = jsz["meta_cluster"].get("leader")
            return str(leader) if leader else None
        return None

    def wait_healthy(self, timeout: float = 30.0, *, current: bool = True) -> str:
        """Wait until every running node agrees on one running meta leader and, with ``current``,
        answers ``/healthz`` 200 (every stream replica caught up; a node restarted under load
        can take longer than ``timeout`` for that).

        Returns the leader's name. Raises NatsClusterError naming what is missing.
        """
        deadline = time.monotonic() + timeout
        problem = "not checked yet"
        while time.monotonic() < deadline:
            problem = self._problem(current)
            if not problem:
                leader = self.meta_leader(self._running()[0])
                assert leader is not None  # _problem checked it
                return leader
            time.sleep(0.1)
        raise NatsClusterError(f"the NATS cluster is not healthy after {timeout}s: {problem}")

    def _running(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.proc is not None]

    def _problem(self, current: bool) -> str:
        leaders: set[str | None] = set()
        for i in self._running():
            node = self.nodes[i]
            assert node.proc is not None
            if node.proc.poll() is not None:
                tail = node.log_path.read_text(errors="replace")[-2000:]
                raise NatsClusterError(f"{node.name} exited with {node.proc.returncode}: {tail}")
            if current:
                try:
                    health = httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=1)
                except httpx.HTTPError as exc:
                    return f"{node.name} /healthz: {exc}"
                if health.status_code != 200:
                    return f"{node.name} /healthz {health.status_code}: {health.text[:200]}"
            leaders.add(self.meta_leader(i))
        running = {self.nodes[i].name for i in self._running()}
        if len(leaders) != 1 or not leaders <= running:  # a killed leader is seen for a while
            return f"meta leaders seen: {sorted(map(str, leaders))}, running: {sorted(running)}"
        return ""

    def stream_leader(self, stream: str = MQTT_MESSAGES_STREAM) -> int | None:
        """The index of the node leading ``stream`` (by default the stream nats-server's MQTT
        side stores every QoS 1 message in), as the first running node reports it."""
        for i in self._running():
            node = self.nodes[i]
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                jsz = httpx.get(
                    f"http://127.0.0.1:{node.http_port}/jsz", params={"streams": "true"}, timeout=2
                ).json()
                for account in jsz.get("account_details", []):
                    for detail in account.get("stream_detail", []):
                        if detail["name"] == stream:
                            leader = detail["cluster"].get("leader")
                            names = [n.name for n in self.nodes]
                            return names.index(leader) if leader in names else None
        return None

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The kiosk application's interface over a real Unix socket, with the documented client."""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.install_gate import GateLimits, InstallGate, Refusal
from agent.kiosk_interface import (
    ErrorCode,
    KioskInterface,
    KioskInterfaceConfig,
    KioskSocketError,
)
from protocol.usage import Outcome, UsageBody

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_EXAMPLE = re.compile(r"<!-- example-client -->\s*```python\n(?P<code>.*?)```", re.DOTALL)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # a short path: a Unix socket's path is limited to 108 bytes, pytest's tmp_path can be longer
    directory = Path(tempfile.mkdtemp(prefix="kf-kiosk-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gate(clock: FakeClock) -> InstallGate:
    return InstallGate(clock, GateLimits(max_session_s=900, max_defer_s=3600))


def _serve(gate: InstallGate, path: Path, **bounds: Any) -> KioskInterface:
    interface = KioskInterface(gate, KioskInterfaceConfig(path=path, **bounds))
    interface.start()
    return interface


@pytest.fixture
def served(gate: InstallGate, socket_dir: Path) -> Iterator[tuple[KioskInterface, Path]]:
    path = socket_dir / "kiosk.sock"
    interface = _serve(gate, path)
    yield interface, path
    interface.close()


class _Client:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def send(self, raw: bytes) -> dict[str, Any] | None:
        self.sock.sendall(raw)
        line = self.file.readline()
        return json.loads(line) if line else None

    def request(self, name: str, **fields: Any) -> dict[str, Any]:
        answer = self.send(json.dumps({"request": name, **fields}).encode() + b"\n")
        assert answer is not None, "the interface closed the connection"
        return answer

    def at_eof(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextlib.contextmanager
def _client(path: Path) -> Iterator[_Client]:
    client = _Client(path)
    try:
        yield client
    finally:
        client.close()


@dataclass
class _Shared:
    gate: InstallGate
    client: _Client


@pytest.fixture(scope="module")
def shared() -> Iterator[_Shared]:
    """One server and connection for the property tests (hypothesis runs a body many times)."""
    directory = Path(tempfile.mkdtemp(prefix="kf-kiosk-", dir="/tmp"))
    gate = InstallGate(FakeClock())
    interface = _serve(gate, directory / "kiosk.sock", max_line_bytes=4096)
    client = _Client(directory / "kiosk.sock")
    yield _Shared(gate, client)
    client.close()
    interface.close()
    shutil.rmtree(directory, ignore_errors=True)


_ERROR_CODES = {code.value for code in ErrorCode} | {reason.value for reason in Refusal}


def _run_example(path: Path, socket_dir: Path) -> subprocess.CompletedProcess[str]:
    match = _EXAMPLE.search((ROOT / "docs" / "kiosk-app.md").read_text(encoding="utf-8"))
    assert match is not None, "docs/kiosk-app.md has no example client block"
    script = socket_dir / "example_client.py"
    script.write_text(match["code"], encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_documented_example_client_serves_a_citizen_and_defers(
    served: tuple[KioskInterface, Path], gate: InstallGate, socket_dir: Path
) -> None:
    _, path = served
    result = _run_example(path, socket_dir)
    assert result.returncode == 0, result.stderr
    status, serving, deferred = result.stdout.splitlines()
    assert json.loads(status) == {
        "ok": True,
        "request": "status",
        "installing": False,
        "open_sessions": 0,
        "deferred_for_s": 0.0,
    }
    assert serving == "serving a citizen"
    assert json.loads(deferred)["deferred_for_s"] == 600
    counters = gate.counters()
    assert (counters["sessions_started"], counters["sessions_ended"]) == (1, 1)
    assert gate.try_begin_install() is False  # the client's deferral holds


def test_the_documented_example_client_starts_no_session_during_an_install(
    served: tuple[KioskInterface, Path], gate: InstallGate, socket_dir: Path
) -> None:
    _, path = served
    assert gate.try_begin_install()
    result = _run_example(path, socket_dir)
    assert result.returncode == 3, result.stderr
    assert "refused: installing" in result.stdout.splitlines()
    assert "serving a citizen" not in result.stdout
    assert gate.status().open_sessions == 0
    assert gate.counters()["sessions_refused_installing"] == 1


def test_the_socket_is_0660_and_owned_by_the_configured_group(
    gate: InstallGate, socket_dir: Path
) -> None:
    groups = [g for g in os.getgroups() if g != os.getgid()] or [os.getgid()]
    group = grp.getgrgid(groups[0]).gr_name
    path = socket_dir / "kiosk.sock"
    interface = _serve(gate, path, group=group)
    try:
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == groups[0]
        assert [p.name for p in socket_dir.iterdir()] == ["kiosk.sock"]  # no temporary left
    finally:
        interface.close()
    assert not path.exists()


def test_an_unknown_group_is_refused_at_start(gate: InstallGate, socket_dir: Path) -> None:
    config = KioskInterfaceConfig(path=socket_dir / "kiosk.sock", group="no-such-group-kf")
    with pytest.raises(KioskSocketError, match="does not exist"):
        KioskInterface(gate, config).start()
    assert list(socket_dir.iterdir()) == []


def test_no_install_starts_while_a_session_opened_over_the_socket_is_open(
    served: tuple[KioskInterface, Path], gate: InstallGate
) -> None:
    _, path = served
    with _client(path) as client:
        started = client.request("session_start")
        assert started["ok"] is True
        assert gate.try_begin_install() is False
        assert client.request("session_end", session=started["session"]) == {
            "ok": True,
            "request": "session_end",
        }
    assert gate.try_begin_install() is True


def test_a_session_start_during_an_install_is_answered_installing(
    served: tuple[KioskInterface, Path], gate: InstallGate
) -> None:
    _, path = served
    assert gate.try_begin_install()
    with _client(path) as client:
        answer = client.request("session_start")
        assert answer["ok"] is False
        assert answer["error"] == "installing"
        assert client.request("status")["installing"] is True
        gate.end_install()
        assert client.request("session_start")["ok"] is True


def test_a_session_never_ended_expires_over_the_socket(
    served: tuple[KioskInterface, Path], gate: InstallGate, clock: FakeClock
) -> None:
    _, path = served
    with _client(path) as client:
        token = client.request("session_start")["session"]
        clock.advance(900)
        assert client.request("status")["open_sessions"] == 0
        assert client.request("session_end", session=token)["error"] == "unknown_session"
    assert gate.counters()["sessions_expired"] == 1
    assert gate.try_begin_install() is True


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json", "malformed"),
        (b"\xff\xfe{}", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"request": "reboot"}', "bad_request"),
        (b"{}", "bad_request"),
        (b'{"request": "defer_install", "seconds": "60"}', "bad_request"),
        (b'{"request": "defer_install", "seconds": 0}', "bad_request"),
        (b'{"request": "defer_install", "seconds": true}', "bad_request"),
        (b'{"request": "defer_install", "seconds": 60.5}', "bad_request"),
        (b'{"request": "status", "extra": 1}', "bad_request"),
        (b'{"request": "session_end", "session": ""}', "bad_request"),
        (b'{"request": "defer_install", "seconds": 86400}', "defer_out_of_bounds"),
        (b'{"request": "session_end", "session": "guessed"}', "unknown_session"),
    ],
)
def test_a_bad_line_gets_a_clear_error_and_the_connection_keeps_serving(
    served: tuple[KioskInterface, Path], line: bytes, error: str
) -> None:
    interface, path = served
    with _client(path) as client:
        answer = client.send(line + b"\n")
        assert answer is not None
        assert (answer["ok"], answer["error"]) == (False, error)
        assert answer["message"]
        assert client.request("status")["ok"] is True
    if error in ("malformed", "bad_request"):
        assert interface.counters()[f"rejected_{error}"] == 1


def test_a_refused_line_is_logged_with_the_process_that_sent_it(
    served: tuple[KioskInterface, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, path = served
    with caplog.at_level(logging.INFO, logger="agent.kiosk_interface"), _client(path) as client:
        assert client.send(b"not json\n") is not None
        started = client.request("session_start")
    assert f"malformed request from pid {os.getpid()} uid {os.getuid()}" in caplog.text
    assert f"session_start from pid {os.getpid()}" in caplog.text
    assert started["session"] not in caplog.text  # the token is a capability, never logged


def test_an_oversize_line_is_refused_and_the_server_keeps_serving(
    gate: InstallGate, socket_dir: Path
) -> None:
    path = socket_dir / "kiosk.sock"
    interface = _serve(gate, path, max_line_bytes=1024)
    try:
        for oversize in (b"x" * 5000, b'{"request": "status", "pad": "' + b"y" * 2000 + b'"}\n'):
            with _client(path) as client:
                answer = client.send(oversize)
                assert answer is not None
                assert answer["error"] == "too_large"
                assert client.at_eof()
        with _client(path) as client:
            assert client.request("status")["ok"] is True
        assert interface.counters()["rejected_too_large"] == 2
    finally:
        interface.close()


def _served_after_retries(path: Path, attempts: int = 200) -> bool:
    """Connect until a status request is answered ok (not busy); False after ``attempts``."""
    for _ in range(attempts):
        with _client(path) as client:
            try:
                answer = client.send(b'{"request": "status"}\n')
            except OSError:  # answered busy and closed before the request went out
                answer = None
            if answer is not None and answer["ok"]:
                return True
        time.sleep(0.025)  # the interface notices a closed connection on its own thread
    return False


def test_connections_beyond_the_cap_are_answered_busy(gate: InstallGate, socket_dir: Path) -> None:
    path = socket_dir / "kiosk.sock"
    interface = _serve(gate, path, max_connections=2)
    try:
        first, second = _Client(path), _Client(path)
        assert first.request("status")["ok"] is True
        assert second.request("status")["ok"] is True
        with _client(path) as third:
            answer = json.loads(third.file.readline())
            assert (answer["ok"], answer["error"]) == (False, "busy")
            assert third.at_eof()
        assert interface.counters()["connections_refused_busy"] == 1
        assert second.request("status")["ok"] is True  # the open ones keep being served
        first.close()
        assert _served_after_retries(path)
        second.close()
    finally:
        interface.close()


def test_an_idle_connection_is_closed(gate: InstallGate, socket_dir: Path) -> None:
    path = socket_dir / "kiosk.sock"
    interface = _serve(gate, path, idle_timeout_s=0.2)
    try:
        with _client(path) as client:
            assert client.at_eof()  # the interface closed it; the client never sent a line
        assert interface.counters()["connections_idle_closed"] == 1
    finally:
        interface.close()


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced(
    gate: InstallGate, socket_dir: Path
) -> None:
    path = socket_dir / "kiosk.sock"
    first = _serve(gate, path)
    try:
        with pytest.raises(KioskSocketError, match="listening"):
            KioskInterface(gate, KioskInterfaceConfig(path=path)).start()
        with _client(path) as client:
            assert client.request("status")["ok"] is True  # the first one still serves
    finally:
        first.close()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file that nobody listens on, as a killed agent leaves it
    second = _serve(gate, path)
    try:
        with _client(path) as client:
            assert client.request("status")["ok"] is True
    finally:
        second.close()


def test_a_file_that_is_not_a_socket_is_never_replaced(gate: InstallGate, socket_dir: Path) -> None:
    path = socket_dir / "kiosk.sock"
    path.write_text("someone's data", encoding="utf-8")
    with pytest.raises(KioskSocketError, match="not a socket"):
        KioskInterface(gate, KioskInterfaceConfig(path=path)).start()
    assert path.read_text(encoding="utf-8") == "someone's data"


def test_close_ends_open_connections_and_removes_the_socket(
    gate: InstallGate, socket_dir: Path
) -> None:
    path = socket_dir / "kiosk.sock"
    interface = _serve(gate, path)
    with _client(path) as client:
        assert client.request("status")["ok"] is True
        interface.close()
        assert client.at_eof()
    assert not path.exists()


@settings(max_examples=300, deadline=None)
@given(line=st.binary(max_size=600).map(lambda b: b.replace(b"\n", b"")))
def test_any_line_gets_exactly_one_answer_and_never_ends_the_server(
    shared: _Shared, line: bytes
) -> None:
    server = shared
    answer = server.client.send(line + b"\n") if line.strip() else {"ok": True}
    assert answer is not None
    assert isinstance(answer["ok"], bool)
    if answer["ok"] is False:
        assert answer["error"] in _ERROR_CODES
    assert server.client.request("status")["ok"] is True


@settings(max_examples=200, deadline=None)
@given(
    document=st.dictionaries(
        st.sampled_from(["request", "session", "seconds", "extra"]),
        st.one_of(
            st.sampled_from(["session_start", "session_end", "defer_install", "status"]),
            st.integers(min_value=-(10**20), max_value=10**20),
            st.text(max_size=80),
            st.booleans(),
            st.none(),
            st.floats(allow_nan=False),
        ),
        max_size=3,
    )
)
def test_any_json_object_gets_a_well_formed_answer(
    shared: _Shared, document: dict[str, Any]
) -> None:
    server = shared
    answer = server.client.send(json.dumps(document).encode() + b"\n")
    assert answer is not None
    if answer["ok"]:
        assert answer["request"] == document["request"]
    else:
        assert answer["error"] in _ERROR_CODES
        assert answer["message"]
    assert server.gate.status().open_sessions <= server.gate.limits.max_open_sessions


_TRANSACTION = {"service": "tax.invoice.print", "outcome": "completed", "duration_s": 30.0}


def test_a_transaction_reaches_the_sink_as_the_wire_body_and_a_refused_store_is_not_stored(
    gate: InstallGate, socket_dir: Path
) -> None:
    received: list[UsageBody] = []
    accept = [True]

    def sink(body: UsageBody) -> bool:
        received.append(body)
        return accept[0]

    interface = KioskInterface(gate, KioskInterfaceConfig(path=socket_dir / "k.sock"), sink)
    interface.start()
    try:
        with _client(socket_dir / "k.sock") as client:
            assert client.request("transaction", **_TRANSACTION, pages=1) == {
                "ok": True,
                "request": "transaction",
            }
            accept[0] = False
            refused = client.request("transaction", **_TRANSACTION)
            assert (refused["ok"], refused["error"]) == (False, "not_stored")
            assert client.request("status")["ok"]  # the connection goes on
    finally:
        interface.close()
    assert received[0] == UsageBody(
        service="tax.invoice.print", outcome=Outcome.COMPLETED, duration_s=30.0, pages=1
    )
    counters = interface.counters()
    assert (counters["transactions"], counters["rejected_not_stored"]) == (1, 1)


def test_an_interface_without_a_sink_answers_transactions_not_recording(
    served: tuple[KioskInterface, Path],
) -> None:
    interface, path = served
    with _client(path) as client:
        answer = client.request("transaction", **_TRANSACTION)
    assert (answer["ok"], answer["error"]) == (False, "not_recording")
    assert interface.counters()["rejected_not_recording"] == 1

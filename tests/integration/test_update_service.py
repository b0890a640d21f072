"""The updater's runtime (agent/update_service.py) on real files and a real Unix socket:
recovery at start is reported, an unusable kiosk socket keeps updates off, a full queue
drops (counted), an unreadable trusted root stops the setup."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.config import AgentConfig
from agent.install import BundleConfig, BundleHandler, InstallRequest
from agent.update_service import UpdateService, UpdateServiceError
from agent.updater import UpdaterState
from protocol.update_status import UpdateBody, UpdateState

pytestmark = pytest.mark.integration


def _config(where: Path, **updates: Any) -> AgentConfig:
    where.mkdir(parents=True, exist_ok=True)
    (where / "root.json").write_bytes(b"{}")
    values: dict[str, Any] = {
        "enabled": True,
        "server_url": "https://fleet.example",
        "trusted_root": str(where / "root.json"),
        "work_dir": str(where / "work"),
        "slots_root": str(where / "slots"),
        "restart_command": ["true"],
        "kiosk_socket": str(Path(tempfile.mkdtemp(prefix="kf-")) / "kiosk.sock"),
        "max_queued_directives": 2,
    } | updates
    return AgentConfig.model_validate(
        {"terminal_id": "T-SVC", "hall": "h", "region": "r", "model": "KX-100", "updates": values}
    )


def _service(config: AgentConfig, sent: list[UpdateBody]) -> UpdateService:
    return UpdateService.from_config(config, send=sent.append, clock=SystemClock())


def _bundle(where: Path) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("VERSION")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"1.1.0"))
    path = where / "bundle.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


def test_an_install_cut_off_after_the_switch_is_rolled_back_at_start_and_reported(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    cut = BundleHandler(BundleConfig(root=config.updates.slots_root, restart_argv=("true",)))
    cut.prepare(
        InstallRequest(
            artifact=str(_bundle(tmp_path)),
            package="kiosk-app",
            version="1.1.0",
            release_counter=1,
            health_argv=("true",),
            health_within_s=1,
        )
    )
    cut.activate()  # ... and the power goes: the health check never ran
    sent: list[UpdateBody] = []
    service = _service(config, sent)
    service.start()
    try:
        assert [(b.state, str(b.reason), b.directive_seq) for b in sent] == [
            (UpdateState.ROLLED_BACK, "interrupted", 0)
        ]
        assert service.software() == {}  # the first install rolled back: nothing runs
    finally:
        service.stop()


def test_without_its_kiosk_socket_the_updater_stays_off_and_drops_directives(
    tmp_path: Path,
) -> None:
    sent: list[UpdateBody] = []
    service = _service(_config(tmp_path, kiosk_socket_group="no-such-group-kf"), sent)
    service.start()
    service.submit(b'{"schema": "kf.directive"}')
    service.stop()
    assert (service.stats.received, service.stats.dropped, service.stats.handled) == (1, 1, 0)
    assert sent == []


def test_directives_beyond_the_queue_are_dropped_and_counted(tmp_path: Path) -> None:
    service = _service(_config(tmp_path), [])  # not started: nothing takes from the queue
    for _ in range(3):
        service.submit(b"{}")
    assert (service.stats.received, service.stats.dropped) == (3, 1)


def test_an_unreadable_trusted_root_stops_the_setup(tmp_path: Path) -> None:
    config = _config(tmp_path, trusted_root=str(tmp_path / "missing.json"))
    with pytest.raises(UpdateServiceError, match=r"missing\.json"):
        _service(config, [])


def test_an_install_cut_off_after_its_health_check_passed_is_committed_and_its_counter_kept(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    state_file = config.updates.work_dir / "updater-state.json"
    pending: dict[str, str | int] = {
        "handler": "bundle",
        "package": "kiosk-app",
        "version": "1.1.0",
        "release_counter": 1,
    }
    UpdaterState(5, {}, pending).save(state_file)  # what the updater writes before installing
    cut = BundleHandler(BundleConfig(root=config.updates.slots_root, restart_argv=("true",)))
    cut.prepare(
        InstallRequest(
            artifact=str(_bundle(tmp_path)),
            package="kiosk-app",
            version="1.1.0",
            release_counter=1,
            health_argv=("true",),
            health_within_s=1,
        )
    )
    cut.activate()
    assert cut.health_check().ok  # ... and the power goes before the commit
    sent: list[UpdateBody] = []
    service = _service(config, sent)
    service.start()
    try:
        assert [(b.state, b.reason) for b in sent] == [(UpdateState.SUCCEEDED, None)]
        assert service.software() == {"kiosk-app": "1.1.0"}
        assert UpdaterState.load(state_file) == UpdaterState(5, {"kiosk-app": 1}, None)
    finally:
        service.stop()

"""The operator's and a vendor's ceremony through ``kioskfleet repo`` and ``kioskfleet vendor``
against a real server, checked with python-tuf's ``Updater``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuf.ngclient import Updater

from kioskfleet.cli import main
from server.access import Role
from tests.integration.conftest import ServerFactory, admin_token, api, token
from tests.support.tuf_world import release_manifest

pytestmark = pytest.mark.integration


def _kf(*args: str | Path) -> None:
    assert main([str(a) for a in args]) == 0, args


def test_the_operator_and_vendor_commands_publish_a_release_a_terminal_finds(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    op, vendor = tmp_path / "operator", tmp_path / "acme"
    _kf("repo", "init", op, "--root-keys", "2", "--root-threshold", "2")
    _kf("vendor", "keygen", "--name", "acme-1", "--out", vendor)
    _kf("vendor", "keygen", "--name", "acme-2", "--out", vendor)
    _kf(
        "repo", "add-vendor", "acme", "--repo", op, "--threshold", "2",
        "--key", vendor / "acme-1.pub.json", "--key", vendor / "acme-2.pub.json",
    )  # fmt: skip
    _kf("vendor", "keygen", "--name", "directive", "--out", tmp_path / "server-keys")
    _kf("repo", "pin-directive-key", tmp_path / "server-keys" / "directive.pub.json", "--repo", op)
    _kf("repo", "rotate-key", "root", "--repo", op)
    server = start_server(
        updates_dir=tmp_path / "repository",
        updates_snapshot_key_file=op / "online" / "snapshot.key",
        updates_timestamp_key_file=op / "online" / "timestamp.key",
    )
    admin_file, vendor_file = tmp_path / "admin.token", tmp_path / "vendor.token"
    admin_file.write_text(admin_token(server))
    vendor_file.write_text(token(server, Role.VENDOR, vendor="acme"))
    base = ("--server", server.base_url)
    _kf("repo", "upload", "--repo", op, *base, "--token-file", admin_file)
    _kf("repo", "upload", "--repo", op, *base, "--token-file", admin_file)  # idempotent

    artifact = tmp_path / "kiosk-app-1.bin"
    artifact.write_bytes(b"release bytes" * 1000)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(release_manifest(1).model_dump_json())
    role = vendor / "acme.json"
    _kf(
        "vendor", "sign", "--vendor", "acme", "--role-file", role, "--artifact", artifact,
        "--manifest", manifest, "--key", vendor / "acme-1.key", "--key", vendor / "acme-2.key",
    )  # fmt: skip
    _kf(
        "vendor", "publish", "--vendor", "acme", "--role-file", role, "--artifact", artifact,
        *base, "--token-file", vendor_file,
    )  # fmt: skip

    client = tmp_path / "terminal"
    (client / "t").mkdir(parents=True)
    updater = Updater(
        metadata_dir=str(client),
        metadata_base_url=f"{server.base_url}/tuf/metadata/",
        target_dir=str(client / "t"),
        target_base_url=f"{server.base_url}/tuf/targets/",
        bootstrap=(op / "metadata" / "1.root.json").read_bytes(),
    )
    updater.refresh()
    info = updater.get_targetinfo("acme/kiosk-app-1.bin")
    assert info is not None
    assert info.custom == release_manifest(1).to_custom()
    pin = updater.get_targetinfo("_pins/directive-key.pub")
    assert pin is not None
    pinned = json.loads((tmp_path / "server-keys" / "directive.pub.json").read_text())
    assert pin.custom["key"] == pinned
    [release] = api(server, "/api/v1/updates/releases").json()["items"]
    assert len(release["signed_by"]) == 2

    # before it expires, the vendor re-signs its role (here retiring the release) and publishes
    _kf(
        "vendor", "resign", "--role-file", role, "--remove", "acme/kiosk-app-1.bin",
        "--key", vendor / "acme-1.key", "--key", vendor / "acme-2.key",
    )  # fmt: skip
    _kf(
        "vendor", "publish", "--vendor", "acme", "--role-file", role, *base,
        "--token-file", vendor_file,
    )  # fmt: skip
    assert api(server, "/api/v1/updates/releases").json()["items"] == []

    # an artifact signed under another name is published as NAME=PATH
    manifest.write_text(release_manifest(2).model_dump_json())
    _kf(
        "vendor", "sign", "--vendor", "acme", "--role-file", role, "--artifact", artifact,
        "--name", "kiosk-app-2.bin", "--manifest", manifest,
        "--key", vendor / "acme-1.key", "--key", vendor / "acme-2.key",
    )  # fmt: skip
    _kf(
        "vendor", "publish", "--vendor", "acme", "--role-file", role,
        "--artifact", f"kiosk-app-2.bin={artifact}", *base, "--token-file", vendor_file,
    )  # fmt: skip
    [renamed] = api(server, "/api/v1/updates/releases").json()["items"]
    assert (renamed["path"], renamed["status"]) == ("acme/kiosk-app-2.bin", "verified")


def test_a_failing_command_says_why_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["repo", "revoke-vendor", "nobody", "--repo", str(tmp_path)]) == 2
    assert "no root metadata" in capsys.readouterr().err
    _kf("repo", "init", tmp_path / "op")
    assert main(["repo", "init", str(tmp_path / "op")]) == 2
    assert "already holds a repository" in capsys.readouterr().err


def test_the_shell_completes_repo_and_vendor_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # typer's own switch: take the shell named, not the caller's (`make test-fast` runs
    # under /bin/sh, which typer refuses, "Shell sh not supported")
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    assert main(["--show-completion", "bash"]) == 0
    assert "_KIOSKFLEET_COMPLETE" in capsys.readouterr().out
    monkeypatch.setenv("_KIOSKFLEET_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "kioskfleet repo ro")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert main([]) == 0
    assert capsys.readouterr().out.split() == ["rotate-key"]

"""Directives checked against what python-tuf's ``Updater`` verified over real HTTP.

The operator pins the directive key in the offline-signed targets, a vendor publishes a
release through the real server, and a terminal's ``Updater`` supplies both the pinned
key (``_pins/directive-key.pub``'s ``custom``) and the target lookup ``verify_directive``
compares the directive with. A directive can only select what TUF verified.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import SSlibKey
from tuf.ngclient import Updater

from kioskfleet.update_client import UpdateClient
from kioskfleet.update_repo import DIRECTIVE_KEY_TARGET
from protocol.directives import (
    Directive,
    DirectiveRejected,
    DirectiveTarget,
    pinned_key_from_custom,
    sign_directive,
    verify_directive,
)
from server.access import Role
from server.main import Server
from tests.integration import test_updates
from tests.integration.conftest import token
from tests.support.tuf_world import TufWorld, release_manifest

pytestmark = pytest.mark.integration

SERVER_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def world(tmp_path: Path) -> TufWorld:
    world = TufWorld.create(tmp_path / "world", vendors={"acme": 1})
    world.operator.pin_directive_key(SSlibKey.from_crypto(SERVER_KEY.public_key()))
    return world


# The signed-releases tests' server: the world's roots and targets uploaded, online keys set.
server = test_updates.server


@pytest.fixture
def updater(server: Server, world: TufWorld, tmp_path: Path) -> Updater:
    """A terminal's Updater, refreshed after acme published ``kiosk-app-1.bin``."""
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="acme")) as acme:
        acme.upload_artifact("acme", artifact.name, artifact)
        acme.publish_role("acme", world.role_file("acme").read_bytes())
    where = tmp_path / "terminal"
    (where / "metadata").mkdir(parents=True)
    (where / "targets").mkdir()
    updater = Updater(
        metadata_dir=str(where / "metadata"),
        metadata_base_url=f"{server.base_url}/tuf/metadata/",
        target_dir=str(where / "targets"),
        target_base_url=f"{server.base_url}/tuf/targets/",
        bootstrap=world.roots()[0],
    )
    updater.refresh()
    return updater


def _directive(path: str, length: int, sha256: str) -> Directive:
    now = datetime.now(UTC)
    return Directive(
        terminal_id="T-0001",
        rollout_id="R-1",
        seq=1,
        target=DirectiveTarget(path=path, length=length, sha256=sha256),
        issued_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(hours=1),
        not_before=now,
        not_after=now + timedelta(days=1),
    )


def _verify(updater: Updater, payload: bytes) -> Directive:
    pin = updater.get_targetinfo(DIRECTIVE_KEY_TARGET)
    assert pin is not None
    return verify_directive(
        payload,
        pinned_key=pinned_key_from_custom(pin.custom),
        terminal_id="T-0001",
        last_seq=0,
        now=datetime.now(UTC),
        target_info=updater.get_targetinfo,
    )


def test_a_directive_for_a_target_tuf_verified_is_accepted(
    updater: Updater, world: TufWorld
) -> None:
    data = (world.path / "artifacts" / "kiosk-app-1.bin").read_bytes()
    directive = _directive("acme/kiosk-app-1.bin", len(data), hashlib.sha256(data).hexdigest())
    assert _verify(updater, sign_directive(directive, SERVER_KEY)) == directive


def test_a_directive_pointing_at_bytes_no_vendor_signed_is_refused(updater: Updater) -> None:
    # What a compromised server with the directive key can do: sign any hash it likes.
    evil = b"malware"
    directive = _directive("acme/kiosk-app-1.bin", len(evil), hashlib.sha256(evil).hexdigest())
    with pytest.raises(DirectiveRejected) as caught:
        _verify(updater, sign_directive(directive, SERVER_KEY))
    assert caught.value.reason == "target_mismatch"


def test_a_directive_for_a_path_no_vendor_published_is_refused(updater: Updater) -> None:
    directive = _directive("acme/kiosk-app-9.bin", 7, hashlib.sha256(b"malware").hexdigest())
    with pytest.raises(DirectiveRejected) as caught:
        _verify(updater, sign_directive(directive, SERVER_KEY))
    assert caught.value.reason == "target_unknown"


def test_a_directive_signed_by_a_key_the_operator_did_not_pin_is_refused(
    updater: Updater, world: TufWorld
) -> None:
    data = (world.path / "artifacts" / "kiosk-app-1.bin").read_bytes()
    directive = _directive("acme/kiosk-app-1.bin", len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(DirectiveRejected) as caught:
        _verify(updater, sign_directive(directive, Ed25519PrivateKey.generate()))
    assert caught.value.reason == "unknown_key"

"""Signed releases end to end: operator and vendor tools, the server over real HTTP, and
python-tuf's own ``tuf.ngclient.Updater`` as the terminal.

Every refusal is one test case naming its error code, with nothing stored; the
compromised-server cases write to the repository directly with the online keys, as an
attacker on the server could.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from tuf.api.exceptions import (
    BadVersionNumberError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

from firmware_manifests.keys import generate_key, write_atomically
from kioskfleet.update_client import UpdateClient, UpdateClientError
from server.access import Role, allows
from server.access_api import OPEN_PATHS, declared_role
from server.main import Server
from server.tuf_online import next_snapshot, next_timestamp
from tests.integration.conftest import ServerFactory, admin_token, api, bearer, metric, token
from tests.support.device_identity import make_ca
from tests.support.tuf_world import TufWorld, release_manifest

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path) -> TufWorld:
    return TufWorld.create(tmp_path / "world", vendors={"acme": 1, "duo": 2})


@pytest.fixture
def server(start_server: ServerFactory, world: TufWorld, tmp_path: Path) -> Server:
    server = start_server(
        updates_dir=tmp_path / "repository",
        updates_snapshot_key_file=world.operator.online_dir / "snapshot.key",
        updates_timestamp_key_file=world.operator.online_dir / "timestamp.key",
        updates_max_artifact_bytes=1 << 20,
    )
    with UpdateClient(server.base_url, admin_token(server)) as admin:
        for root in world.roots():
            admin.upload_metadata("root", root)
        admin.upload_metadata("targets", world.targets_bytes())
    return server


@pytest.fixture
def acme(server: Server) -> Iterator[UpdateClient]:
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="acme")) as client:
        yield client


def _updater(server: Server, tmp_path: Path, root: bytes) -> Updater:
    where = tmp_path / f"terminal-{secrets.token_hex(3)}"
    (where / "metadata").mkdir(parents=True)
    (where / "targets").mkdir()
    return Updater(
        metadata_dir=str(where / "metadata"),
        metadata_base_url=f"{server.base_url}/tuf/metadata/",
        target_dir=str(where / "targets"),
        target_base_url=f"{server.base_url}/tuf/targets/",
        bootstrap=root,
    )


def _publish(client: UpdateClient, world: TufWorld, vendor: str, artifact: Path) -> dict[str, Any]:
    client.upload_artifact(vendor, artifact.name, artifact)
    return client.publish_role(vendor, world.role_file(vendor).read_bytes())


def _blobs_dir(server: Server) -> Path:
    """Where the filesystem artifact store keeps the blobs (what an attacker could write)."""
    assert server.settings.updates_dir is not None
    return server.settings.updates_dir / "artifacts" / "blobs"


def _stored(server: Server) -> tuple[list[str], list[str], str]:
    repo = server.updates
    assert repo is not None
    meta = sorted(p.name for p in repo.repository.metadata_dir.iterdir())
    blobs = sorted(repo.repository.store.blobs())
    return meta, blobs, (repo.repository.metadata_dir / "timestamp.json").read_text()


# --- happy path -----------------------------------------------------------------------------


def test_a_published_release_reaches_a_tuf_client_with_its_manifest_unchanged(
    server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    artifact = world.artifact("kiosk-app-1.bin")
    manifest = release_manifest(1)
    world.sign("acme", artifact, manifest)
    assert _publish(acme, world, "acme", artifact)["new_targets"] == ["acme/kiosk-app-1.bin"]

    updater = _updater(server, tmp_path, world.roots()[0])
    updater.refresh()
    info = updater.get_targetinfo("acme/kiosk-app-1.bin")
    assert info is not None
    assert info.custom == manifest.to_custom()
    downloaded = updater.download_target(info)
    assert Path(downloaded).read_bytes() == artifact.read_bytes()

    [release] = api(server, "/api/v1/updates/releases").json()["items"]
    assert release["status"] == "verified"
    assert release["signed_by"] == [world.vendor_keys["acme"][0].public_key.keyid]
    assert release["manifest"]["release_counter"] == 1
    vendors = {v["vendor"]: v for v in api(server, "/api/v1/updates/vendors").json()["items"]}
    assert vendors["duo"]["threshold"] == 2
    assert vendors["acme"]["role_version"] == 1
    [package] = api(server, "/api/v1/updates/packages").json()["items"]
    assert package == {"vendor": "acme", "package": "kiosk-app", "releases": 1, "latest_counter": 1}
    [publication] = api(server, "/api/v1/updates/publications").json()["items"]
    assert publication["targets"] == ["acme/kiosk-app-1.bin"]
    audit = api(server, "/api/v1/audit", action="release.publish").json()["items"]
    assert [(a["result"], a["target"], a["role"]) for a in audit] == [("ok", "acme", "vendor")]
    operator = api(server, "/api/v1/audit", action="repository.root").json()["items"]
    assert [(a["result"], a["detail"]["version"]) for a in operator] == [("ok", "1")]
    expiry = metric(server, "kioskfleet_tuf_metadata_expiry_seconds", role="timestamp")
    assert 0 < expiry <= 86400
    assert metric(server, "kioskfleet_tuf_metadata_expiry_seconds", role="vendors") > 86400


def test_a_restarted_server_serves_the_same_repository_and_keeps_re_signing(
    start_server: ServerFactory, server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    _publish(acme, world, "acme", artifact)
    settings = server.settings
    server.stop()
    start_server.started.remove(server)
    again = start_server(
        database_url=settings.database_url,
        updates_dir=settings.updates_dir,
        updates_snapshot_key_file=settings.updates_snapshot_key_file,
        updates_timestamp_key_file=settings.updates_timestamp_key_file,
    )
    assert again._scheduler is not None
    assert again._scheduler.get_job("tuf-resign") is not None
    updater = _updater(again, tmp_path, world.roots()[0])
    updater.refresh()
    info = updater.get_targetinfo("acme/kiosk-app-1.bin")
    assert info is not None
    assert Path(updater.download_target(info)).read_bytes() == artifact.read_bytes()
    # the ledger survived: the same counter is still refused
    second = world.artifact("kiosk-app-1b.bin")
    world.sign("acme", second, release_manifest(1))
    with UpdateClient(again.base_url, token(again, Role.VENDOR, vendor="acme")) as client:
        client.upload_artifact("acme", second.name, second)
        with pytest.raises(UpdateClientError) as caught:
            client.publish_role("acme", world.role_file("acme").read_bytes())
    assert caught.value.code == "release_counter_not_greater"


def test_a_threshold_of_several_vendor_keys_publishes(
    server: Server, world: TufWorld, tmp_path: Path
) -> None:
    artifact = world.artifact("duo-1.bin")
    world.sign("duo", artifact, release_manifest(1, package="duo-fw"))
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="duo")) as duo:
        _publish(duo, world, "duo", artifact)
    updater = _updater(server, tmp_path, world.roots()[0])
    updater.refresh()
    assert updater.get_targetinfo("duo/duo-1.bin") is not None


def test_every_update_route_is_open_by_design_or_declares_a_role_and_refuses_weaker_tokens(
    server: Server,
) -> None:
    # test_api_access walks a server without updates; this walks the update routes
    secrets_by_role = {role: token(server, role) for role in Role}
    checked = 0
    for route in server.app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith(
            ("/tuf/", "/api/v1/updates")
        ):
            continue
        if route.path.startswith("/tuf/"):
            assert route.path in OPEN_PATHS
            assert declared_role(route) is None
            continue
        role = declared_role(route)
        assert role is not None, route.path
        path = route.path.replace("{vendor}", "acme").replace("{name}", "x.bin")
        for method in sorted((route.methods or set()) - {"HEAD"}):
            anonymous = httpx.request(method, server.base_url + path, timeout=5)
            assert anonymous.status_code == 401, (method, path)
            for granted, secret in secrets_by_role.items():
                status = httpx.request(
                    method, server.base_url + path, headers=bearer(secret), timeout=5
                ).status_code
                assert (status == 403) is not allows(granted, role), (method, path, granted, status)
            checked += 1
    assert checked == 9  # root, targets, upload status, upload, publish, 4 listings


def test_metadata_is_served_with_caching_per_kind_and_the_next_root_is_404(
    server: Server, world: TufWorld
) -> None:
    base = f"{server.base_url}/tuf/metadata/"
    root = httpx.get(base + "1.root.json", timeout=5)
    assert root.status_code == 200
    assert root.content == world.roots()[0]
    assert "immutable" in root.headers["cache-control"]
    assert httpx.get(base + "2.root.json", timeout=5).status_code == 404
    timestamp = httpx.get(base + "timestamp.json", timeout=5)
    assert timestamp.status_code == 200
    assert timestamp.headers["cache-control"] == "no-cache"
    assert (
        httpx.get(base + "1.snapshot.json", timeout=5)
        .headers["cache-control"]
        .endswith("immutable")
    )
    assert httpx.get(base + "..%2Fledger.json", timeout=5).status_code == 404


def test_over_https_a_terminal_trusting_the_servers_ca_gets_the_release(
    start_server: ServerFactory,
    world: TufWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls = make_ca(tmp_path / "ca")
    server = start_server(
        updates_dir=tmp_path / "repository",
        updates_snapshot_key_file=world.operator.online_dir / "snapshot.key",
        updates_timestamp_key_file=world.operator.online_dir / "timestamp.key",
        https_cert_file=tls.https_cert,
        https_key_file=tls.https_key,
    )
    assert server.base_url.startswith("https://")
    ca = tls.paths.chain
    with UpdateClient(server.base_url, admin_token(server), ca_file=ca) as admin:
        admin.upload_metadata("root", world.roots()[0])
        admin.upload_metadata("targets", world.targets_bytes())
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    vendor = token(server, Role.VENDOR, vendor="acme")
    with UpdateClient(server.base_url, vendor, ca_file=ca) as acme:
        _publish(acme, world, "acme", artifact)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the terminal trusts the fleet's CA
    updater = _updater(server, tmp_path, world.roots()[0])
    updater.refresh()
    info = updater.get_targetinfo("acme/kiosk-app-1.bin")
    assert info is not None
    assert Path(updater.download_target(info)).read_bytes() == artifact.read_bytes()


# --- refusals ------------------------------------------------------------------------------


def _resign(world: TufWorld, vendor: str, change: Any, signers: Any = None) -> None:
    """Load the vendor's role file, apply ``change(md)``, re-sign, write it back."""
    path = world.role_file(vendor)
    md: Metadata[Targets] = Metadata.from_file(str(path))
    change(md)
    md.signatures.clear()
    for signer in world.vendor_keys[vendor] if signers is None else signers:
        md.sign(signer, append=True)
    write_atomically(path, md.to_bytes(JSONSerializer()))


Publish = Callable[[Path], None]
"""Publishes a good release of this artifact first (for cases refused against a prior one)."""
Upload = tuple[str, Path] | None
"""What the case uploads before publishing: (target name, file), or nothing."""


def _case_unsigned(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(1))
    _resign(world, "acme", lambda _md: None, signers=[])
    return artifact.name, artifact


def _case_foreign_key(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(1), signers=[generate_key()])
    return artifact.name, artifact


def _case_below_threshold(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign("duo", artifact, release_manifest(1), signers=world.vendor_keys["duo"][:1])
    return artifact.name, artifact


def _case_expired(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign(
        "acme",
        artifact,
        release_manifest(1),
        now=datetime.now(UTC) - timedelta(days=2),
        expiry=timedelta(days=1),
    )
    return artifact.name, artifact


def _case_path_outside(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(1))

    def nest(md: Metadata[Targets]) -> None:
        target = md.signed.targets.pop(f"acme/{artifact.name}")
        target.path = f"acme/sub/{artifact.name}"
        md.signed.targets[target.path] = target

    _resign(world, "acme", nest)
    return artifact.name, artifact


def _case_manifest_invalid(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(1))

    def spoil(md: Metadata[Targets]) -> None:
        md.signed.targets[f"acme/{artifact.name}"].unrecognized_fields["custom"] = {
            "kioskfleet": {"package": "kiosk-app", "release_counter": 0}
        }

    _resign(world, "acme", spoil)
    return artifact.name, artifact


def _case_version_not_higher(world: TufWorld, artifact: Path, publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(1))
    publish(artifact)  # then the same role version again
    return None


def _case_artifact_mismatch(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(1))
    other = artifact.with_name("other.bin")
    other.write_bytes(artifact.read_bytes()[:-1] + b"X")
    return artifact.name, other  # other bytes under the signed name


def _case_artifact_missing(world: TufWorld, artifact: Path, _publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(1))
    return None


def _case_release_counter(world: TufWorld, artifact: Path, publish: Publish) -> Upload:
    world.sign("acme", artifact, release_manifest(2))
    publish(artifact)
    again = world.artifact("again.bin")
    world.sign("acme", again, release_manifest(2))
    return again.name, again


@pytest.mark.parametrize(
    ("case", "vendor", "code"),
    [
        (_case_unsigned, "acme", "unsigned"),
        (_case_foreign_key, "acme", "foreign_key"),
        (_case_below_threshold, "duo", "below_threshold"),
        (_case_expired, "acme", "expired"),
        (_case_path_outside, "acme", "path_outside_pattern"),
        (_case_manifest_invalid, "acme", "manifest_invalid"),
        (_case_version_not_higher, "acme", "version_not_higher"),
        (_case_artifact_mismatch, "acme", "artifact_mismatch"),
        (_case_artifact_missing, "acme", "artifact_missing"),
        (_case_release_counter, "acme", "release_counter_not_greater"),
    ],
    ids=lambda v: v.__name__.removeprefix("_case_") if callable(v) else str(v),
)
def test_a_refused_vendor_role_is_named_counted_audited_and_stores_nothing(
    server: Server, world: TufWorld, case: Any, vendor: str, code: str
) -> None:
    artifact = world.artifact(f"{vendor}-1.bin")
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor=vendor)) as client:
        upload = case(world, artifact, lambda a: _publish(client, world, vendor, a))
        before = _stored(server), api(server, "/api/v1/updates/releases").json()
        if upload is not None:
            client.upload_artifact(vendor, *upload)
        with pytest.raises(UpdateClientError) as caught:
            client.publish_role(vendor, world.role_file(vendor).read_bytes())
    assert (caught.value.status, caught.value.code) == (422, code)
    assert (_stored(server), api(server, "/api/v1/updates/releases").json()) == before
    assert metric(server, "kioskfleet_update_uploads_rejected_total", code=code) == 1
    audit = api(server, "/api/v1/audit", action="release.publish").json()["items"]
    assert [e["detail"]["code"] for e in audit if e["result"] == "failed"] == [code]


def test_a_vendor_token_cannot_publish_another_vendors_role(
    server: Server, world: TufWorld
) -> None:
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    before = _stored(server)
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="duo")) as duo:
        with pytest.raises(UpdateClientError) as upload:
            duo.upload_artifact("acme", artifact.name, artifact)
        with pytest.raises(UpdateClientError) as publish:
            duo.publish_role("acme", world.role_file("acme").read_bytes())
    assert upload.value.code == publish.value.code == "vendor_mismatch"
    assert _stored(server) == before


def test_a_revoked_vendor_can_neither_upload_nor_publish(server: Server, world: TufWorld) -> None:
    world.operator.revoke_vendor("duo")
    with UpdateClient(server.base_url, admin_token(server)) as admin:
        admin.upload_metadata("targets", world.targets_bytes())
    artifact = world.artifact("duo-1.bin")
    world.sign("duo", artifact, release_manifest(1))
    before = _stored(server)
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="duo")) as duo:
        with pytest.raises(UpdateClientError) as upload:
            duo.upload_artifact("duo", artifact.name, artifact)
        with pytest.raises(UpdateClientError) as publish:
            duo.publish_role("duo", world.role_file("duo").read_bytes())
    assert upload.value.code == publish.value.code == "unknown_vendor"
    assert _stored(server) == before


def test_the_release_listing_shows_a_revoked_vendors_releases_as_revoked(
    server: Server, world: TufWorld
) -> None:
    artifact = world.artifact("duo-7.bin")
    world.sign("duo", artifact, release_manifest(7))
    with UpdateClient(server.base_url, token(server, Role.VENDOR, vendor="duo")) as duo:
        _publish(duo, world, "duo", artifact)
    listed = {r["path"]: r for r in api(server, "/api/v1/updates/releases").json()["items"]}
    assert listed["duo/duo-7.bin"]["status"] == "verified"

    world.operator.revoke_vendor("duo")
    with UpdateClient(server.base_url, admin_token(server)) as admin:
        admin.upload_metadata("targets", world.targets_bytes())

    listed = {r["path"]: r for r in api(server, "/api/v1/updates/releases").json()["items"]}
    assert listed["duo/duo-7.bin"]["status"] == "revoked"
    assert "no longer delegated" in listed["duo/duo-7.bin"]["detail"]


def test_operator_metadata_needs_an_admin_token_and_the_current_roots_signatures(
    server: Server, world: TufWorld, acme: UpdateClient
) -> None:
    with pytest.raises(UpdateClientError) as as_vendor:
        acme.upload_metadata("targets", world.targets_bytes())
    assert as_vendor.value.status == 403
    with UpdateClient(server.base_url, admin_token(server)) as admin:
        with pytest.raises(UpdateClientError) as stale:
            admin.upload_metadata("targets", world.targets_bytes())
        assert stale.value.code == "version_not_higher"
        rogue = TufWorld.create(world.path.parent / "rogue")  # another operator's keys
        rogue.operator.rotate_key("root")
        with pytest.raises(UpdateClientError) as foreign:
            admin.upload_metadata("root", rogue.roots()[1])
        assert foreign.value.code in ("foreign_key", "below_threshold")


# --- rotation, revocation, compromise ------------------------------------------------------


def test_after_root_rotation_and_vendor_key_revocation_an_old_client_follows_and_refuses_the_revoked_key(
    server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    _publish(acme, world, "acme", artifact)
    old_root = world.roots()[0]

    world.operator.rotate_key("root")
    revoked = world.vendor_keys["acme"]
    world.add_vendor("acme")  # new acme key; the old one is no longer delegated
    with UpdateClient(server.base_url, admin_token(server)) as admin:
        admin.upload_metadata("root", world.roots()[1])
        admin.upload_metadata("targets", world.targets_bytes())

    updater = _updater(server, tmp_path, old_root)
    updater.refresh()  # walks 1.root -> 2.root
    trusted = Metadata.from_file(str(Path(updater._dir) / "root.json"))
    assert trusted.signed.version == 2
    # the stored acme role is signed by the revoked key: the client refuses it
    with pytest.raises(UnsignedMetadataError):
        updater.get_targetinfo("acme/kiosk-app-1.bin")
    # and the server refuses new metadata signed by it
    second = world.artifact("kiosk-app-2.bin")
    world.sign("acme", second, release_manifest(2), signers=revoked)
    acme.upload_artifact("acme", second.name, second)
    with pytest.raises(UpdateClientError) as caught:
        acme.publish_role("acme", world.role_file("acme").read_bytes())
    assert caught.value.code == "foreign_key"
    # the new key publishes, and a fresh client finds it
    world.sign("acme", second, release_manifest(2))
    acme.publish_role("acme", world.role_file("acme").read_bytes())
    fresh = _updater(server, tmp_path, old_root)
    fresh.refresh()
    assert fresh.get_targetinfo("acme/kiosk-app-2.bin") is not None
    statuses = {
        r["path"]: r["status"] for r in api(server, "/api/v1/updates/releases").json()["items"]
    }
    assert statuses == {"acme/kiosk-app-1.bin": "verified", "acme/kiosk-app-2.bin": "verified"}


def _attacker_publishes(
    server: Server, world: TufWorld, role: Metadata[Targets], vendor: str = "acme"
) -> None:
    """What a compromised server can do: write any role and blob, and sign snapshot and
    timestamp with the online keys it holds."""
    updates = server.updates
    assert updates is not None
    repo = updates.repository
    data = role.to_bytes(JSONSerializer())
    (repo.metadata_dir / f"{role.signed.version}.{vendor}.json").write_bytes(data)
    snapshot_md: Metadata[Snapshot] = Metadata.from_file(
        str(repo.metadata_dir / f"{_current_snapshot_version(repo.metadata_dir)}.snapshot.json")
    )
    now = datetime.now(UTC)
    snapshot = next_snapshot(
        snapshot_md.signed, {vendor: data}, world.online_snapshot, now=now, expiry=timedelta(days=1)
    )
    snapshot_bytes = snapshot.to_bytes(JSONSerializer())
    (repo.metadata_dir / f"{snapshot.signed.version}.snapshot.json").write_bytes(snapshot_bytes)
    timestamp_md: Metadata[Timestamp] = Metadata.from_file(
        str(repo.metadata_dir / "timestamp.json")
    )
    timestamp = next_timestamp(
        timestamp_md.signed,
        snapshot_bytes,
        snapshot.signed.version,
        world.online_timestamp,
        now=now,
        expiry=timedelta(days=1),
    )
    (repo.metadata_dir / "timestamp.json").write_bytes(timestamp.to_bytes(JSONSerializer()))


def _current_snapshot_version(metadata_dir: Path) -> int:
    timestamp: Metadata[Timestamp] = Metadata.from_file(str(metadata_dir / "timestamp.json"))
    return int(timestamp.signed.snapshot_meta.version)


def test_a_compromised_server_with_the_online_keys_cannot_make_a_client_accept_unsigned_bytes(
    server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    _publish(acme, world, "acme", artifact)
    updates = server.updates
    assert updates is not None

    # 1. a role of its own making, pointing at malware, signed by a key of its own
    malware = b"malware" * 100
    sha = hashlib.sha256(malware).hexdigest()
    (_blobs_dir(server) / sha).write_bytes(malware)
    role: Metadata[Targets] = Metadata.from_bytes(world.role_file("acme").read_bytes())
    evil = TargetFile.from_data("acme/kiosk-app-9.bin", malware, ["sha256"])
    evil.unrecognized_fields["custom"] = release_manifest(9).to_custom()
    role.signed.targets[evil.path] = evil
    role.signed.version += 1
    role.signatures.clear()
    role.sign(generate_key())
    _attacker_publishes(server, world, role)
    updater = _updater(server, tmp_path, world.roots()[0])
    updater.refresh()
    with pytest.raises(UnsignedMetadataError):
        updater.get_targetinfo("acme/kiosk-app-9.bin")


def test_a_compromised_server_swapping_an_artifacts_bytes_is_caught_by_the_clients_hash_check(
    server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    artifact = world.artifact("kiosk-app-1.bin")
    md = world.sign("acme", artifact, release_manifest(1))
    _publish(acme, world, "acme", artifact)
    updates = server.updates
    assert updates is not None
    sha = md.signed.targets["acme/kiosk-app-1.bin"].hashes["sha256"]
    blob = _blobs_dir(server) / sha
    blob.write_bytes(b"X" * blob.stat().st_size)
    updater = _updater(server, tmp_path, world.roots()[0])
    updater.refresh()
    info = updater.get_targetinfo("acme/kiosk-app-1.bin")
    assert info is not None
    with pytest.raises(LengthOrHashMismatchError):
        updater.download_target(info)


def test_a_replayed_older_timestamp_is_refused_by_a_client_that_saw_a_newer_one(
    server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    timestamp = _blobs_dir(server).parent.parent / "metadata" / "timestamp.json"
    old = timestamp.read_bytes()
    artifact = world.artifact("kiosk-app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    _publish(acme, world, "acme", artifact)  # timestamp v2
    updater = _updater(server, tmp_path, world.roots()[0])
    updater.refresh()
    timestamp.write_bytes(old)  # the network (or the server) replays timestamp v1
    again = Updater(
        metadata_dir=updater._dir,
        metadata_base_url=f"{server.base_url}/tuf/metadata/",
        target_dir=str(tmp_path),
        target_base_url=f"{server.base_url}/tuf/targets/",
        bootstrap=world.roots()[0],
    )
    with pytest.raises(BadVersionNumberError):
        again.refresh()


# --- resumable transfers ------------------------------------------------------------------


def test_an_interrupted_upload_resumes_where_it_stopped(
    server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    artifact = world.artifact("kiosk-app-1.bin", size=300_000)
    data = artifact.read_bytes()
    world.sign("acme", artifact, release_manifest(1))
    half = tmp_path / "half.bin"
    half.write_bytes(data[:120_000])
    acme.upload_artifact("acme", artifact.name, half, resume=False)  # the connection broke here
    gap = httpx.put(
        f"{server.base_url}/api/v1/updates/vendors/acme/uploads/{artifact.name}",
        params={"offset": 200_000},
        content=b"x",
        headers={"Authorization": acme._http.headers["Authorization"]},
        timeout=5,
    )
    assert (gap.status_code, gap.json()["error"]) == (409, "upload_offset")
    offsets: list[int] = []
    acme.upload_artifact(
        "acme", artifact.name, artifact, chunk_size=50_000, progress=lambda n, _t: offsets.append(n)
    )
    assert offsets[0] == 170_000  # continued from 120 000, not from 0
    assert offsets[-1] == len(data)
    acme.publish_role("acme", world.role_file("acme").read_bytes())
    assert api(server, "/api/v1/updates/releases").json()["items"][0]["status"] == "verified"


def test_metadata_past_its_size_cap_is_refused_and_counted(
    start_server: ServerFactory, world: TufWorld, tmp_path: Path
) -> None:
    server = start_server(
        updates_dir=tmp_path / "small",
        updates_snapshot_key_file=world.operator.online_dir / "snapshot.key",
        updates_timestamp_key_file=world.operator.online_dir / "timestamp.key",
        updates_max_metadata_bytes=1024,
    )
    with (
        UpdateClient(server.base_url, admin_token(server)) as admin,
        pytest.raises(UpdateClientError) as caught,
    ):
        admin.upload_metadata("root", world.roots()[0] + b" " * 1024)
    assert (caught.value.status, caught.value.code) == (413, "metadata_too_large")
    assert (
        metric(server, "kioskfleet_update_uploads_rejected_total", code="metadata_too_large") == 1
    )
    assert server.updates is not None
    assert server.updates.repository.metadata_file("1.root.json") is None


def test_an_upload_past_the_size_cap_is_refused(
    server: Server, world: TufWorld, acme: UpdateClient
) -> None:
    big = world.artifact("big.bin", size=(1 << 20) + 1)
    with pytest.raises(UpdateClientError) as caught:
        acme.upload_artifact("acme", big.name, big, chunk_size=1 << 21)
    assert (caught.value.status, caught.value.code) == (413, "artifact_too_large")
    assert acme.received("acme", big.name) == 0


def test_an_interrupted_download_resumes_with_a_range_request_and_verifies_and_only_listed_targets_are_served(
    server: Server, world: TufWorld, acme: UpdateClient, tmp_path: Path
) -> None:
    artifact = world.artifact("kiosk-app-1.bin", size=200_000)
    world.sign("acme", artifact, release_manifest(1))
    _publish(acme, world, "acme", artifact)
    updater = _updater(server, tmp_path, world.roots()[0])
    updater.refresh()
    info = updater.get_targetinfo("acme/kiosk-app-1.bin")
    assert info is not None
    url = f"{server.base_url}/tuf/targets/acme/{info.hashes['sha256']}.kiosk-app-1.bin"
    with httpx.stream("GET", url, timeout=5) as response:  # the first attempt breaks off
        first = next(response.iter_bytes(65_536))
    rest = httpx.get(url, headers={"Range": f"bytes={len(first)}-"}, timeout=5)
    assert rest.status_code == 206
    assert "immutable" in rest.headers["cache-control"]
    whole = first + rest.content
    info.verify_length_and_hashes(whole)  # raises LengthOrHashMismatchError otherwise
    assert whole == artifact.read_bytes()
    # the same bytes under a path no current role lists are not served
    for other in (url.replace("/acme/", "/duo/"), url.replace("kiosk-app-1", "kiosk-app-9")):
        assert httpx.get(other, timeout=5).status_code == 404

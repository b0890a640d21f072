"""The server's repository over files: accepted uploads are stored, refused ones leave nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.artifact_store import MemoryArtifactStore
from server.errors import ReleaseRejectedError, UpdatesError
from server.tuf_repository import TufRepository
from tests.support.tuf_world import TufWorld, release_manifest


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _repository(world: TufWorld, tmp_path: Path) -> TufRepository:
    repo = TufRepository(
        tmp_path / "server",
        MemoryArtifactStore(max_bytes=1 << 20),
        snapshot_signer=world.online_snapshot,
        timestamp_signer=world.online_timestamp,
    )
    repo.load()
    for root in world.roots():
        repo.upload_root(root)
    repo.upload_targets(world.targets_bytes())
    return repo


@pytest.mark.anyio
async def test_a_signed_release_is_stored_and_listed(tmp_path: Path) -> None:
    world = TufWorld.create(tmp_path / "world")
    repo = _repository(world, tmp_path)
    artifact = world.artifact("app-1.bin")
    md = world.sign("acme", artifact, release_manifest(1))
    await repo.store.append("acme", "app-1.bin", 0, _chunks(artifact.read_bytes()))
    repo.publish_vendor_role(
        "acme", world.role_file("acme").read_bytes(), token_vendor="acme", actor="t"
    )
    [release] = repo.releases()
    assert release.status == "verified"
    assert release.path == "acme/app-1.bin"
    assert release.manifest is not None
    assert release.manifest["release_counter"] == 1
    sha = md.signed.targets["acme/app-1.bin"].hashes["sha256"]
    assert isinstance(repo.store, MemoryArtifactStore)
    assert repo.store.blob_bytes(sha) == artifact.read_bytes()
    reloaded = TufRepository(
        repo.directory,
        repo.store,
        snapshot_signer=world.online_snapshot,
        timestamp_signer=world.online_timestamp,
    )
    reloaded.load()
    assert [r.path for r in reloaded.releases()] == ["acme/app-1.bin"]


@pytest.mark.anyio
async def test_a_refused_release_stores_nothing(tmp_path: Path) -> None:
    world = TufWorld.create(tmp_path / "world")
    repo = _repository(world, tmp_path)
    artifact = world.artifact("app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    await repo.store.append("acme", "app-1.bin", 0, _chunks(b"other bytes"))
    before = sorted(p.name for p in repo.metadata_dir.iterdir())
    with pytest.raises(ReleaseRejectedError) as caught:
        repo.publish_vendor_role(
            "acme", world.role_file("acme").read_bytes(), token_vendor="acme", actor="t"
        )
    assert caught.value.code == "artifact_mismatch"
    assert sorted(p.name for p in repo.metadata_dir.iterdir()) == before
    assert list(repo.store.blobs()) == []


@pytest.mark.anyio
async def test_a_disk_error_while_publishing_leaves_memory_as_the_disk_says(
    tmp_path: Path,
) -> None:
    world = TufWorld.create(tmp_path / "world")
    repo = _repository(world, tmp_path)
    artifact = world.artifact("app-1.bin")
    world.sign("acme", artifact, release_manifest(1))
    await repo.store.append("acme", "app-1.bin", 0, _chunks(artifact.read_bytes()))
    versions = [int(p.name.split(".")[0]) for p in repo.metadata_dir.glob("*.snapshot.json")]
    blocker = repo.metadata_dir / f"{max(versions) + 1}.snapshot.json"
    blocker.mkdir()  # the next snapshot cannot be written: a real OSError from the disk
    role = world.role_file("acme").read_bytes()
    timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()

    with pytest.raises(UpdatesError):
        repo.publish_vendor_role("acme", role, token_vendor="acme", actor="t")

    assert repo.releases() == []  # memory is not ahead of what the timestamp lists
    assert (repo.metadata_dir / "timestamp.json").read_bytes() == timestamp
    blocker.rmdir()
    await repo.store.append("acme", "app-1.bin", 0, _chunks(artifact.read_bytes()))
    repo.publish_vendor_role("acme", role, token_vendor="acme", actor="t")  # the same role
    assert [r.path for r in repo.releases()] == ["acme/app-1.bin"]

"""The artifact store port: the filesystem adapter and the in-memory fake keep the same rules
(resume at the received offset only, the size cap, commit only the bytes verified)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from server.artifact_store import ArtifactStore, FilesystemArtifactStore, MemoryArtifactStore
from server.errors import ReleaseRejectedError


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture(params=["filesystem", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "filesystem":
        return FilesystemArtifactStore(tmp_path, max_bytes=1000)
    return MemoryArtifactStore(max_bytes=1000)


@pytest.mark.anyio
async def test_an_upload_resumes_at_what_was_received_and_nowhere_else(
    store: ArtifactStore,
) -> None:
    assert await store.append("acme", "a.bin", 0, _chunks(b"x" * 300)) == 300
    with pytest.raises(ReleaseRejectedError) as caught:
        await store.append("acme", "a.bin", 200, _chunks(b"y"))
    assert (caught.value.code, caught.value.status) == ("upload_offset", 409)
    assert await store.append("acme", "a.bin", 300, _chunks(b"y" * 100, b"z")) == 401
    facts = store.measure("acme", "a.bin")
    assert facts is not None
    assert facts.sha256 == hashlib.sha256(b"x" * 300 + b"y" * 100 + b"z").hexdigest()
    assert await store.append("acme", "a.bin", 0, _chunks(b"new")) == 3  # 0 starts over


@pytest.mark.anyio
async def test_growth_past_the_cap_is_refused_and_keeps_what_was_there(
    store: ArtifactStore,
) -> None:
    await store.append("acme", "a.bin", 0, _chunks(b"x" * 600))
    with pytest.raises(ReleaseRejectedError) as caught:
        await store.append("acme", "a.bin", 600, _chunks(b"y" * 300, b"y" * 300))
    assert (caught.value.code, caught.value.status) == ("artifact_too_large", 413)
    assert store.received("acme", "a.bin") == 600


@pytest.mark.anyio
async def test_commit_moves_only_the_verified_bytes(store: ArtifactStore) -> None:
    await store.append("acme", "a.bin", 0, _chunks(b"release"))
    with pytest.raises(ReleaseRejectedError, match="changed"):
        store.commit("acme", "a.bin", hashlib.sha256(b"other").hexdigest())
    sha = hashlib.sha256(b"release").hexdigest()
    store.commit("acme", "a.bin", sha)
    assert list(store.blobs()) == [sha]
    assert store.received("acme", "a.bin") == 0


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "", "x" * 200])
def test_names_that_are_no_single_safe_segment_are_refused(store: ArtifactStore, name: str) -> None:
    with pytest.raises(ReleaseRejectedError) as caught:
        store.received("acme", name)
    assert caught.value.code == "invalid_name"


@pytest.mark.anyio
async def test_uploads_never_published_are_pruned_after_the_retention(store: ArtifactStore) -> None:
    await store.append("acme", "a.bin", 0, _chunks(b"abandoned"))
    now = datetime.now(UTC) + timedelta(seconds=5)
    assert store.prune_uploads(timedelta(days=1), now) == 0
    assert store.received("acme", "a.bin") == 9
    assert store.prune_uploads(timedelta(0), now) == 1
    assert store.received("acme", "a.bin") == 0


def _both(tmp_path: Path, **limits: int) -> list[ArtifactStore]:
    return [
        FilesystemArtifactStore(tmp_path / "fs", max_bytes=1000, **limits),
        MemoryArtifactStore(max_bytes=1000, **limits),
    ]


@pytest.mark.anyio
async def test_a_vendor_may_hold_only_so_many_unpublished_uploads(tmp_path: Path) -> None:
    for store in _both(tmp_path, max_uploads=2):
        await store.append("acme", "a.bin", 0, _chunks(b"a"))
        await store.append("acme", "b.bin", 0, _chunks(b"b"))
        with pytest.raises(ReleaseRejectedError) as caught:
            await store.append("acme", "c.bin", 0, _chunks(b"c"))
        assert (caught.value.code, caught.value.status) == ("too_many_uploads", 429)
        assert await store.append("acme", "a.bin", 1, _chunks(b"+")) == 2  # resuming is fine
        assert await store.append("other", "c.bin", 0, _chunks(b"c")) == 1  # per vendor
        store.commit("acme", "a.bin", hashlib.sha256(b"a+").hexdigest())
        assert await store.append("acme", "c.bin", 0, _chunks(b"c")) == 1  # one slot freed


@pytest.mark.anyio
async def test_a_blob_is_never_replaced_by_another_upload_of_the_same_bytes(
    tmp_path: Path,
) -> None:
    fs = FilesystemArtifactStore(tmp_path, max_bytes=1000)
    sha = hashlib.sha256(b"release").hexdigest()
    await fs.append("vendor-a", "r.bin", 0, _chunks(b"release"))
    fs.commit("vendor-a", "r.bin", sha)
    blob = fs.blob(sha)
    assert blob is not None
    inode = blob.stat().st_ino
    await fs.append("vendor-b", "copy.bin", 0, _chunks(b"release"))
    fs.commit("vendor-b", "copy.bin", sha)
    assert blob.stat().st_ino == inode  # the same file: vendor-b's upload was dropped
    assert blob.read_bytes() == b"release"
    assert fs.received("vendor-b", "copy.bin") == 0


@pytest.mark.anyio
async def test_a_commit_while_another_request_writes_the_upload_is_refused(
    tmp_path: Path,
) -> None:
    """The attack: finish an upload, hold a second PUT of it open, publish, then write into
    the file that became the blob. The commit is refused while the PUT is open."""
    fs = FilesystemArtifactStore(tmp_path, max_bytes=1000)
    sha = hashlib.sha256(b"release").hexdigest()
    await fs.append("vendor-b", "r.bin", 0, _chunks(b"release"))
    opened, release = anyio.Event(), anyio.Event()

    async def held() -> AsyncIterator[bytes]:
        opened.set()
        await release.wait()
        yield b"tail"

    async with anyio.create_task_group() as tg:
        tg.start_soon(fs.append, "vendor-b", "r.bin", 7, held())
        await opened.wait()
        with pytest.raises(ReleaseRejectedError) as caught:
            fs.commit("vendor-b", "r.bin", sha)
        assert (caught.value.code, caught.value.status) == ("upload_busy", 409)
        with pytest.raises(ReleaseRejectedError, match="another request"):
            await fs.append("vendor-b", "r.bin", 0, _chunks(b"x"))
        release.set()
    assert fs.blob(sha) is None  # nothing was published from a file being written
    with pytest.raises(ReleaseRejectedError, match="changed"):
        fs.commit("vendor-b", "r.bin", sha)  # and now it holds other bytes

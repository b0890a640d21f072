"""The artifact store port: the filesystem adapter and the in-memory fake keep the same rules
(resume at the received offset only, the size cap, commit only the bytes verified)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

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

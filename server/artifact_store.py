"""Where release artifacts live: a port (``ArtifactStore``) and its filesystem adapter.

Two areas. Uploads: ``uploads/<vendor>/<name>.part``, appended at an offset so a
broken upload resumes where it stopped (``append`` refuses an offset other than
the size already received), never held in memory whole, capped at
``max_bytes``. Blobs: ``blobs/<sha256>``, content-addressed, immutable, written
only by ``commit`` (an ``os.replace`` of a verified upload) after the repository
accepted metadata naming those bytes. A rejected upload therefore never reaches
the blobs, and nothing serves the upload area. Uploads never published are pruned
after ``updates_upload_retention_s`` (the re-signing job calls ``prune_uploads``).

``MemoryArtifactStore`` is the fake for unit tests (``blob`` then answers None: nothing
to serve from memory; ``blob_bytes`` reads what was committed).

One request at a time per upload: an ``append`` or ``commit`` of an upload that
another request is writing is refused (``upload_busy`` 409), so a commit never
moves a file someone still writes into (the moved file is the blob; a held-open
second upload of the same name must not write into it). A blob that exists is
never replaced: its name is its sha256, the upload is dropped instead. At most
``max_uploads`` unpublished uploads per vendor (``too_many_uploads`` 429), each
at most ``max_bytes``: the upload area is bounded. File writes run in a worker
thread, never on the server's event loop.

Errors: ``ReleaseRejectedError`` (``upload_offset``/``upload_busy`` 409,
``artifact_too_large`` 413, ``too_many_uploads`` 429, ``invalid_name`` 422) for
what the client must change; ``UpdatesError`` for the disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

import anyio.to_thread

from server.errors import ReleaseRejectedError, UpdatesError
from server.tuf_verify import ArtifactFacts

__all__ = ["ArtifactStore", "FilesystemArtifactStore", "MemoryArtifactStore", "is_segment"]

_SEGMENT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_CHUNK: Final = 1 << 20
DEFAULT_MAX_UPLOADS: Final = 16  # unpublished uploads per vendor


def is_segment(name: str) -> bool:
    """A vendor or target file name: one safe path segment."""
    return bool(_SEGMENT.match(name)) and ".." not in name


class ArtifactStore(Protocol):
    """The artifact port. ``vendor`` and ``name`` are checked with ``is_segment``."""

    def received(self, vendor: str, name: str) -> int: ...

    async def append(
        self, vendor: str, name: str, offset: int, chunks: AsyncIterator[bytes]
    ) -> int: ...

    def measure(self, vendor: str, name: str) -> ArtifactFacts | None: ...

    def commit(self, vendor: str, name: str, sha256: str) -> None: ...

    def discard(self, vendor: str, name: str) -> None: ...

    def prune_uploads(self, older_than: timedelta, now: datetime) -> int: ...

    def blob(self, sha256: str) -> Path | None: ...

    def blobs(self) -> Iterator[str]: ...


class FilesystemArtifactStore:
    """``ArtifactStore`` in a directory."""

    def __init__(
        self, root: Path, *, max_bytes: int, max_uploads: int = DEFAULT_MAX_UPLOADS
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_uploads = max_uploads
        self._busy: set[tuple[str, str]] = set()
        self._busy_lock = threading.Lock()
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _exclusive(self, vendor: str, name: str) -> Iterator[None]:
        """This request alone works on this upload; another one is refused at once."""
        key = (vendor, name)
        with self._busy_lock:
            if key in self._busy:
                raise ReleaseRejectedError(
                    "upload_busy",
                    f"{vendor}/{name} is being written by another request",
                    status=409,
                )
            self._busy.add(key)
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy.discard(key)

    def _part(self, vendor: str, name: str) -> Path:
        if not (is_segment(vendor) and is_segment(name)):
            raise ReleaseRejectedError("invalid_name", f"not a vendor/name: {vendor}/{name}")
        return self.root / "uploads" / vendor / f"{name}.part"

    def received(self, vendor: str, name: str) -> int:
        """Bytes received so far of this upload (0 if none)."""
        part = self._part(vendor, name)
        return part.stat().st_size if part.exists() else 0

    async def append(
        self, vendor: str, name: str, offset: int, chunks: AsyncIterator[bytes]
    ) -> int:
        """Write ``chunks`` at ``offset`` (which must be what was received so far: 0 starts
        over); returns the size received. Refuses growth past ``max_bytes`` (the part
        is kept as it was before this request)."""
        part = self._part(vendor, name)
        with self._exclusive(vendor, name):
            have = part.stat().st_size if part.exists() else 0
            if offset not in (0, have):
                raise ReleaseRejectedError(
                    "upload_offset", f"{vendor}/{name}: resume at {have}, not {offset}", status=409
                )
            if not part.exists() and self._open_uploads(vendor) >= self.max_uploads:
                raise ReleaseRejectedError(
                    "too_many_uploads",
                    f"{vendor} has {self.max_uploads} unpublished uploads: publish or wait"
                    " for them to be pruned",
                    status=429,
                )
            try:
                return await self._write(part, have, offset, chunks, f"{vendor}/{name}")
            except OSError as exc:
                raise UpdatesError(f"cannot write upload {vendor}/{name}: {exc}") from exc

    def _open_uploads(self, vendor: str) -> int:
        folder = self.root / "uploads" / vendor
        return sum(1 for _ in folder.glob("*.part")) if folder.is_dir() else 0

    async def _write(
        self, part: Path, have: int, offset: int, chunks: AsyncIterator[bytes], what: str
    ) -> int:
        part.parent.mkdir(parents=True, exist_ok=True)
        f = await anyio.to_thread.run_sync(part.open, "r+b" if part.exists() else "wb")
        try:
            await anyio.to_thread.run_sync(f.truncate, offset)
            f.seek(offset)
            size = offset
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_bytes:
                    await anyio.to_thread.run_sync(f.truncate, have if offset else 0)
                    raise ReleaseRejectedError(
                        "artifact_too_large",
                        f"{what}: more than {self.max_bytes} bytes",
                        status=413,
                    )
                await anyio.to_thread.run_sync(f.write, chunk)
            await anyio.to_thread.run_sync(f.flush)
            await anyio.to_thread.run_sync(os.fsync, f.fileno())
        finally:
            f.close()
        return size

    def measure(self, vendor: str, name: str) -> ArtifactFacts | None:
        """Length and sha256 of what was uploaded, None if nothing was."""
        part = self._part(vendor, name)
        if not part.exists():
            return None
        digest = hashlib.sha256()
        with part.open("rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                digest.update(block)
        return ArtifactFacts(part.stat().st_size, digest.hexdigest())

    def commit(self, vendor: str, name: str, sha256: str) -> None:
        """Move the upload into the blobs as ``sha256`` (os.replace), after measuring it
        again: bytes appended since the verification are refused (``artifact_mismatch``)."""
        with self._exclusive(vendor, name):
            facts = self.measure(vendor, name)
            if facts is None or facts.sha256 != sha256:
                raise ReleaseRejectedError(
                    "artifact_mismatch", f"{vendor}/{name} changed while it was being published"
                )
            blob = self.root / "blobs" / sha256
            try:
                if blob.is_file():  # the same bytes are there already: never replace a blob
                    self._part(vendor, name).unlink()
                else:
                    os.replace(self._part(vendor, name), blob)
            except OSError as exc:
                raise UpdatesError(f"cannot store {vendor}/{name}: {exc}") from exc

    def discard(self, vendor: str, name: str) -> None:
        self._part(vendor, name).unlink(missing_ok=True)

    def prune_uploads(self, older_than: timedelta, now: datetime) -> int:
        """Delete uploads not written to for ``older_than`` (never published); returns how
        many."""
        cutoff = (now - older_than).timestamp()
        pruned = 0
        for part in (self.root / "uploads").glob("*/*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    pruned += 1
            except OSError as exc:
                raise UpdatesError(f"cannot prune upload {part}: {exc}") from exc
        return pruned

    def blob(self, sha256: str) -> Path | None:
        """The file of a stored blob, None if there is none."""
        if not _SHA256.match(sha256):
            return None
        path = self.root / "blobs" / sha256
        return path if path.is_file() else None

    def blobs(self) -> Iterator[str]:
        """Every stored blob's hash."""
        return (p.name for p in (self.root / "blobs").iterdir() if _SHA256.match(p.name))


class MemoryArtifactStore:
    """``ArtifactStore`` in memory, for tests; the same rules as the filesystem adapter."""

    def __init__(self, *, max_bytes: int, max_uploads: int = DEFAULT_MAX_UPLOADS) -> None:
        self.max_bytes = max_bytes
        self.max_uploads = max_uploads
        self._parts: dict[tuple[str, str], bytearray] = {}
        self._blobs: dict[str, bytes] = {}

    def _key(self, vendor: str, name: str) -> tuple[str, str]:
        if not (is_segment(vendor) and is_segment(name)):
            raise ReleaseRejectedError("invalid_name", f"not a vendor/name: {vendor}/{name}")
        return vendor, name

    def received(self, vendor: str, name: str) -> int:
        return len(self._parts.get(self._key(vendor, name), b""))

    async def append(
        self, vendor: str, name: str, offset: int, chunks: AsyncIterator[bytes]
    ) -> int:
        key = self._key(vendor, name)
        have = len(self._parts.get(key, b""))
        if offset not in (0, have):
            raise ReleaseRejectedError(
                "upload_offset", f"{vendor}/{name}: resume at {have}, not {offset}", status=409
            )
        if key not in self._parts and sum(v == vendor for v, _ in self._parts) >= self.max_uploads:
            raise ReleaseRejectedError(
                "too_many_uploads",
                f"{vendor} has {self.max_uploads} unpublished uploads",
                status=429,
            )
        part = bytearray(self._parts.get(key, b"")[:offset])
        async for chunk in chunks:
            part += chunk
            if len(part) > self.max_bytes:
                raise ReleaseRejectedError(
                    "artifact_too_large",
                    f"{vendor}/{name}: more than {self.max_bytes} bytes",
                    status=413,
                )
        self._parts[key] = part
        return len(part)

    def measure(self, vendor: str, name: str) -> ArtifactFacts | None:
        part = self._parts.get(self._key(vendor, name))
        if part is None:
            return None
        return ArtifactFacts(len(part), hashlib.sha256(part).hexdigest())

    def commit(self, vendor: str, name: str, sha256: str) -> None:
        facts = self.measure(vendor, name)
        if facts is None or facts.sha256 != sha256:
            raise ReleaseRejectedError(
                "artifact_mismatch", f"{vendor}/{name} changed while it was being published"
            )
        data = bytes(self._parts.pop(self._key(vendor, name)))
        self._blobs.setdefault(sha256, data)  # a blob is never replaced

    def discard(self, vendor: str, name: str) -> None:
        self._parts.pop(self._key(vendor, name), None)

    def prune_uploads(self, older_than: timedelta, now: datetime) -> int:
        """The fake keeps no times: it prunes every upload when ``older_than`` is zero."""
        if older_than > timedelta(0):
            return 0
        pruned = len(self._parts)
        self._parts.clear()
        return pruned

    def blob(self, sha256: str) -> Path | None:
        return None

    def blob_bytes(self, sha256: str) -> bytes | None:
        return self._blobs.get(sha256)

    def blobs(self) -> Iterator[str]:
        return iter(sorted(self._blobs))

"""A throw-away TUF world for tests: an operator repository, vendor keys, artifacts, manifests.

Built with the project's own tools (``kioskfleet.update_repo``, ``kioskfleet.vendor_role``)
into a temporary directory; nothing here is a trust anchor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from firmware_manifests.keys import generate_key, load_signer, write_key_pair
from firmware_manifests.release_manifest import HealthCheck, InstallStep, ReleaseManifest
from kioskfleet.update_repo import OperatorRepo
from kioskfleet.vendor_role import sign_release

if TYPE_CHECKING:
    from collections.abc import Callable

    from server.tuf_repository import TufRepository

__all__ = ["TufWorld", "online_repository", "release_manifest"]


def release_manifest(
    counter: int = 1, package: str = "kiosk-app", **changes: Any
) -> ReleaseManifest:
    values: dict[str, Any] = {
        "package": package,
        "version": f"1.{counter}.0",
        "release_counter": counter,
        "compatible_models": ["KX-100"],
        "install": InstallStep(handler="package", parameters={"restart": True}),
        "health_check": HealthCheck(kind="service", target="kiosk-app.service", timeout_s=60),
    }
    values.update(changes)
    return ReleaseManifest(**values)


@dataclass
class TufWorld:
    """An operator repo in ``path/operator`` and vendors' keys and roles in ``path/<vendor>``."""

    path: Path
    operator: OperatorRepo
    vendor_keys: dict[str, list[CryptoSigner]] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path, *, vendors: dict[str, int] | None = None) -> TufWorld:
        """``vendors``: name -> number of keys (threshold = that number)."""
        world = cls(path, OperatorRepo.init(path / "operator", root_keys=2, root_threshold=2))
        for vendor, count in (vendors or {"acme": 1}).items():
            world.add_vendor(vendor, count)
        return world

    def add_vendor(
        self, vendor: str, count: int = 1, threshold: int | None = None
    ) -> list[CryptoSigner]:
        keys = [generate_key() for _ in range(count)]
        for i, key in enumerate(keys):
            write_key_pair(
                key, self.path / vendor / "keys", f"{vendor}-{i}-{key.public_key.keyid[:8]}"
            )
        self.vendor_keys[vendor] = keys
        self.operator.add_vendor(
            vendor,
            [k.public_key for k in keys],
            threshold=threshold or count,
            paths=[f"{vendor}/*"],
        )
        return keys

    @property
    def online_snapshot(self) -> CryptoSigner:
        return load_signer(self.operator.online_dir / "snapshot.key")

    @property
    def online_timestamp(self) -> CryptoSigner:
        return load_signer(self.operator.online_dir / "timestamp.key")

    def artifact(self, name: str, size: int = 4096) -> Path:
        path = self.path / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        return path

    def role_file(self, vendor: str) -> Path:
        return self.path / vendor / f"{vendor}.json"

    def sign(
        self,
        vendor: str,
        artifact: Path,
        manifest: ReleaseManifest,
        *,
        signers: list[CryptoSigner] | None = None,
        expiry: timedelta = timedelta(days=30),
        now: datetime | None = None,
    ) -> Metadata[Targets]:
        return sign_release(
            self.role_file(vendor),
            artifact,
            manifest,
            signers if signers is not None else self.vendor_keys[vendor],
            vendor=vendor,
            expiry=expiry,
            now=now,
        )

    def roots(self) -> list[bytes]:
        return [
            (self.operator.metadata_dir / f"{n}.root.json").read_bytes()
            for n in self.operator.root_versions()
        ]

    def targets_bytes(self) -> bytes:
        return (self.operator.metadata_dir / "targets.json").read_bytes()


def online_repository(world: TufWorld, path: Path, clock: Callable[[], datetime]) -> TufRepository:
    """The server's repository under ``path`` with ``world``'s first root and targets, its
    online roles signed at ``clock``'s time (snapshot 7 days, timestamp 24 hours)."""
    from server.artifact_store import FilesystemArtifactStore
    from server.tuf_repository import OnlineExpiry, TufRepository

    repo = TufRepository(
        path,
        FilesystemArtifactStore(path / "artifacts", max_bytes=1 << 20),
        snapshot_signer=world.online_snapshot,
        timestamp_signer=world.online_timestamp,
        expiry=OnlineExpiry(snapshot=timedelta(days=7), timestamp=timedelta(hours=24)),
        clock=clock,
    )
    repo.load()
    repo.upload_root(world.roots()[0])
    repo.upload_targets(world.targets_bytes())
    return repo

"""What the server signs with its online keys: snapshot and timestamp. Pure (no I/O).

``next_snapshot`` lists every targets role the repository holds (version and
length, so a client never accepts a role longer than declared, see the notes'
5 MB cap) and keeps every entry a previous snapshot had: python-tuf's client
refuses a snapshot that drops one, so a revoked vendor's last role stays listed
(the top-level targets no longer delegate it, so no client reads it).
``next_timestamp`` points at the snapshot's exact bytes (version, length, sha256).
Neither can make a client accept a target no vendor signed: the snapshot only
names roles and the roles carry the vendors' signatures.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets, Timestamp

__all__ = ["next_snapshot", "next_timestamp"]


def next_snapshot(
    previous: Snapshot | None,
    roles: Mapping[str, bytes],
    signer: Signer,
    *,
    now: datetime,
    expiry: timedelta,
) -> Metadata[Snapshot]:
    """A snapshot one version above ``previous`` listing ``roles`` ({"targets": bytes,
    "<vendor>": bytes}) and every role ``previous`` listed."""
    meta: dict[str, MetaFile] = dict(previous.meta) if previous is not None else {}
    for name, data in roles.items():
        role: Metadata[Targets] = Metadata.from_bytes(data)
        meta[f"{name}.json"] = MetaFile(version=role.signed.version, length=len(data))
    snapshot = Snapshot(
        version=(previous.version + 1) if previous is not None else 1,
        expires=now.replace(microsecond=0) + expiry,
        meta=meta,
    )
    md = Metadata(snapshot)
    md.sign(signer)
    return md


def next_timestamp(
    previous: Timestamp | None,
    snapshot_bytes: bytes,
    snapshot_version: int,
    signer: Signer,
    *,
    now: datetime,
    expiry: timedelta,
) -> Metadata[Timestamp]:
    """A timestamp one version above ``previous`` naming these snapshot bytes."""
    timestamp = Timestamp(
        version=(previous.version + 1) if previous is not None else 1,
        expires=now.replace(microsecond=0) + expiry,
        snapshot_meta=MetaFile.from_data(snapshot_version, snapshot_bytes, ["sha256"]),
    )
    md = Metadata(timestamp)
    md.sign(signer)
    return md

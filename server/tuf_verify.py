"""The server's trust decisions on uploaded TUF metadata: pure, and made before anything is stored.

Each function takes what the repository currently trusts, the uploaded bytes and
"now", and returns the parsed metadata or raises ``ReleaseRejectedError`` whose
``code`` (a ``RejectCode``) names the one rule broken. No file, socket or
database here: ``server.tuf_repository`` reads the current state, calls these,
and writes only what they accepted.

The checks, in order (the first failing one is reported):

- ``vendor_mismatch``   a vendor token uploading another vendor's role
- ``malformed``         not TUF metadata of the expected type
- ``unknown_vendor``    no delegation of that name in the current top-level targets
- ``unsigned``          no signature at all
- ``foreign_key``       below threshold and signed by a key the delegation does not list
- ``below_threshold``   fewer valid signatures of delegated keys than the threshold
- ``expired``           its ``expires`` is not in the future
- ``version_not_higher``  not above the current version (root: checked first, and a
                        root must be exactly current + 1)
- ``path_outside_pattern``  a target outside the vendor's patterns (python-tuf's
                        client ignores those silently; the server refuses them)
- ``manifest_invalid``  a target whose ``custom`` is no valid release manifest
- ``artifact_missing``  a new or changed target whose bytes were not uploaded
- ``artifact_mismatch`` uploaded bytes whose length or sha256 differ from the target's
- ``release_counter_not_greater``  a new release not above its package's last counter
- ``online_keys_mismatch``  a root whose snapshot/timestamp keys are not the server's
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from tuf.api.metadata import Metadata, Root, Signed, TargetFile, Targets

from firmware_manifests.release_manifest import ManifestError, ReleaseManifest, manifest_from_custom
from server.errors import ReleaseRejectedError

__all__ = [
    "ArtifactFacts",
    "RejectCode",
    "VerifiedRole",
    "counter_key",
    "verify_root",
    "verify_targets",
    "verify_vendor_role",
]


_S = TypeVar("_S", Root, Targets)


class RejectCode(StrEnum):
    VENDOR_MISMATCH = "vendor_mismatch"
    MALFORMED = "malformed"
    UNKNOWN_VENDOR = "unknown_vendor"
    UNSIGNED = "unsigned"
    FOREIGN_KEY = "foreign_key"
    BELOW_THRESHOLD = "below_threshold"
    EXPIRED = "expired"
    VERSION_NOT_HIGHER = "version_not_higher"
    PATH_OUTSIDE_PATTERN = "path_outside_pattern"
    MANIFEST_INVALID = "manifest_invalid"
    ARTIFACT_MISSING = "artifact_missing"
    ARTIFACT_MISMATCH = "artifact_mismatch"
    RELEASE_COUNTER_NOT_GREATER = "release_counter_not_greater"
    ONLINE_KEYS_MISMATCH = "online_keys_mismatch"
    DELEGATIONS_NOT_ALLOWED = "delegations_not_allowed"


def _reject(code: RejectCode, message: str) -> ReleaseRejectedError:
    return ReleaseRejectedError(code.value, message)


@dataclass(frozen=True, slots=True)
class ArtifactFacts:
    """What the server measured of uploaded bytes."""

    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class VerifiedRole:
    """A vendor role accepted: the metadata, and the targets that are new or changed
    (their bytes must move from the upload area into the store) with their manifests."""

    metadata: Metadata[Targets]
    new_targets: Mapping[str, ReleaseManifest] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)


def counter_key(vendor: str, package: str) -> str:
    """Release counters are kept per vendor and package."""
    return f"{vendor}/{package}"


def _parse(data: bytes, kind: type[_S]) -> Metadata[_S]:
    try:
        md: Metadata[_S] = Metadata.from_bytes(data)
    except Exception as exc:  # noqa: BLE001 - python-tuf raises many types for bad bytes
        raise _reject(RejectCode.MALFORMED, f"not TUF metadata: {exc}") from None
    if not isinstance(md.signed, kind):
        raise _reject(RejectCode.MALFORMED, f"expected {kind.type} metadata, got {md.signed.type}")
    return md


def _check_signatures(
    delegator: Root | Targets, role: str, md: Metadata[Root] | Metadata[Targets], what: str
) -> list[str]:
    """The keyids that signed validly; raises for unsigned, foreign_key, below_threshold."""
    if not md.signatures:
        raise _reject(RejectCode.UNSIGNED, f"{what} carries no signature")
    result = delegator.get_verification_result(role, md.signed_bytes, md.signatures)
    if result.verified:
        return sorted(result.signed)
    delegated = set(delegator.get_delegated_role(role).keyids)
    foreign = sorted(k for k in md.signatures if k not in delegated)
    counted = f"{len(result.signed)} valid of threshold {result.threshold}"
    if foreign:
        raise _reject(
            RejectCode.FOREIGN_KEY,
            f"{what} is signed by keys outside its delegation ({', '.join(foreign)}); {counted}",
        )
    raise _reject(RejectCode.BELOW_THRESHOLD, f"{what}: {counted}")


def _check_expiry(signed: Signed, what: str, now: datetime) -> None:
    if signed.is_expired(now):
        raise _reject(RejectCode.EXPIRED, f"{what} expired at {signed.expires.isoformat()}")


def verify_root(
    current: Metadata[Root] | None,
    data: bytes,
    now: datetime,
    *,
    online_keyids: Mapping[str, str],
) -> Metadata[Root]:
    """A new root: ``current.version + 1``, signed by the threshold of the current root and
    by its own, not expired, listing ``online_keyids`` ({"snapshot": keyid, ...}, the keys
    the server signs with) for snapshot and timestamp. With no current root the upload is
    the first one: signed by its own threshold."""
    md = _parse(data, Root)
    new = md.signed
    what = f"root v{new.version}"
    if current is not None and new.version <= current.signed.version:
        raise _reject(
            RejectCode.VERSION_NOT_HIGHER,
            f"{what} is not above the current v{current.signed.version}",
        )
    if current is not None:
        _check_signatures(current.signed, Root.type, md, what + " (by the current root)")
    _check_signatures(new, Root.type, md, what)
    _check_expiry(new, what, now)
    if current is not None and new.version != current.signed.version + 1:
        raise _reject(
            RejectCode.VERSION_NOT_HIGHER,
            f"{what}: the next root must be version {current.signed.version + 1}",
        )
    for role, keyid in online_keyids.items():
        if keyid not in new.roles[role].keyids:
            raise _reject(
                RejectCode.ONLINE_KEYS_MISMATCH,
                f"{what} does not list the server's {role} key {keyid}",
            )
    return md


def verify_targets(
    root: Root, current: Metadata[Targets] | None, data: bytes, now: datetime
) -> Metadata[Targets]:
    """New top-level targets: signed by root's targets threshold, not expired, higher version."""
    md = _parse(data, Targets)
    what = f"targets v{md.signed.version}"
    _check_signatures(root, Targets.type, md, what)
    _check_expiry(md.signed, what, now)
    if current is not None and md.signed.version <= current.signed.version:
        raise _reject(
            RejectCode.VERSION_NOT_HIGHER,
            f"{what} is not above the current v{current.signed.version}",
        )
    return md


def _changed(new: TargetFile, old: TargetFile | None) -> bool:
    return old is None or old.length != new.length or old.hashes != new.hashes


def verify_vendor_role(
    top: Targets,
    vendor: str,
    current: Metadata[Targets] | None,
    data: bytes,
    now: datetime,
    *,
    token_vendor: str | None,
    counters: Mapping[str, int],
    uploaded: Callable[[str], ArtifactFacts | None],
) -> VerifiedRole:
    """A vendor's delegated role, checked against the top-level targets ``top``.

    ``token_vendor``: the vendor the uploading token is bound to (None for an admin).
    ``counters``: the last release_counter per ``counter_key``. ``uploaded(path)``: what
    was measured of the bytes uploaded for a target path, None if none were.
    """
    if token_vendor is not None and token_vendor != vendor:
        raise _reject(
            RejectCode.VENDOR_MISMATCH,
            f"a token of vendor {token_vendor!r} cannot publish role {vendor!r}",
        )
    md = _parse(data, Targets)
    delegations = top.delegations
    if delegations is None or not delegations.roles or vendor not in delegations.roles:
        raise _reject(RejectCode.UNKNOWN_VENDOR, f"no vendor {vendor!r} is delegated")
    what = f"{vendor} v{md.signed.version}"
    _check_signatures(top, vendor, md, what)
    _check_expiry(md.signed, what, now)
    if current is not None and md.signed.version <= current.signed.version:
        raise _reject(
            RejectCode.VERSION_NOT_HIGHER,
            f"{what} is not above the current v{current.signed.version}",
        )
    role = delegations.roles[vendor]
    outside = sorted(p for p in md.signed.targets if not role.is_delegated_path(p))
    if outside:
        raise _reject(
            RejectCode.PATH_OUTSIDE_PATTERN,
            f"{what} lists {', '.join(outside)} outside its patterns {role.paths}",
        )
    if md.signed.delegations is not None:
        # The server serves no role below a vendor's; a client would follow the delegation
        # and fail, so a vendor signs its releases itself (docs/updates.md).
        raise _reject(
            RejectCode.DELEGATIONS_NOT_ALLOWED, f"{what} delegates further: vendors may not"
        )
    manifests: dict[str, ReleaseManifest] = {}
    for path, target in sorted(md.signed.targets.items()):
        try:
            manifests[path] = manifest_from_custom(target.custom)
        except ManifestError as exc:
            raise _reject(RejectCode.MANIFEST_INVALID, f"{path}: {exc}") from None
    old_targets = current.signed.targets if current is not None else {}
    new_paths = [p for p, t in md.signed.targets.items() if _changed(t, old_targets.get(p))]
    for path in sorted(new_paths):
        _check_artifact(path, md.signed.targets[path], uploaded(path))
    next_counters: dict[str, int] = {}
    for path in sorted(new_paths, key=lambda p: manifests[p].release_counter):
        manifest = manifests[path]
        key = counter_key(vendor, manifest.package)
        last = next_counters.get(key, counters.get(key, 0))
        if manifest.release_counter <= last:
            raise _reject(
                RejectCode.RELEASE_COUNTER_NOT_GREATER,
                f"{path}: release_counter {manifest.release_counter} of {manifest.package} "
                f"is not above its last {last}",
            )
        next_counters[key] = manifest.release_counter
    return VerifiedRole(md, {p: manifests[p] for p in new_paths}, next_counters)


def _check_artifact(path: str, target: TargetFile, facts: ArtifactFacts | None) -> None:
    if facts is None:
        raise _reject(RejectCode.ARTIFACT_MISSING, f"{path}: its bytes were not uploaded")
    expected = target.hashes.get("sha256")
    if expected is None:
        raise _reject(RejectCode.ARTIFACT_MISMATCH, f"{path}: the target has no sha256 hash")
    if facts.length != target.length or facts.sha256 != expected:
        raise _reject(
            RejectCode.ARTIFACT_MISMATCH,
            f"{path}: uploaded {facts.length} bytes sha256 {facts.sha256}, the target says "
            f"{target.length} bytes sha256 {expected}",
        )

"""A vendor's offline side: its keys and its delegated targets role.

``sign_release`` adds one artifact as a target ``<vendor>/<name>`` whose ``custom``
carries the release manifest, bumps the role's version and expiry and signs it
with the vendor keys given (as many as the delegation's threshold asks). The role
file is the vendor's own record: each release is signed on top of the previous
file, so the version grows by one per signing. Nothing here talks to the server
(``kioskfleet vendor publish`` does, through ``kioskfleet.update_client``).

Raises ``VendorToolError`` for anything the vendor must fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from firmware_manifests.keys import write_atomically
from firmware_manifests.release_manifest import ReleaseManifest

__all__ = ["DEFAULT_ROLE_EXPIRY", "VendorToolError", "resign_role", "sign_release", "target_path"]

DEFAULT_ROLE_EXPIRY: Final = timedelta(days=90)


class VendorToolError(Exception):
    """A vendor command that cannot be done as asked."""


def target_path(vendor: str, name: str) -> str:
    """``<vendor>/<name>``: one level below the vendor (TUF patterns match one level)."""
    if not name or "/" in name or name.startswith("."):
        raise VendorToolError(f"a target name is one path segment, not {name!r}")
    return f"{vendor}/{name}"


def load_role(path: Path) -> Metadata[Targets] | None:
    if not path.exists():
        return None
    try:
        return Metadata[Targets].from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - python-tuf raises several types for bad files
        raise VendorToolError(f"{path}: not a targets role ({exc})") from None


def sign_release(
    role_file: Path,
    artifact: Path,
    manifest: ReleaseManifest,
    signers: Sequence[Signer],
    *,
    vendor: str,
    name: str | None = None,
    expiry: timedelta = DEFAULT_ROLE_EXPIRY,
    now: datetime | None = None,
) -> Metadata[Targets]:
    """Add ``artifact`` with ``manifest`` to the role in ``role_file`` (created if absent),
    bump version and expiry, sign with ``signers`` and write the file back."""
    if not signers:
        raise VendorToolError("at least one vendor key is needed to sign")
    existing = load_role(role_file)
    targets = existing.signed if existing is not None else Targets(version=1)
    path = target_path(vendor, name or artifact.name)
    target = TargetFile.from_file(path, str(artifact), ["sha256"])
    target.unrecognized_fields["custom"] = manifest.to_custom()
    targets.targets[path] = target
    if existing is not None:
        targets.version += 1
    targets.expires = (now or datetime.now(UTC)).replace(microsecond=0) + expiry
    md = Metadata(targets)
    for signer in signers:
        md.sign(signer, append=True)
    write_atomically(role_file, md.to_bytes(JSONSerializer(compact=False)))
    return md


def resign_role(
    role_file: Path,
    signers: Sequence[Signer],
    *,
    expiry: timedelta = DEFAULT_ROLE_EXPIRY,
    remove: Sequence[str] = (),
    now: datetime | None = None,
) -> Metadata[Targets]:
    """A new version of the role with a fresh expiry (and ``remove``'d targets dropped)."""
    md = load_role(role_file)
    if md is None:
        raise VendorToolError(f"{role_file} does not exist")
    for path in remove:
        md.signed.targets.pop(path, None)
    md.signed.version += 1
    md.signed.expires = (now or datetime.now(UTC)).replace(microsecond=0) + expiry
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    write_atomically(role_file, md.to_bytes(JSONSerializer(compact=False)))
    return md

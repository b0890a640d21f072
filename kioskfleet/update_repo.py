"""The operator's offline TUF repository: root and top-level targets, their keys, vendors.

A directory the operator keeps offline (``kioskfleet repo init DIR``)::

    DIR/keys/root/<keyid>.key      root keys (threshold), offline
    DIR/keys/targets/<keyid>.key   top-level targets keys (threshold), offline
    DIR/keys/retired/...           keys rotated out (kept for the record, never used)
    DIR/online/snapshot.key        online keys: copy to the server, then delete here
    DIR/online/timestamp.key
    DIR/metadata/<N>.root.json     every root version (the server needs them all)
    DIR/metadata/targets.json      the current top-level targets

Each command loads the current metadata, changes it, bumps its version and expiry
and signs it with every key of the role found under ``keys/`` (a threshold ceremony
gathers enough key media into that directory). Root changes are signed by the
threshold of the old root and of the new one, so a client that trusts the old root
follows. The operator uploads ``metadata/`` with an admin token (``repo upload``);
the server verifies it against its current root before accepting it.

Raises ``RepoToolError`` for anything the operator must fix; never half-writes a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    Root,
    TargetFile,
    Targets,
)
from tuf.api.serialization.json import JSONSerializer

from firmware_manifests.keys import (
    KeyFileError,
    generate_key,
    load_signer,
    public_key_dict,
    write_atomically,
    write_key_pair,
)

__all__ = [
    "DIRECTIVE_KEY_TARGET",
    "Expiry",
    "OperatorRepo",
    "RepoToolError",
]

DIRECTIVE_KEY_TARGET: Final = "_pins/directive-key.pub"
"""The top-level target whose ``custom["key"]`` pins the server's directive key."""
_VENDOR: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # as a vendor token names it
ONLINE_ROLES: Final = ("snapshot", "timestamp")
OFFLINE_ROLES: Final = ("root", "targets")


class RepoToolError(Exception):
    """An operator command that cannot be done as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Expiry:
    """How long what the operator signs stays valid."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _serialize(md: Metadata[Root] | Metadata[Targets]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


class OperatorRepo:
    """The offline repository in ``path``. Construct with ``init`` or ``open``."""

    def __init__(self, path: Path, *, expiry: Expiry | None = None) -> None:
        self.path = path
        self.expiry = expiry or Expiry()

    # --- layout ---------------------------------------------------------------------------

    @property
    def metadata_dir(self) -> Path:
        return self.path / "metadata"

    def key_dir(self, role: str) -> Path:
        return self.path / "keys" / role

    @property
    def online_dir(self) -> Path:
        return self.path / "online"

    # --- reading --------------------------------------------------------------------------

    def root_versions(self) -> list[int]:
        """Every root version present, ascending."""
        return sorted(
            int(p.name.split(".", 1)[0])
            for p in self.metadata_dir.glob("*.root.json")
            if p.name.split(".", 1)[0].isdigit()
        )

    def root(self) -> Metadata[Root]:
        versions = self.root_versions()
        if not versions:
            raise RepoToolError(f"{self.path}: no root metadata (run `kioskfleet repo init`)")
        return Metadata[Root].from_file(str(self.metadata_dir / f"{versions[-1]}.root.json"))

    def targets(self) -> Metadata[Targets]:
        path = self.metadata_dir / "targets.json"
        if not path.is_file():
            raise RepoToolError(f"{path} is missing")
        return Metadata[Targets].from_file(str(path))

    def signers(self, role: str, keyids: Iterable[str]) -> list[Signer]:
        """The private keys of ``keyids`` present in ``keys/<role>/`` (online keys for
        snapshot and timestamp: ``online/``)."""
        wanted = set(keyids)
        found: list[Signer] = []
        for path in sorted(self.key_dir(role).glob("*.key")):
            try:
                signer = load_signer(path)
            except KeyFileError as exc:
                raise RepoToolError(str(exc)) from None
            if signer.public_key.keyid in wanted:
                found.append(signer)
        return found

    # --- writing --------------------------------------------------------------------------

    def _sign(self, md: Metadata[Root] | Metadata[Targets], signers: Sequence[Signer]) -> None:
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)

    def _write_root(self, md: Metadata[Root], previous: Metadata[Root] | None) -> Path:
        """Sign-check and write ``md`` as ``<version>.root.json``."""
        try:
            if previous is not None:
                previous.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
            md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepoToolError(
                f"root v{md.signed.version} does not reach the old and new thresholds "
                f"with the keys under {self.key_dir('root')}: {exc}"
            ) from None
        path = self.metadata_dir / f"{md.signed.version}.root.json"
        write_atomically(path, _serialize(md))
        return path

    def _write_targets(self, md: Metadata[Targets], root: Root) -> Path:
        try:
            root.verify_delegate(Targets.type, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepoToolError(
                f"targets v{md.signed.version}: not enough targets keys under "
                f"{self.key_dir('targets')}: {exc}"
            ) from None
        path = self.metadata_dir / "targets.json"
        write_atomically(path, _serialize(md))
        return path

    def _new_keys(self, role: str, count: int) -> list[Key]:
        keys: list[Key] = []
        for _ in range(count):
            signer = generate_key()
            if role in ONLINE_ROLES:
                write_key_pair(signer, self.online_dir, role)
            else:
                write_key_pair(signer, self.key_dir(role), signer.public_key.keyid)
            keys.append(signer.public_key)
        return keys

    # --- commands -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path,
        *,
        root_keys: int = 3,
        root_threshold: int = 2,
        targets_keys: int = 2,
        targets_threshold: int = 1,
        expiry: Expiry | None = None,
    ) -> OperatorRepo:
        """Create keys, ``1.root.json`` (consistent snapshots) and ``targets.json`` v1."""
        if not 1 <= root_threshold <= root_keys or not 1 <= targets_threshold <= targets_keys:
            raise RepoToolError("each threshold must be between 1 and its number of keys")
        repo = cls(path, expiry=expiry)
        if repo.metadata_dir.exists() or (path / "keys").exists():
            raise RepoToolError(f"{path} already holds a repository")
        root = Root(expires=_now() + repo.expiry.root, consistent_snapshot=True)
        counts = {"root": root_keys, "targets": targets_keys, "snapshot": 1, "timestamp": 1}
        for role, count in counts.items():
            for key in repo._new_keys(role, count):
                root.add_key(key, role)
        root.roles["root"].threshold = root_threshold
        root.roles["targets"].threshold = targets_threshold
        root_md = Metadata(root)
        repo._sign(root_md, repo.signers("root", root.roles["root"].keyids))
        repo._write_root(root_md, None)
        targets_md = Metadata(
            Targets(
                expires=_now() + repo.expiry.targets, delegations=Delegations(keys={}, roles={})
            )
        )
        repo._sign(targets_md, repo.signers("targets", root.roles["targets"].keyids))
        repo._write_targets(targets_md, root)
        return repo

    @classmethod
    def open(cls, path: Path, *, expiry: Expiry | None = None) -> OperatorRepo:
        repo = cls(path, expiry=expiry)
        repo.root()  # raises if there is none
        return repo

    def _change_targets(self, change: Targets) -> Path:
        root = self.root().signed
        change.version += 1
        change.expires = _now() + self.expiry.targets
        md = Metadata(change)
        self._sign(md, self.signers("targets", root.roles["targets"].keyids))
        return self._write_targets(md, root)

    def add_vendor(
        self, vendor: str, keys: Sequence[Key], *, threshold: int, paths: Sequence[str]
    ) -> Path:
        """Delegate ``paths`` to role ``vendor`` with ``keys`` and ``threshold`` (replacing
        an existing delegation of that name: how a vendor key is rotated or revoked)."""
        if not _VENDOR.fullmatch(vendor):
            raise RepoToolError(f"a vendor name is 1-64 of a-z, 0-9, '_', '-', not {vendor!r}")
        if not keys or not 1 <= threshold <= len(keys):
            raise RepoToolError("a vendor needs keys and a threshold between 1 and their number")
        if not paths or any(not p.startswith(f"{vendor}/") for p in paths):
            raise RepoToolError(f"every path pattern of {vendor!r} must start with {vendor}/")
        targets = self.targets().signed
        delegations = targets.delegations or Delegations(keys={}, roles={})
        assert delegations.roles is not None
        delegations.roles.pop(vendor, None)
        delegations.roles[vendor] = DelegatedRole(
            vendor, [k.keyid for k in keys], threshold, terminating=True, paths=list(paths)
        )
        for key in keys:
            delegations.keys[key.keyid] = key
        _drop_unused_keys(delegations)
        targets.delegations = delegations
        return self._change_targets(targets)

    def revoke_vendor(self, vendor: str) -> Path:
        """Remove the delegation to ``vendor``: clients stop trusting its role."""
        targets = self.targets().signed
        if (
            targets.delegations is None
            or not targets.delegations.roles
            or vendor not in targets.delegations.roles
        ):
            raise RepoToolError(f"no vendor {vendor!r} is delegated")
        del targets.delegations.roles[vendor]
        _drop_unused_keys(targets.delegations)
        return self._change_targets(targets)

    def pin_directive_key(self, key: Key) -> Path:
        """Pin the server's directive key as the target ``_pins/directive-key.pub``."""
        data = json.dumps(public_key_dict(key), sort_keys=True).encode()
        target = TargetFile.from_data(DIRECTIVE_KEY_TARGET, data, ["sha256"])
        target.unrecognized_fields["custom"] = {"key": public_key_dict(key)}
        targets = self.targets().signed
        targets.targets[DIRECTIVE_KEY_TARGET] = target
        return self._change_targets(targets)

    def resign(self, role: str) -> Path:
        """A new version of ``root`` or ``targets`` with a fresh expiry, nothing else changed."""
        if role == "targets":
            return self._change_targets(self.targets().signed)
        if role == "root":
            return self._change_root(lambda _root: None)
        raise RepoToolError(f"the operator re-signs root or targets, not {role!r}")

    def rotate_key(
        self, role: str, *, keys: int | None = None, threshold: int | None = None
    ) -> list[Path]:
        """Replace every key of ``role`` with new ones (optionally a new count/threshold).

        Root: the new root is signed by the old root keys' threshold and by the new keys.
        Targets: root lists the new keys and targets is re-signed with them. Snapshot and
        timestamp: new online keys in ``online/`` (install them on the server).
        Old private keys move to ``keys/retired/``.
        """
        if role not in (*OFFLINE_ROLES, *ONLINE_ROLES):
            raise RepoToolError(f"unknown role {role!r}")
        current = self.root()
        old_role = current.signed.roles[role]
        count = keys or len(old_role.keyids)
        new_threshold = threshold or min(old_role.threshold, count)
        if not 1 <= new_threshold <= count:
            raise RepoToolError("the threshold must be between 1 and the number of keys")
        old_signers = self.signers("root", current.signed.roles["root"].keyids)
        old_ids = list(old_role.keyids)
        if role in ONLINE_ROLES:
            self._retire(self.online_dir, [role])
        new_keys = self._new_keys(role, count)

        def change(root: Root) -> None:
            for keyid in old_ids:
                root.revoke_key(keyid, role)
            for key in new_keys:
                root.add_key(key, role)
            root.roles[role].threshold = new_threshold

        written = [self._change_root(change, extra_signers=old_signers)]
        if role == "targets":
            written.append(self._change_targets(self.targets().signed))
        if role in OFFLINE_ROLES:
            self._retire(self.key_dir(role), old_ids)
        return written

    def _change_root(self, change: object, *, extra_signers: Sequence[Signer] = ()) -> Path:
        previous = self.root()
        md = Metadata[Root].from_bytes(previous.to_bytes())
        root = md.signed
        assert callable(change)
        change(root)
        root.version += 1
        root.expires = _now() + self.expiry.root
        signers = {s.public_key.keyid: s for s in extra_signers}
        for s in self.signers("root", root.roles["root"].keyids):
            signers[s.public_key.keyid] = s
        self._sign(md, list(signers.values()))
        return self._write_root(md, previous)

    def _retire(self, directory: Path, names: Iterable[str]) -> None:
        retired = self.path / "keys" / "retired"
        retired.mkdir(parents=True, exist_ok=True)
        for name in names:
            for suffix in (".key", ".pub.json"):
                path = directory / f"{name}{suffix}"
                if path.exists():
                    path.replace(
                        retired / f"{directory.name}-{name}-{_now():%Y%m%dT%H%M%S}{suffix}"
                    )


def _drop_unused_keys(delegations: Delegations) -> None:
    used = {k for role in (delegations.roles or {}).values() for k in role.keyids}
    for keyid in list(delegations.keys):
        if keyid not in used:
            del delegations.keys[keyid]

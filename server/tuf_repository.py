"""The server's TUF repository: stores what ``server.tuf_verify`` accepted, signs snapshot and
timestamp with the online keys, and answers what to serve.

On disk (``updates_dir``; the artifact store sits beside in ``artifacts/``)::

    metadata/<N>.root.json        every root ever accepted (clients walk them in order)
    metadata/<v>.targets.json     top-level targets, operator-signed
    metadata/<v>.<vendor>.json    each vendor's role, vendor-signed
    metadata/<v>.snapshot.json    online-signed
    metadata/timestamp.json       online-signed; written last: the commit point
    ledger.json                   release counters and who published what (written
                                  before the timestamp, so a crash can only make the
                                  next counter check stricter, never laxer)

Every change runs under one lock: verify (pure, nothing written if it fails), write
the new versioned files (no client sees them yet), move uploaded artifacts into the
blobs, write snapshot, ledger, then timestamp. Raises ``ReleaseRejectedError`` for a
refused upload and ``UpdatesError`` when the files cannot be read or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from firmware_manifests.keys import write_atomically
from firmware_manifests.release_manifest import ManifestError, manifest_from_custom
from server.artifact_store import ArtifactStore, is_segment
from server.errors import ReleaseRejectedError, UpdatesError
from server.tuf_online import next_snapshot, next_timestamp
from server.tuf_verify import (
    ArtifactFacts,
    VerifiedRole,
    verify_root,
    verify_targets,
    verify_vendor_role,
)

__all__ = ["OnlineExpiry", "Publication", "ReleaseView", "TufRepository", "metadata_kind"]

log = logging.getLogger(__name__)

_VERSIONED: Final = re.compile(r"^([1-9][0-9]{0,9})\.([A-Za-z0-9][A-Za-z0-9._+-]{0,127})\.json$")
EXPIRY_ROLES: Final = ("root", "targets", "snapshot", "timestamp", "vendors")
"""The bounded label set of the expiry gauge: ``vendors`` is the soonest vendor role."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _bytes(md: Metadata[Any]) -> bytes:
    return bytes(md.to_bytes(JSONSerializer(compact=False)))


def metadata_kind(filename: str) -> str | None:
    """``timestamp``, ``root``, ``versioned`` or None for what is no metadata file name."""
    if filename == "timestamp.json":
        return "timestamp"
    match = _VERSIONED.match(filename)
    if match is None or ".." in filename:
        return None
    return "root" if match.group(2) == "root" else "versioned"


@dataclass(frozen=True, slots=True)
class OnlineExpiry:
    """How long online-signed metadata lives and when the job re-signs it."""

    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    resign_before: float = 0.5
    """Re-sign once less than this fraction of its lifetime remains."""


@dataclass(frozen=True, slots=True)
class Publication:
    """One accepted vendor role."""

    at: str
    actor: str
    vendor: str
    version: int
    targets: tuple[str, ...]
    signed_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReleaseView:
    """One target as the API lists it."""

    vendor: str
    path: str
    length: int
    sha256: str
    manifest: Mapping[str, Any] | None
    role_version: int
    status: str  # verified, expired, revoked, invalid
    signed_by: tuple[str, ...]
    detail: str = ""


@dataclass
class _State:
    roots: list[Metadata[Root]] = field(default_factory=list)
    targets: Metadata[Targets] | None = None
    vendors: dict[str, Metadata[Targets]] = field(default_factory=dict)
    snapshot: Metadata[Snapshot] | None = None
    timestamp: Metadata[Timestamp] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    publications: list[Publication] = field(default_factory=list)


class TufRepository:
    """The repository in ``directory``. ``load()`` once, then any method from any thread."""

    def __init__(
        self,
        directory: Path,
        store: ArtifactStore,
        *,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        expiry: OnlineExpiry | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.directory = directory
        self.metadata_dir = directory / "metadata"
        self.store = store
        self._snapshot_signer = snapshot_signer
        self._timestamp_signer = timestamp_signer
        self._expiry = expiry or OnlineExpiry()
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _State()

    # --- loading --------------------------------------------------------------------------

    def load(self) -> None:
        """Read what is on disk (nothing yet is fine). Raises UpdatesError."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        state = _State()
        try:
            n = 1
            while (path := self.metadata_dir / f"{n}.root.json").is_file():
                state.roots.append(Metadata.from_file(str(path)))
                n += 1
            ts_path = self.metadata_dir / "timestamp.json"
            if ts_path.is_file():
                state.timestamp = Metadata.from_file(str(ts_path))
                sv = state.timestamp.signed.snapshot_meta.version
                state.snapshot = Metadata.from_file(str(self.metadata_dir / f"{sv}.snapshot.json"))
                for name, meta in state.snapshot.signed.meta.items():
                    role = name.removesuffix(".json")
                    md: Metadata[Targets] = Metadata.from_file(
                        str(self.metadata_dir / f"{meta.version}.{role}.json")
                    )
                    if role == "targets":
                        state.targets = md
                    else:
                        state.vendors[role] = md
            ledger = self.directory / "ledger.json"
            if ledger.is_file():
                data = json.loads(ledger.read_bytes())
                state.counters = {str(k): int(v) for k, v in data["counters"].items()}
                state.publications = [
                    Publication(
                        **{**p, "targets": tuple(p["targets"]), "signed_by": tuple(p["signed_by"])}
                    )
                    for p in data["publications"]
                ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UpdatesError(
                f"cannot load the update repository {self.directory}: {exc}"
            ) from exc
        with self._lock:
            self._state = state
        log.info(
            "update repository: root v%s, %d vendor roles",
            state.roots[-1].signed.version if state.roots else None,
            len(state.vendors),
        )

    # --- uploads --------------------------------------------------------------------------

    def _online_keyids(self) -> dict[str, str]:
        return {
            "snapshot": self._snapshot_signer.public_key.keyid,
            "timestamp": self._timestamp_signer.public_key.keyid,
        }

    def upload_root(self, data: bytes) -> Metadata[Root]:
        """Accept root ``N+1`` (or the first root). Raises ReleaseRejectedError, UpdatesError."""
        with self._lock:
            state = self._state
            current = state.roots[-1] if state.roots else None
            md = verify_root(current, data, self._clock(), online_keyids=self._online_keyids())
            self._write(f"{md.signed.version}.root.json", data)
            state.roots.append(md)
            log.info("accepted root v%d", md.signed.version)
            return md

    def upload_targets(self, data: bytes) -> Metadata[Targets]:
        """Accept new top-level targets; snapshot and timestamp follow."""
        with self._lock:
            state = self._state
            if not state.roots:
                raise ReleaseRejectedError("no_root", "upload a root first", status=409)
            md = verify_targets(state.roots[-1].signed, state.targets, data, self._clock())
            self._write(f"{md.signed.version}.targets.json", data)
            state.targets = md
            self._publish_online({"targets": data})
            log.info("accepted targets v%d", md.signed.version)
            return md

    def publish_vendor_role(
        self, vendor: str, data: bytes, *, token_vendor: str | None, actor: str
    ) -> VerifiedRole:
        """Accept a vendor's role and move its new artifacts from the uploads into the blobs."""
        if not is_segment(vendor):
            raise ReleaseRejectedError("invalid_name", f"not a vendor name: {vendor!r}")
        with self._lock:
            state = self._state
            if state.targets is None:
                raise ReleaseRejectedError(
                    "no_targets", "the operator has not uploaded targets", status=409
                )

            def uploaded(path: str) -> ArtifactFacts | None:
                return self.store.measure(vendor, path.rsplit("/", 1)[-1])

            verified = verify_vendor_role(
                state.targets.signed,
                vendor,
                state.vendors.get(vendor),
                data,
                self._clock(),
                token_vendor=token_vendor,
                counters=state.counters,
                uploaded=uploaded,
            )
            md = verified.metadata
            for path in verified.new_targets:  # blobs first: unreferenced until the timestamp
                sha256 = md.signed.targets[path].hashes["sha256"]
                self.store.commit(vendor, path.rsplit("/", 1)[-1], sha256)
            self._write(f"{md.signed.version}.{vendor}.json", data)
            # Memory follows only once snapshot and timestamp are on disk: if writing them
            # fails, the server goes on serving what its timestamp says (the blobs moved in
            # are unreferenced; the vendor uploads again and publishes the same role).
            before = (state.vendors.get(vendor), dict(state.counters), len(state.publications))
            state.vendors[vendor] = md
            state.counters.update(verified.counters)
            result = state.targets.signed.get_verification_result(
                vendor, md.signed_bytes, md.signatures
            )
            state.publications.append(
                Publication(
                    at=self._clock().isoformat(),
                    actor=actor,
                    vendor=vendor,
                    version=md.signed.version,
                    targets=tuple(sorted(verified.new_targets)),
                    signed_by=tuple(sorted(result.signed)),
                )
            )
            try:
                self._publish_online({vendor: data})
            except UpdatesError:
                previous, counters, published = before
                if previous is None:
                    state.vendors.pop(vendor, None)
                else:
                    state.vendors[vendor] = previous
                state.counters.clear()
                state.counters.update(counters)
                del state.publications[published:]
                with contextlib.suppress(UpdatesError):  # the ledger may have gone ahead
                    self._write_ledger()
                raise
            log.info(
                "accepted %s v%d (%d new targets)",
                vendor,
                md.signed.version,
                len(verified.new_targets),
            )
            return verified

    # --- online signing -------------------------------------------------------------------

    def _publish_online(self, changed: Mapping[str, bytes]) -> None:
        """New snapshot (listing ``changed`` roles) and timestamp; ledger before timestamp."""
        state = self._state
        now = self._clock()
        previous = state.snapshot.signed if state.snapshot is not None else None
        snapshot = next_snapshot(
            previous, changed, self._snapshot_signer, now=now, expiry=self._expiry.snapshot
        )
        snapshot_bytes = _bytes(snapshot)
        self._write(f"{snapshot.signed.version}.snapshot.json", snapshot_bytes)
        self._write_ledger()
        self._sign_timestamp(snapshot, snapshot_bytes, now)
        state.snapshot = snapshot

    def _sign_timestamp(
        self, snapshot: Metadata[Snapshot], snapshot_bytes: bytes, now: datetime
    ) -> None:
        state = self._state
        previous = state.timestamp.signed if state.timestamp is not None else None
        timestamp = next_timestamp(
            previous,
            snapshot_bytes,
            snapshot.signed.version,
            self._timestamp_signer,
            now=now,
            expiry=self._expiry.timestamp,
        )
        self._write("timestamp.json", _bytes(timestamp))
        state.timestamp = timestamp

    def refresh_online(self, *, before_write: Callable[[], object] = lambda: None) -> list[str]:
        """The scheduled job: re-sign snapshot and/or timestamp once less than
        ``resign_before`` of their lifetime remains. Returns what it re-signed.

        ``before_write`` is called once something is due, right before the files are
        replaced (the job lease's re-check: what it raises leaves the files as they were)."""
        with self._lock:
            state = self._state
            if state.snapshot is None or state.timestamp is None:
                return []
            now = self._clock()
            done: list[str] = []
            if self._due(state.snapshot.signed.expires, self._expiry.snapshot, now):
                before_write()
                self._publish_online({})
                return ["snapshot", "timestamp"]
            if self._due(state.timestamp.signed.expires, self._expiry.timestamp, now):
                before_write()
                snapshot_bytes = (
                    self.metadata_dir / f"{state.snapshot.signed.version}.snapshot.json"
                ).read_bytes()
                self._sign_timestamp(state.snapshot, snapshot_bytes, now)
                done.append("timestamp")
            return done

    def _due(self, expires: datetime, lifetime: timedelta, now: datetime) -> bool:
        return (expires - now) < lifetime * self._expiry.resign_before

    # --- reading --------------------------------------------------------------------------

    def expiries(self) -> dict[str, datetime]:
        """When each of ``EXPIRY_ROLES`` expires (``vendors``: the soonest delegated one)."""
        with self._lock:
            state = self._state
            out: dict[str, datetime] = {}
            if state.roots:
                out["root"] = state.roots[-1].signed.expires
            for role, md in (
                ("targets", state.targets),
                ("snapshot", state.snapshot),
                ("timestamp", state.timestamp),
            ):
                if md is not None:
                    out[role] = md.signed.expires
            delegated = self._delegated(state)
            vendor_expiries = [
                state.vendors[v].signed.expires for v in delegated if v in state.vendors
            ]
            if vendor_expiries:
                out["vendors"] = min(vendor_expiries)
            return out

    def _delegated(self, state: _State) -> dict[str, Any]:
        if state.targets is None or state.targets.signed.delegations is None:
            return {}
        return dict(state.targets.signed.delegations.roles or {})

    def metadata_file(self, filename: str) -> Path | None:
        """The file to serve for a metadata name, None if there is none (404)."""
        if metadata_kind(filename) is None:
            return None
        path = self.metadata_dir / filename
        return path if path.is_file() else None

    def target_blob(self, vendor: str, filename: str) -> Path | None:
        """The blob for a consistent-snapshot target URL ``<vendor>/<sha256>.<name>``: only
        when the vendor's current role lists ``<vendor>/<name>`` with that sha256."""
        sha, _, name = filename.partition(".")
        if not (is_segment(vendor) and is_segment(name)):
            return None
        with self._lock:
            role = self._state.vendors.get(vendor)
        target = role.signed.targets.get(f"{vendor}/{name}") if role is not None else None
        if target is None or target.hashes.get("sha256") != sha:
            return None
        return self.store.blob(sha)

    def is_delegated(self, vendor: str) -> bool:
        """Whether the current top-level targets delegate to ``vendor``."""
        with self._lock:
            return vendor in self._delegated(self._state)

    def vendors(self) -> list[dict[str, Any]]:
        """Every delegated vendor: its keys, threshold, patterns, current role version."""
        with self._lock:
            state = self._state
            out = []
            for name, role in sorted(self._delegated(state).items()):
                md = state.vendors.get(name)
                out.append(
                    {
                        "vendor": name,
                        "keyids": sorted(role.keyids),
                        "threshold": role.threshold,
                        "paths": list(role.paths or []),
                        "role_version": md.signed.version if md is not None else None,
                        "expires": md.signed.expires.isoformat() if md is not None else None,
                    }
                )
            return out

    def releases(self) -> list[ReleaseView]:
        """Every target of every vendor role held, with its verification status now."""
        with self._lock:
            state = self._state
            now = self._clock()
            delegated = self._delegated(state)
            out: list[ReleaseView] = []
            for vendor, md in sorted(state.vendors.items()):
                status, detail = "verified", ""
                signed_by: tuple[str, ...] = ()
                if vendor not in delegated or state.targets is None:
                    status, detail = "revoked", "no longer delegated by the top-level targets"
                else:
                    result = state.targets.signed.get_verification_result(
                        vendor, md.signed_bytes, md.signatures
                    )
                    signed_by = tuple(sorted(result.signed))
                    if not result.verified:
                        status, detail = (
                            "invalid",
                            f"{len(result.signed)} of {result.threshold} signatures",
                        )
                    elif md.signed.is_expired(now):
                        status, detail = "expired", md.signed.expires.isoformat()
                for path, target in sorted(md.signed.targets.items()):
                    try:
                        manifest: Mapping[str, Any] | None = manifest_from_custom(
                            target.custom
                        ).model_dump(mode="json")
                    except ManifestError:
                        manifest = None
                    out.append(
                        ReleaseView(
                            vendor=vendor,
                            path=path,
                            length=target.length,
                            sha256=target.hashes.get("sha256", ""),
                            manifest=manifest,
                            role_version=md.signed.version,
                            status=status,
                            signed_by=signed_by,
                            detail=detail,
                        )
                    )
            return out

    def top_level_custom(self, path: str) -> Mapping[str, Any] | None:
        """``custom`` of the top-level (operator-signed) target ``path``, None when absent
        (the rollout driver reads the directive key pin from it)."""
        with self._lock:
            targets = self._state.targets
            found = None if targets is None else targets.signed.targets.get(path)
            return None if found is None else found.custom

    def publications(self) -> list[Publication]:
        with self._lock:
            return list(self._state.publications)

    # --- writing --------------------------------------------------------------------------

    def _write(self, filename: str, data: bytes) -> None:
        try:
            write_atomically(self.metadata_dir / filename, data)
        except OSError as exc:
            raise UpdatesError(f"cannot write {filename}: {exc}") from exc

    def _write_ledger(self) -> None:
        state = self._state
        data = {
            "counters": state.counters,
            "publications": [dataclasses.asdict(p) for p in state.publications],
        }
        try:
            write_atomically(self.directory / "ledger.json", json.dumps(data, indent=1).encode())
        except OSError as exc:
            raise UpdatesError(f"cannot write the ledger: {exc}") from exc

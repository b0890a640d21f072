"""The terminal registry: which ids may enroll with which credentials, and which are active.

An operator pre-authorises a terminal id with its placement (hall, region,
model) and either its public key (``preauthorize``) or a one-time, expiring
token (``issue_token``). ``enroll`` turns a CSR plus those credentials into a
client certificate from the issuing CA; ``reenroll`` renews one, authenticated
by the terminal's current certificate; ``revoke`` and ``decommission`` retire a
terminal and rewrite the CRL (``crl.pem`` in the CA directory, atomically).

Rules (each proved in tests/integration/test_terminal_registry.py):

- an id with neither a pre-authorised key nor a valid token never enrolls;
- a token works once (consumed in the same transaction that records the
  certificate, guarded by ``used_at IS NULL``) and never after ``expires_at``;
- a CSR whose key is not the pre-authorised key fails;
- the certificate's CN is the registry's id: a CSR naming another CN fails;
- a revoked or decommissioned terminal enrolls and renews no more until an
  operator pre-authorises it again (new hardware: a new key or token).

An operator tags a registered terminal (``set_tags``: at most ``MAX_TAGS`` tags matching
``TAG_PATTERN``, the whole set replaced, audited ``terminal.tag``); a rollout's ``tags``
selector matches them (``tags`` answers from memory).

``is_active``, ``placement`` and ``tags`` answer from memory (a set and a dict kept in
step with the table by this process's own changes, loaded at ``open``): the
ingest asks them for every message. Every change and every refusal is recorded
through the ``AuditSink``. Raises ``EnrollmentRefusedError`` (with a bounded
``reason``) for refusals and ``StorageError`` when the database fails; never
logs a token or key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Connection, Engine, RowMapping

from protocol.messages import Label
from protocol.topics import is_valid_terminal_id
from server.audit import AuditEntry, AuditResult, AuditSink
from server.device_ca import CaPaths, DeviceCa, public_key_fingerprint, write_pem
from server.errors import DeviceCaError, EnrollmentRefusedError
from server.identity_tables import (
    DeviceCertificateRow,
    EnrollmentTokenRow,
    RegistryStatus,
    TerminalRegistryRow,
)
from server.lease_fence import check_current
from server.storage import database_errors
from server.terminal_rules import Placement

__all__ = [
    "MAX_TAGS",
    "REFUSALS",
    "REFUSAL_REASONS",
    "TAG_PATTERN",
    "Preauthorization",
    "RegisteredTerminal",
    "TerminalRegistry",
    "refusal",
    "token_hash",
]

log = logging.getLogger(__name__)

# Every reason a refusal carries, with its HTTP status: the one table (a metric label, the EST
# answer's status, docs/security.md's list). Raise refusals through ``refusal``.
REFUSALS: Final[Mapping[str, int]] = {
    "bad_csr": 400,  # not a parseable, self-signed PKCS#10 with one CN and an EC P-256 key
    "bad_key": 400,  # a pre-authorised key that is not an EC P-256 public key
    "bad_request": 400,  # an id, placement or lifetime that is not valid
    "not_authorized": 401,  # no credential applies: not pre-authorised and no token
    "bad_token": 401,  # no such token for this id, or an unreadable Basic header
    "token_used": 401,
    "token_expired": 401,
    "no_client_certificate": 401,  # a renewal without a TLS client certificate
    "key_mismatch": 403,  # the CSR's key is not the pre-authorised one
    "cn_mismatch": 403,  # the CSR's CN is not the id the credential is for
    "revoked": 403,  # the terminal or certificate is revoked or decommissioned
    "foreign_certificate": 403,  # not issued by this CA, expired, or not on record
    "unknown_terminal": 404,  # an operator command for an id the registry does not have
}
REFUSAL_REASONS: Final = frozenset(REFUSALS)

MAX_TAGS: Final = 16
"""How many tags one terminal may carry."""
TAG_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
"""One tag: 1-32 characters, letters, digits, ``.``, ``_``, ``-``, not starting with a sign."""
_TAG: Final = re.compile(TAG_PATTERN)


def refusal(reason: str, message: str) -> EnrollmentRefusedError:
    """The refusal for ``reason`` (a key of ``REFUSALS``, which gives its status)."""
    return EnrollmentRefusedError(reason, message, status=REFUSALS[reason])


_TERMINALS: Final = TerminalRegistryRow.__table__  # type: ignore[attr-defined]
_TOKENS: Final = EnrollmentTokenRow.__table__  # type: ignore[attr-defined]
_CERTS: Final = DeviceCertificateRow.__table__  # type: ignore[attr-defined]
_LABEL: Final = TypeAdapter(Label)
_RETIRED: Final = (RegistryStatus.REVOKED.value, RegistryStatus.DECOMMISSIONED.value)


def token_hash(token: str) -> str:
    """SHA-256 hex of a token: all the database ever holds of it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class RegisteredTerminal:
    """One registry row as the registry's callers see it."""

    terminal_id: str
    placement: Placement
    status: RegistryStatus
    public_key_fingerprint: str | None
    enrolled_at: datetime | None
    tags: tuple[str, ...] = ()  # sorted


@dataclass(frozen=True, slots=True)
class Preauthorization:
    """One line of a bulk pre-authorisation: an id, its placement and its public key (PEM)."""

    terminal_id: str
    hall: str
    region: str
    model: str
    public_key_pem: bytes


class TerminalRegistry:
    """See the module docstring. ``open()`` before use; one per process."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        ca_dir: Path,
        audit: AuditSink,
        *,
        cert_days: int = 365,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``engine`` gives the (open) database engine; ``ca_dir`` is the device CA's folder."""
        self._engine = engine
        self._ca_paths = CaPaths(ca_dir)
        self._ca: DeviceCa | None = None
        self._audit = audit
        self._cert_days = cert_days
        self._clock = clock
        self._active: set[str] = set()
        self._placements: dict[str, Placement] = {}
        self._tags: dict[str, frozenset[str]] = {}
        # Held by refresh from its query to its assignment and by every in-memory update
        # after a commit, so that a refresh never undoes a newer change of this process.
        self._memory_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Load the issuing CA and the registry into memory, and (re)write the CRL.

        Raises DeviceCaError (no usable CA in ``ca_dir``) or StorageError.
        """
        self._ca = DeviceCa.load(self._ca_paths.directory)
        self.refresh()
        self.write_crl()

    def refresh(self) -> None:
        """Reload the active set and placements from the table: another replica's or the
        CLI's changes (the server runs it every ``registry_refresh_interval_s``). Raises
        StorageError."""
        with self._memory_lock:
            with database_errors("load registry"), self._engine().connect() as conn:
                rows = conn.execute(sa.select(_TERMINALS)).mappings().all()
            self._placements = {r["terminal_id"]: _placement(r) for r in rows}
            self._tags = {r["terminal_id"]: frozenset(r["tags"]) for r in rows if r["tags"]}
            self._active = {r["terminal_id"] for r in rows if r["status"] == RegistryStatus.ACTIVE}
        log.debug("terminal registry: %d terminals, %d active", len(rows), len(self._active))

    @property
    def ca(self) -> DeviceCa:
        if self._ca is None:
            raise DeviceCaError("the terminal registry is not open")
        return self._ca

    # --- what the ingest asks (memory only) -----------------------------------------------

    def is_active(self, terminal_id: str) -> bool:
        """Enrolled and neither revoked nor decommissioned (``TerminalDirectory``)."""
        return terminal_id in self._active

    def placement(self, terminal_id: str) -> Placement | None:
        """The hall, region and model the operators gave this id; None if not registered."""
        return self._placements.get(terminal_id)

    def tags(self, terminal_id: str) -> frozenset[str]:
        """The operators' tags of this id; none if it has none or is not registered."""
        return self._tags.get(terminal_id, frozenset())

    # --- operators ------------------------------------------------------------------------

    def preauthorize(
        self,
        terminal_id: str,
        hall: str,
        region: str,
        model: str,
        public_key_pem: bytes,
        *,
        actor: str,
        source: str | None = None,
    ) -> str:
        """Let ``terminal_id`` enroll with exactly this public key; returns its fingerprint.

        Re-running it for a known id moves the terminal (new placement) and replaces the
        key; a revoked or decommissioned id becomes pre-authorised again. Raises
        EnrollmentRefusedError (``bad_request``, ``bad_key``).
        """
        [fingerprint] = self.preauthorize_many(
            [Preauthorization(terminal_id, hall, region, model, public_key_pem)],
            actor=actor,
            source=source,
        )
        return fingerprint

    def preauthorize_many(
        self, items: Iterable[Preauthorization], *, actor: str, source: str | None = None
    ) -> list[str]:
        """``preauthorize`` for many terminals in one transaction (all or nothing).

        Returns their key fingerprints in order. Raises EnrollmentRefusedError naming the first
        bad line; nothing is stored then.
        """
        prepared = []
        for item in items:
            placement = self._checked(item.terminal_id, item.hall, item.region, item.model)
            fingerprint = _fingerprint_of_pem(item.public_key_pem)
            prepared.append((item.terminal_id, placement, fingerprint))
        now = self._clock()
        with database_errors("preauthorize"), self._engine().begin() as conn:
            for terminal_id, placement, fingerprint in prepared:
                self._upsert(conn, terminal_id, placement, fingerprint, now)
        with self._memory_lock:
            for terminal_id, placement, _ in prepared:
                self._placements[terminal_id] = placement
        for terminal_id, _, fingerprint in prepared:
            self._record(
                "terminal.preauthorize", actor, terminal_id, source, detail={"key": fingerprint}
            )
        return [fingerprint for _, _, fingerprint in prepared]

    def issue_token(
        self,
        terminal_id: str,
        hall: str,
        region: str,
        model: str,
        ttl: timedelta,
        *,
        actor: str,
        source: str | None = None,
    ) -> str:
        """A new one-time enrollment token for ``terminal_id``, valid for ``ttl``.

        The secret is returned once and stored only as its SHA-256. Raises
        EnrollmentRefusedError (``bad_request``).
        """
        placement = self._checked(terminal_id, hall, region, model)
        if ttl <= timedelta(0):
            raise refusal("bad_request", "a token needs a positive lifetime")
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        expires_at = now + ttl
        with database_errors("issue token"), self._engine().begin() as conn:
            self._upsert(conn, terminal_id, placement, None, now)
            conn.execute(
                sa.insert(_TOKENS).values(
                    token_hash=token_hash(secret),
                    terminal_id=terminal_id,
                    created_at=now,
                    expires_at=expires_at,
                    used_at=None,
                )
            )
        with self._memory_lock:
            self._placements[terminal_id] = placement
        self._record(
            "terminal.token",
            actor,
            terminal_id,
            source,
            detail={"expires_at": expires_at.isoformat()},
        )
        return secret

    def revoke(self, terminal_id: str, *, actor: str, source: str | None = None) -> list[int]:
        """Revoke every certificate of ``terminal_id``, refuse it from now on, rewrite the CRL.

        Returns the serials revoked now. Raises EnrollmentRefusedError (``unknown_terminal``).
        """
        return self._retire(terminal_id, RegistryStatus.REVOKED, actor, source)

    def decommission(
        self, terminal_id: str, *, actor: str, source: str | None = None, record: bool = True
    ) -> list[int]:
        """``revoke``, marking the terminal decommissioned (removed from the fleet).
        ``record=False`` when the caller audits the call itself (the API's middleware does,
        for ``POST /api/v1/terminals/{id}/decommission``): one entry per decommission."""
        return self._retire(
            terminal_id, RegistryStatus.DECOMMISSIONED, actor, source, record=record
        )

    def set_tags(
        self, terminal_id: str, tags: Iterable[str], *, actor: str, source: str | None = None
    ) -> tuple[str, ...]:
        """Replace the tags of registered ``terminal_id`` with ``tags`` (duplicates dropped);
        returns them sorted. Audited ``terminal.tag``, refusals too.

        Raises EnrollmentRefusedError (``bad_request``: more than ``MAX_TAGS`` or one not
        matching ``TAG_PATTERN``; ``unknown_terminal``), StorageError."""
        wanted = tuple(sorted(set(tags)))
        try:
            if len(wanted) > MAX_TAGS or not all(_TAG.fullmatch(t) for t in wanted):
                raise refusal(
                    "bad_request",
                    f"at most {MAX_TAGS} tags of 1-32 letters, digits, '.', '_' or '-'",
                )
            with database_errors("tag terminal"), self._engine().begin() as conn:
                changed = conn.execute(
                    sa.update(_TERMINALS)
                    .where(_TERMINALS.c.terminal_id == terminal_id)
                    .values(tags=list(wanted), updated_at=self._clock())
                ).rowcount
            if not changed:
                raise refusal("unknown_terminal", f"{terminal_id!r} is not in the registry")
        except EnrollmentRefusedError as exc:
            self._record("terminal.tag", actor, terminal_id[:64], source, refused=exc)
            raise
        with self._memory_lock:
            self._tags[terminal_id] = frozenset(wanted)
        self._record("terminal.tag", actor, terminal_id, source, detail={"tags": ",".join(wanted)})
        return wanted

    def get(self, terminal_id: str) -> RegisteredTerminal | None:
        """The registry's row for ``terminal_id``. Raises StorageError."""
        with database_errors("read registry"), self._engine().connect() as conn:
            row = (
                conn.execute(sa.select(_TERMINALS).where(_TERMINALS.c.terminal_id == terminal_id))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return RegisteredTerminal(
            row["terminal_id"],
            _placement(row),
            RegistryStatus(row["status"]),
            row["public_key_fingerprint"],
            row["enrolled_at"],
            tuple(sorted(row["tags"])),
        )

    def prune_spent(self, *, older_than: timedelta, now: datetime) -> int:
        """Delete what can never be used again, ``older_than`` after it stopped counting:
        enrollment tokens used or expired, and certificates expired (no longer on any CRL).
        Returns how many rows. Raises StorageError."""
        cutoff = now - older_than
        with database_errors("prune registry"), self._engine().begin() as conn:
            check_current(conn, "prune registry")  # the retention job's: fenced
            tokens = conn.execute(
                sa.delete(_TOKENS).where(
                    sa.or_(_TOKENS.c.used_at < cutoff, _TOKENS.c.expires_at < cutoff)
                )
            ).rowcount
            certs = conn.execute(sa.delete(_CERTS).where(_CERTS.c.not_after < cutoff)).rowcount
        return int(tokens) + int(certs)

    def prune_decommissioned(self, *, older_than: timedelta, now: datetime) -> int:
        """Delete the rows of terminals decommissioned before ``now - older_than`` (their
        tombstones; their certificates stay on the CRL until they expire, ``prune_spent``).
        Without its row an id enrolls no more than with it: only an operator's new
        pre-authorisation or token lets it in. Returns how many. Raises StorageError."""
        gone = sa.and_(
            _TERMINALS.c.status == RegistryStatus.DECOMMISSIONED.value,
            _TERMINALS.c.updated_at < now - older_than,
        )
        with database_errors("prune registry"), self._engine().begin() as conn:
            check_current(conn, "prune registry")  # the retention job's: fenced
            deleted = sa.delete(_TERMINALS).where(gone).returning(_TERMINALS.c.terminal_id)
            ids = list(conn.execute(deleted).scalars())
        with self._memory_lock:
            for terminal_id in ids:
                self._placements.pop(terminal_id, None)
                self._tags.pop(terminal_id, None)
        return len(ids)

    def revoked_serials(self) -> list[tuple[int, datetime]]:
        """Revoked certificates that have not expired yet (what the CRL must list)."""
        now = self._clock()
        with database_errors("read revocations"), self._engine().connect() as conn:
            rows = conn.execute(
                sa.select(_CERTS.c.serial, _CERTS.c.revoked_at).where(
                    _CERTS.c.revoked_at.is_not(None), _CERTS.c.not_after > now
                )
            ).all()
        return [(int(serial, 16), at) for serial, at in rows]

    def write_crl(self) -> Path:
        """Sign and atomically write ``crl.pem`` in the CA directory. Raises StorageError."""
        crl = self.ca.crl(self.revoked_serials(), now=self._clock())
        write_pem(self._ca_paths.crl, crl)
        return self._ca_paths.crl

    def record_refusal(
        self, action: str, refused: EnrollmentRefusedError, *, source: str | None = None
    ) -> None:
        """Audit a request refused before it got here (an unreadable CSR or Basic header)."""
        self._record(action, "anonymous", None, source, refused=refused)

    # --- terminals (EST) ------------------------------------------------------------------

    def enroll(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        username: str | None = None,
        token: str | None = None,
        source: str | None = None,
    ) -> x509.Certificate:
        """A first certificate for the CSR's CN, authorised by a token (``username`` and
        ``token``: HTTP Basic) or, without one, by the pre-authorised key.

        Raises EnrollmentRefusedError (``bad_csr``, ``cn_mismatch``, ``not_authorized``,
        ``bad_token``, ``token_used``, ``token_expired``, ``key_mismatch``, ``revoked``).
        """
        action = "est.simpleenroll"
        claimed = username if username is not None else _cn_or_none(csr)
        try:
            terminal_id, fingerprint = _checked_csr(csr)
            if token is not None and username != terminal_id:
                raise refusal("cn_mismatch", "the CSR's CN is not the token's terminal id")
            now = self._clock()
            with database_errors("enroll"), self._engine().begin() as conn:
                row = self._row(conn, terminal_id)
                if token is not None:
                    self._consume_token(conn, terminal_id, token, now)
                    if row is None:  # a token always comes with a row; defence in depth
                        raise refusal("bad_token", "no such enrollment token")
                    _not_retired(row)
                else:
                    row = _preauthorized_key(row, fingerprint)
                cert = self._issue(conn, csr, terminal_id, fingerprint, now)
        except EnrollmentRefusedError as exc:
            # nobody was authenticated: the id is only what the request claims
            self._record(action, "anonymous", claimed, source, refused=exc)
            raise
        via = "token" if token is not None else "preauthorized_key"
        return self._issued(action, row, cert, source, via=via)

    def reenroll(
        self,
        current: x509.Certificate | None,
        csr: x509.CertificateSigningRequest,
        *,
        source: str | None = None,
    ) -> x509.Certificate:
        """A new certificate for the terminal whose current, valid, unrevoked certificate
        is ``current`` (the TLS client certificate). The CSR may carry a new key.

        Raises EnrollmentRefusedError (``no_client_certificate``, ``foreign_certificate``,
        ``bad_csr``, ``cn_mismatch``, ``revoked``).
        """
        action = "est.simplereenroll"
        claimed = _cert_cn(current) if current is not None else None
        try:
            if current is None:
                raise refusal(
                    "no_client_certificate",
                    "renewal needs the current certificate as TLS client certificate",
                )
            now = self._clock()
            if claimed is None or not self.ca.verify_issued(current, now=now):
                raise refusal(
                    "foreign_certificate", "the client certificate is not a current one of ours"
                )
            terminal_id, fingerprint = _checked_csr(csr)
            if terminal_id != claimed:
                raise refusal("cn_mismatch", "the CSR's CN is not the client certificate's")
            with database_errors("reenroll"), self._engine().begin() as conn:
                on_record = (
                    conn.execute(
                        sa.select(_CERTS).where(_CERTS.c.serial == f"{current.serial_number:x}")
                    )
                    .mappings()
                    .first()
                )
                if on_record is None or on_record["terminal_id"] != terminal_id:
                    raise refusal("foreign_certificate", "the client certificate is not on record")
                if on_record["revoked_at"] is not None:
                    raise refusal("revoked", "the client certificate is revoked")
                row = self._row(conn, terminal_id)
                if row is None:
                    raise refusal("revoked", "the terminal is no longer registered")
                _not_retired(row)
                cert = self._issue(conn, csr, terminal_id, fingerprint, now)
        except EnrollmentRefusedError as exc:
            # the TLS layer verified the certificate's chain, not that it is current
            actor = "anonymous" if claimed is None else f"terminal:{claimed}"
            self._record(action, actor, claimed, source, refused=exc)
            raise
        return self._issued(action, row, cert, source, previous=f"{current.serial_number:x}")

    # --- internals ------------------------------------------------------------------------

    def _checked(self, terminal_id: str, hall: str, region: str, model: str) -> Placement:
        if not is_valid_terminal_id(terminal_id):
            raise refusal("bad_request", "not a valid terminal id")
        try:
            return Placement(
                _LABEL.validate_python(hall),
                _LABEL.validate_python(region),
                _LABEL.validate_python(model),
            )
        except ValidationError:
            raise refusal(
                "bad_request", "hall, region and model must be 1-64 printable characters"
            ) from None

    def _upsert(
        self,
        conn: Connection,
        terminal_id: str,
        placement: Placement,
        fingerprint: str | None,
        now: datetime,
    ) -> None:
        row = self._row(conn, terminal_id)
        values: dict[str, object] = {
            "hall": placement.hall,
            "region": placement.region,
            "model": placement.model,
            "updated_at": now,
        }
        if fingerprint is not None:
            values["public_key_fingerprint"] = fingerprint
        if row is None:
            conn.execute(
                sa.insert(_TERMINALS).values(
                    terminal_id=terminal_id,
                    status=RegistryStatus.PREAUTHORIZED.value,
                    created_at=now,
                    enrolled_at=None,
                    public_key_fingerprint=fingerprint,
                    **{k: v for k, v in values.items() if k != "public_key_fingerprint"},
                )
            )
            return
        if row["status"] in _RETIRED:  # new hardware for a retired id: enrolls afresh
            values["status"] = RegistryStatus.PREAUTHORIZED.value
            if fingerprint is None:
                values["public_key_fingerprint"] = None
        conn.execute(
            sa.update(_TERMINALS).where(_TERMINALS.c.terminal_id == terminal_id).values(**values)
        )

    def _row(self, conn: Connection, terminal_id: str) -> RowMapping | None:
        return (
            conn.execute(sa.select(_TERMINALS).where(_TERMINALS.c.terminal_id == terminal_id))
            .mappings()
            .first()
        )

    def _consume_token(self, conn: Connection, terminal_id: str, token: str, now: datetime) -> None:
        digest = token_hash(token)
        found = (
            conn.execute(sa.select(_TOKENS).where(_TOKENS.c.token_hash == digest))
            .mappings()
            .first()
        )
        if found is None or not hmac.compare_digest(found["terminal_id"], terminal_id):
            raise refusal("bad_token", "no such enrollment token")
        if found["used_at"] is not None:
            raise refusal("token_used", "the enrollment token was used")
        if found["expires_at"] <= now:
            raise refusal("token_expired", "the enrollment token expired")
        consumed = conn.execute(
            sa.update(_TOKENS)
            .where(_TOKENS.c.token_hash == digest, _TOKENS.c.used_at.is_(None))
            .values(used_at=now)
        )
        if consumed.rowcount != 1:  # another request used it in the meantime
            raise refusal("token_used", "the enrollment token was used")

    def _issue(
        self,
        conn: Connection,
        csr: x509.CertificateSigningRequest,
        terminal_id: str,
        fingerprint: str,
        now: datetime,
    ) -> x509.Certificate:
        try:
            cert = self.ca.issue_terminal(csr, terminal_id, days=self._cert_days, now=now)
        except DeviceCaError as exc:
            raise refusal("bad_csr", str(exc)) from None
        conn.execute(
            sa.insert(_CERTS).values(
                serial=f"{cert.serial_number:x}",
                terminal_id=terminal_id,
                public_key_fingerprint=fingerprint,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                revoked_at=None,
            )
        )
        conn.execute(
            sa.update(_TERMINALS)
            .where(_TERMINALS.c.terminal_id == terminal_id)
            .values(
                status=RegistryStatus.ACTIVE.value,
                public_key_fingerprint=fingerprint,
                enrolled_at=now,
                updated_at=now,
            )
        )
        return cert

    def _issued(
        self,
        action: str,
        row: RowMapping,
        cert: x509.Certificate,
        source: str | None,
        **detail: str,
    ) -> x509.Certificate:
        """After the commit: admit the terminal from now on and record the issue."""
        terminal_id = str(row["terminal_id"])
        with self._memory_lock:
            self._placements[terminal_id] = _placement(row)
            self._active.add(terminal_id)
        self._record(
            action,
            f"terminal:{terminal_id}",
            terminal_id,
            source,
            detail={"serial": f"{cert.serial_number:x}", **detail},
        )
        return cert

    def _retire(
        self,
        terminal_id: str,
        status: RegistryStatus,
        actor: str,
        source: str | None,
        *,
        record: bool = True,
    ) -> list[int]:
        action = "terminal.revoke" if status is RegistryStatus.REVOKED else "terminal.decommission"
        now = self._clock()
        try:
            with database_errors(action), self._engine().begin() as conn:
                if self._row(conn, terminal_id) is None:
                    raise refusal("unknown_terminal", f"terminal {terminal_id} is not registered")
                serials = [
                    s
                    for (s,) in conn.execute(
                        sa.select(_CERTS.c.serial).where(
                            _CERTS.c.terminal_id == terminal_id, _CERTS.c.revoked_at.is_(None)
                        )
                    )
                ]
                conn.execute(
                    sa.update(_CERTS)
                    .where(_CERTS.c.terminal_id == terminal_id, _CERTS.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                conn.execute(
                    sa.update(_TERMINALS)
                    .where(_TERMINALS.c.terminal_id == terminal_id)
                    .values(status=status.value, updated_at=now)
                )
        except EnrollmentRefusedError as exc:
            if record:
                self._record(action, actor, terminal_id, source, refused=exc)
            raise
        with self._memory_lock:
            self._active.discard(terminal_id)
        self.write_crl()
        if record:
            self._record(action, actor, terminal_id, source, detail={"serials": ",".join(serials)})
        log.info("%s %s: %d certificates revoked", action, terminal_id, len(serials))
        return [int(s, 16) for s in serials]

    def _record(
        self,
        action: str,
        actor: str,
        target: str | None,
        source: str | None,
        *,
        refused: EnrollmentRefusedError | None = None,
        detail: dict[str, str] | None = None,
    ) -> None:
        if refused is not None:
            detail = {"reason": refused.reason}
            result = AuditResult.FAILED if refused.status == 400 else AuditResult.DENIED
        else:
            result = AuditResult.OK
        detail = detail or {}
        self._audit.record(
            AuditEntry(
                at=self._clock(),
                actor=actor,
                action=action,
                result=result,
                target=target,
                source=source,
                detail=detail,
            )
        )


def _placement(row: RowMapping) -> Placement:
    return Placement(str(row["hall"]), str(row["region"]), str(row["model"]))


def _cn_or_none(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    value = names[0].value if len(names) == 1 else None
    return value if isinstance(value, str) and is_valid_terminal_id(value) else None


def _cert_cn(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    return value if isinstance(value, str) else None


def _checked_csr(csr: x509.CertificateSigningRequest) -> tuple[str, str]:
    """The CSR's CN (a valid terminal id) and key fingerprint, its signature verified."""
    cn = _cn_or_none(csr)
    if cn is None:
        raise refusal("bad_csr", "the CSR's subject must be exactly one CN, a terminal id")
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise refusal("bad_csr", "the CSR's signature does not verify")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise refusal("bad_csr", "a terminal key must be EC P-256")
    return cn, public_key_fingerprint(key)


def _fingerprint_of_pem(pem: bytes) -> str:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise refusal("bad_key", "not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise refusal("bad_key", "a terminal key must be EC P-256")
    return public_key_fingerprint(key)


def _not_retired(row: RowMapping) -> None:
    if row["status"] in _RETIRED:
        raise refusal("revoked", "the terminal is revoked or decommissioned")


def _preauthorized_key(row: RowMapping | None, fingerprint: str) -> RowMapping:
    """``row`` if it pre-authorises the key ``fingerprint``; else the refusal."""
    if row is None or row["public_key_fingerprint"] is None:
        raise refusal(
            "not_authorized", "not pre-authorised: enroll with the terminal's enrollment token"
        )
    _not_retired(row)
    if not hmac.compare_digest(str(row["public_key_fingerprint"]), fingerprint):
        raise refusal("key_mismatch", "the CSR's key is not the pre-authorised key")
    return row

"""API tokens as the API, the CLI and the server's first start use them.

``Tokens`` joins the pure rules (``server.access``) to the repository
(``server.access_store``) and a clock: create (the secret is returned once and
never stored), list, revoke, authenticate a presented secret, and the bootstrap
admin token of a server's first start. It audits nothing itself: each caller
records its own entry (the API's audit middleware, the CLI with actor
``cli:<user>``, ``bootstrap`` with actor ``system``), so that each change is
recorded exactly once, with the actor the caller knows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TextIO

from server.access import (
    Principal,
    Role,
    TokenRecord,
    hash_secret,
    looks_like_secret,
    new_secret,
    token_problem,
    validate_token_fields,
)
from server.access_store import AccessStore
from server.audit import AuditEntry, AuditResult, AuditSink
from server.errors import AccessError, ConfigError, StorageError

__all__ = ["BOOTSTRAP_TOKEN_NAME", "Tokens", "write_secret_file"]

log = logging.getLogger(__name__)

BOOTSTRAP_TOKEN_NAME: Final = "bootstrap"  # noqa: S105 - a name, not a secret
_TOUCH_EVERY: Final = timedelta(minutes=1)
OUTAGE_GRACE: Final = timedelta(minutes=5)
"""While the database cannot be read, a token verified against it less than this long ago is
still accepted (as it was then: expiry is checked again), so that the fleet stays readable
through a database outage, as it always was. A token nobody presented before the outage, an
unknown secret, is refused with StorageError as before."""
_KNOWN_MAX: Final = 1024  # verified tokens remembered for an outage (least recently used go)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` with mode 0600, atomically (a temporary file in the same
    folder, then ``os.replace``). Raises ConfigError if it cannot be written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask; 0600 is what we promise
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # e.g. the folder is not one: nothing was made
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the token file {path}: {exc}") from exc


class Tokens:
    """Token operations over ``store``; ``clock`` gives aware UTC times."""

    def __init__(self, store: AccessStore, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._store = store
        self._clock = clock
        # hash -> (record, when the database last confirmed it); only real tokens get in
        self._known: OrderedDict[str, tuple[TokenRecord, datetime]] = OrderedDict()
        self._known_lock = threading.Lock()

    def now(self) -> datetime:
        return self._clock()

    def create(
        self,
        *,
        name: str,
        role: Role,
        created_by: str,
        vendor: str | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token and its secret (shown to the caller once; only its hash is stored).

        Raises AccessError (invalid name or vendor, an expiry not in the future, the name
        taken), StorageError.
        """
        validate_token_fields(name, role, vendor)
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise AccessError("invalid_expiry", "the expiry is not in the future")
        secret = new_secret()
        record = TokenRecord(
            name=name,
            role=role,
            vendor=vendor,
            secret_hash=hash_secret(secret),
            created_at=now,
            created_by=created_by,
            expires_at=expires_at,
        )
        self._store.create_token(record)
        return record, secret

    def every(self) -> list[TokenRecord]:
        """Every token by name, revoked and expired ones too. Raises StorageError."""
        return self._store.tokens()

    def revoke(self, name: str) -> TokenRecord:
        """Revoke the token ``name`` (it stays listed, marked revoked, until the retention job
        deletes it ``token_retention_days`` later).

        Raises AccessError(``no_such_token``), StorageError."""
        record = self._store.revoke_token(name, self._clock())
        with self._known_lock:  # not even accepted during a database outage any more
            for secret_hash in [h for h, (r, _) in self._known.items() if r.name == name]:
                del self._known[secret_hash]
        return record

    def authenticate(self, secret: str) -> Principal:
        """Who ``secret`` is; updates the token's ``last_used_at`` at most once a minute.

        Raises AccessError with code ``malformed``, ``unknown``, ``revoked`` or
        ``expired``; StorageError when the database cannot say.
        """
        if not looks_like_secret(secret):
            raise AccessError("malformed", "not a kioskfleet token")
        secret_hash = hash_secret(secret)
        now = self._clock()
        try:
            record = self._store.token_by_hash(secret_hash)
        except StorageError as exc:
            record = self._known_during_outage(secret_hash, now, exc)
            problem = token_problem(record, now)
            if problem is not None:
                raise AccessError(problem, f"token {problem}") from None
            log.warning("database unreadable: token %s accepted as verified before", record.name)
            return Principal(name=record.name, role=record.role, vendor=record.vendor)
        problem = token_problem(record, now)
        if record is None or problem is not None:
            with self._known_lock:
                self._known.pop(secret_hash, None)
            reason = problem or "unknown"
            raise AccessError(reason, f"token {reason}")
        with self._known_lock:
            self._known[secret_hash] = (record, now)
            self._known.move_to_end(secret_hash)
            while len(self._known) > _KNOWN_MAX:
                self._known.popitem(last=False)
        if record.last_used_at is None or now - record.last_used_at >= _TOUCH_EVERY:
            try:
                self._store.touch_token(record.name, now)
            except StorageError as exc:  # bookkeeping only: the request goes on
                log.warning("last use of token %s not recorded: %s", record.name, exc)
        return Principal(name=record.name, role=record.role, vendor=record.vendor)

    def _known_during_outage(
        self, secret_hash: str, now: datetime, outage: StorageError
    ) -> TokenRecord:
        """The record the database confirmed for ``secret_hash`` within ``OUTAGE_GRACE``;
        raises ``outage`` when there is none."""
        with self._known_lock:
            known = self._known.get(secret_hash)
        if known is None or now - known[1] > OUTAGE_GRACE:
            raise outage
        return known[0]

    def bootstrap(self, audit: AuditSink, *, stderr: TextIO, token_file: Path | None) -> bool:
        """On a database with no token at all, create the admin token ``bootstrap``, print
        its secret once to ``stderr`` (not through logging, so no log file keeps it) and,
        if ``token_file`` is given, write it there (mode 0600). Returns whether it made one.

        A replica that loses the race to another starting at once makes none. Raises
        StorageError, ConfigError (the token file cannot be written: the token is then
        removed again, so that no secret exists that nobody holds and the next start
        bootstraps afresh).
        """
        if self._store.count_tokens() > 0:
            return False
        try:
            record, secret = self.create(
                name=BOOTSTRAP_TOKEN_NAME, role=Role.ADMIN, created_by="system"
            )
        except AccessError:  # another replica made it first
            return False
        if token_file is not None:
            try:
                write_secret_file(token_file, secret)
            except ConfigError:
                self._store.delete_token(record.name)
                raise
        audit.record(
            AuditEntry(
                at=record.created_at,
                actor="system",
                action="token.create",
                result=AuditResult.OK,
                target=record.name,
                role=Role.ADMIN.value,
                detail={"why": "bootstrap: no token existed"},
            )
        )
        where = f" and written to {token_file}" if token_file is not None else ""
        stderr.write(
            "kioskfleet: no API token existed, so an admin token named "
            f"'{BOOTSTRAP_TOKEN_NAME}' was created. It is shown once{where}:\n\n"
            f"    {secret}\n\n"
            "Create named tokens with it (POST /api/v1/tokens or `kioskfleet token create`),"
            " then revoke it: `kioskfleet token revoke bootstrap`.\n"
        )
        stderr.flush()
        log.info("created the bootstrap admin token (secret shown once on stderr%s)", where)
        return True

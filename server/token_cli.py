"""``kioskfleet token create|list|revoke``: token administration straight on the database.

Works from the ``KIOSKFLEET_*`` settings like ``kioskfleet db upgrade`` (the
database is migrated first), with no server running; each change is audited
with actor ``cli:<os user>``. ``create`` prints the secret once, on stdout, and
nothing else there (so ``kioskfleet token create ... > file`` keeps just the
secret); everything else goes to stderr. Returns process exit codes: 0 done, 1
refused or failed, 2 unusable settings.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from server.access import Role, TokenRecord, parse_expiry
from server.access_store import AccessStore, DatabaseAudit
from server.audit import AuditEntry, AuditResult
from server.cli_database import CliDatabase, cli_actor, run_on_database
from server.errors import AccessError
from server.tokens import Tokens

__all__ = ["run_token_command"]

log = logging.getLogger(__name__)


def _row(record: TokenRecord, now: datetime) -> str:
    def at(value: datetime | None) -> str:
        return "-" if value is None else value.isoformat(timespec="seconds")

    if record.revoked_at is not None:
        status = "revoked"
    elif record.expires_at is not None and record.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return "\t".join(
        [
            record.name,
            record.role.value,
            record.vendor or "-",
            status,
            at(record.created_at),
            at(record.expires_at),
            at(record.last_used_at),
        ]
    )


def _run(command: str, tokens: Tokens, audit: DatabaseAudit, args: dict[str, str | None]) -> int:
    out: TextIO = sys.stdout
    actor = cli_actor()
    now = tokens.now()
    if command == "list":
        out.write("name\trole\tvendor\tstatus\tcreated\texpires\tlast used\n")
        for record in tokens.every():
            out.write(_row(record, now) + "\n")
        return 0
    name = args["name"] or ""
    detail: dict[str, str] = {}
    try:
        if command == "create":
            role = Role(args["role"] or "")
            detail = {"role": role.value} | ({"vendor": v} if (v := args["vendor"]) else {})
            expires = None if args["expires"] is None else parse_expiry(args["expires"], now)
            record, secret = tokens.create(
                name=name, role=role, vendor=args["vendor"], expires_at=expires, created_by=actor
            )
            out.write(secret + "\n")
            out.flush()
            sys.stderr.write(
                f"created {record.role.value} token {record.name!r}"
                f"{'' if expires is None else ' expiring ' + expires.isoformat()}:"
                " its secret (above) is shown this once\n"
            )
        else:
            tokens.revoke(name)
            sys.stderr.write(f"revoked token {name!r}\n")
    except AccessError as exc:
        audit.record(_entry(command, actor, name, AuditResult.FAILED, detail | {"why": exc.code}))
        log.error("%s", exc)
        return 1
    audit.record(_entry(command, actor, name, AuditResult.OK, detail))
    return 0


def _entry(
    command: str, actor: str, name: str, result: AuditResult, detail: dict[str, str]
) -> AuditEntry:
    return AuditEntry(
        at=datetime.now(UTC),
        actor=actor,
        action=f"token.{command}",
        result=result,
        target=name or None,
        detail=detail,
    )


def run_token_command(
    command: str, args: dict[str, str | None], env_file: Path | None = None
) -> int:
    """Run ``create`` (args name, role, vendor, expires), ``list`` or ``revoke`` (name)."""

    def run(db: CliDatabase) -> int:
        return _run(command, Tokens(AccessStore(db.storage)), db.audit, args)

    return run_on_database(env_file, run, failed=f"token {command} failed")

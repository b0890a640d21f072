"""``kioskfleet user create|passwd|disable|list``: console users straight on the database.

Works from the ``KIOSKFLEET_*`` settings like ``kioskfleet token`` (the database is
migrated first), with no server running; each change is audited with actor
``cli:<os user>`` and action ``user.<command>``. A password is asked twice on the
terminal, or read from the first line of stdin with ``--password-stdin`` (scripts);
never from an argument (it would show in ``ps`` and the shell history). Changing a
password or disabling a user ends that user's sessions. Returns process exit codes: 0
done, 1 refused or failed, 2 unusable settings.
"""

from __future__ import annotations

import getpass
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from server.access import Role
from server.access_store import AccessStore, DatabaseAudit
from server.audit import AuditEntry, AuditResult
from server.cli_database import cli_actor
from server.config import Settings
from server.console_auth import validate_username
from server.console_store import ConsoleStore
from server.console_users import ConsoleUsers
from server.errors import AccessError, ConfigError, ServerError
from server.main import storage_for

__all__ = ["read_password", "run_user_command"]

log = logging.getLogger(__name__)


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or asked twice on the terminal. Raises
    AccessError(``weak_password``) when the two answers differ."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise AccessError("weak_password", "the two passwords differ")
    return first


def _run(
    command: str, store: ConsoleStore, args: dict[str, str | bool | None]
) -> tuple[str, dict[str, str]]:
    """Do ``command``; returns the user acted on and the audit detail. Raises AccessError."""
    now = datetime.now(UTC)
    if command == "list":
        sys.stdout.write("username\trole\tstatus\tlanguage\tcreated\n")
        for user in store.users():
            status = "disabled" if user.disabled_at is not None else "active"
            sys.stdout.write(
                f"{user.username}\t{user.role.value}\t{status}\t{user.language or '-'}\t"
                f"{user.created_at.isoformat(timespec='seconds')}\n"
            )
        return "", {}
    username = str(args.get("username") or "")
    users = ConsoleUsers(store, lambda: now)
    if command == "create":
        try:
            role = Role(str(args.get("role") or ""))
        except ValueError:
            raise AccessError("invalid_user", f"no role {args.get('role')!r}") from None
        validate_username(username)  # before asking for a password
        users.create(username, role, read_password(bool(args.get("password_stdin"))),
                     actor=cli_actor())  # fmt: skip
        sys.stderr.write(f"created {role.value} console user {username!r}\n")
        return username, {"role": role.value}
    if command == "passwd":
        validate_username(username)
        if store.user(username) is None:
            raise AccessError("no_such_user", f"no console user named {username!r}")
        users.set_password(username, read_password(bool(args.get("password_stdin"))))
        sys.stderr.write(f"changed the password of {username!r}; its sessions ended\n")
        return username, {}
    users.disable(username)
    sys.stderr.write(f"disabled console user {username!r}; its sessions ended\n")
    return username, {}


def run_user_command(
    command: str, args: dict[str, str | bool | None], env_file: Path | None = None
) -> int:
    """Run ``create`` (username, role, password_stdin), ``passwd`` (username,
    password_stdin), ``disable`` (username) or ``list``."""
    try:
        settings = Settings.from_env(env_file)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    storage = storage_for(settings)
    try:
        storage.open()
        audit = DatabaseAudit(AccessStore(storage), CollectorRegistry())
        store = ConsoleStore(storage)
        try:
            target, detail = _run(command, store, args)
        except AccessError as exc:
            if command != "list":
                audit.record(_entry(command, str(args.get("username") or ""), AuditResult.FAILED,
                                    {"why": exc.code}))  # fmt: skip
            log.error("%s", exc)
            return 1
        if command != "list":
            audit.record(_entry(command, target, AuditResult.OK, detail))
        return 0
    except ServerError as exc:
        log.error("user %s failed: %s", command, exc)
        return 1
    finally:
        storage.close()


def _entry(command: str, username: str, result: AuditResult, detail: dict[str, str]) -> AuditEntry:
    return AuditEntry(
        at=datetime.now(UTC),
        actor=cli_actor(),
        action=f"user.{command}",
        result=result,
        target=username or None,
        detail=detail,
    )

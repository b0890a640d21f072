"""The operators' identity commands: ``ca init`` and ``terminal preauthorize|token|tag|revoke``.

``kioskfleet.cli`` parses the arguments and calls these; each returns the
process exit code (0 done, 1 refused or failed, 2 unusable settings or input)
and prints a one-line reason to stderr when it fails. The terminal commands
work on the database and CA directory of the ``KIOSKFLEET_*`` settings (like
``db upgrade``) and record each change through the audit port with actor
``cli:<login name>`` into the server's audit log (the database, as the
server's own changes). A token is printed once, to stdout, and
nowhere else.
"""

from __future__ import annotations

import csv
import logging
import re
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

from server.cli_database import CliDatabase, cli_actor, run_on_database
from server.config import Settings
from server.device_ca import init_ca
from server.errors import ServerError
from server.terminal_registry import Preauthorization, TerminalRegistry

__all__ = [
    "init_ca_command",
    "parse_ttl",
    "preauthorize_command",
    "preauthorize_file_command",
    "revoke_command",
    "tag_command",
    "token_command",
]

log = logging.getLogger(__name__)

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d``. Raises ValueError for anything else or 0."""
    match = _TTL.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"not a lifetime: {text!r} (use e.g. 30m, 24h, 7d)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def init_ca_command(directory: Path) -> int:
    """``kioskfleet ca init DIR``."""
    try:
        paths = init_ca(directory)
    except ServerError as exc:
        print(f"kioskfleet ca init: {exc}", file=sys.stderr)
        return 1
    print(f"device CA created in {directory}; trust {paths.chain}")
    print(f"move {paths.root_key} off this machine: only a new issuing CA needs it")
    return 0


def preauthorize_command(
    env_file: Path | None, terminal_id: str, hall: str, region: str, model: str, key_file: Path
) -> int:
    """``kioskfleet terminal preauthorize ID --hall H --region R --model M --key PUB.pem``."""
    try:
        pem = key_file.read_bytes()
    except OSError as exc:
        print(f"cannot read {key_file}: {exc.strerror}", file=sys.stderr)
        return 2
    return _with_registry(
        env_file,
        lambda r: print(
            r.preauthorize(terminal_id, hall, region, model, pem, actor=cli_actor()),
        ),
    )


def preauthorize_file_command(env_file: Path | None, csv_file: Path) -> int:
    """``kioskfleet terminal preauthorize --from-file FILE``: CSV lines ``id,hall,region,model,
    key`` (``key``: a PEM file path, relative to FILE's folder, or the PEM text itself); all
    or nothing, one transaction."""
    try:
        items = list(_read_preauthorizations(csv_file))
    except (OSError, ValueError) as exc:
        print(f"cannot read {csv_file}: {exc}", file=sys.stderr)
        return 2

    def run(registry: TerminalRegistry) -> None:
        registry.preauthorize_many(items, actor=cli_actor())
        print(f"{len(items)} terminals pre-authorised")

    return _with_registry(env_file, run)


def token_command(
    env_file: Path | None, terminal_id: str, hall: str, region: str, model: str, ttl: str
) -> int:
    """``kioskfleet terminal token ID --hall H --region R --model M [--ttl 24h]``: prints the
    token once."""
    try:
        lifetime = parse_ttl(ttl)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return _with_registry(
        env_file,
        lambda r: print(
            r.issue_token(terminal_id, hall, region, model, lifetime, actor=cli_actor())
        ),
    )


def revoke_command(env_file: Path | None, terminal_id: str) -> int:
    """``kioskfleet terminal revoke ID``: revokes its certificates and rewrites the CRL."""

    def run(registry: TerminalRegistry) -> None:
        serials = registry.revoke(terminal_id, actor=cli_actor())
        print(f"revoked {terminal_id}: {len(serials)} certificates; CRL rewritten")

    return _with_registry(env_file, run)


def tag_command(env_file: Path | None, terminal_id: str, tags: list[str]) -> int:
    """``kioskfleet terminal tag ID [TAG ...]``: replaces its tags (none: clears them). A
    running server sees them at its next registry refresh."""

    def run(registry: TerminalRegistry) -> None:
        done = registry.set_tags(terminal_id, tags, actor=cli_actor())
        print(f"{terminal_id}: tags {' '.join(done) or '(none)'}")

    return _with_registry(env_file, run)


def _with_registry(env_file: Path | None, action: Callable[[TerminalRegistry], None]) -> int:
    def run(db: CliDatabase) -> int:
        assert db.settings.ca_dir is not None  # _needs_ca refused settings without one
        registry = TerminalRegistry(
            lambda: db.storage.engine,
            db.settings.ca_dir,
            db.audit,
            cert_days=db.settings.terminal_cert_days,
        )
        registry.open()
        action(registry)
        return 0

    return run_on_database(env_file, run, failed="refused", report=_to_stderr, needs=_needs_ca)


def _needs_ca(settings: Settings) -> str | None:
    if settings.ca_dir is None:
        return "KIOSKFLEET_CA_DIR is not set: there is no device CA to work with"
    return None


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _read_preauthorizations(csv_file: Path) -> Iterator[Preauthorization]:
    with csv_file.open(newline="", encoding="utf-8") as f:
        for number, line in enumerate(csv.reader(f), start=1):
            if not line or line[0].startswith("#"):
                continue
            if len(line) != 5:
                raise ValueError(f"line {number}: expected id,hall,region,model,key")
            terminal_id, hall, region, model, key = (field.strip() for field in line)
            pem = (
                key.encode("ascii")
                if key.startswith("-----BEGIN")
                else (csv_file.parent / key).read_bytes()
            )
            yield Preauthorization(terminal_id, hall, region, model, pem)

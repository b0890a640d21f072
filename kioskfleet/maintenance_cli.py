"""``kioskfleet maintenance start|end|list`` and ``kioskfleet problem ack``: operator actions
through the running server's API (``server.maintenance_api``) with an operator token, never
the database: the running server's metrics must see a change at once.

``maintenance start`` takes ``--terminal ID`` or ``--hall HALL``, a ``--reason`` and the end
as ``--until`` (ISO-8601 with an offset) or ``--for`` (``90m``, ``2h``, ``3d``). Exit status 0
on success (the server's answer as JSON on stdout), 1 when the server refused (its sentence
on stderr) or could not be reached, 2 for a bad duration.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from kioskfleet.api_client import ApiAnswer, ApiClientError, call, read_token

__all__ = ["add_maintenance_parsers", "parse_duration", "run_maintenance_command"]

_DURATION: Final = re.compile(r"^(\d+)([mhd])$")
_UNIT: Final = {"m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90m``, ``2h``, ``3d`` as a timedelta. Raises ValueError for anything else."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"not a duration like 90m, 2h or 3d: {text!r}")
    return timedelta(**{_UNIT[match.group(2)]: int(match.group(1))})


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", required=True, help="the server's base URL, https://host:port (required)"
    )
    p.add_argument(
        "--token-file", type=Path, required=True, help="a file holding an operator token (required)"
    )
    p.add_argument(
        "--ca-file",
        type=Path,
        help="the fleet CA chain to verify HTTPS with (default: the system's CAs)",
    )


def _target(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--terminal", metavar="ID", help="one terminal (this or --hall is required)")
    which.add_argument(
        "--hall", metavar="HALL", help="every terminal of a hall (this or --terminal is required)"
    )


def add_maintenance_parsers(sub: Any) -> None:
    """The ``maintenance`` and ``problem`` commands on ``sub`` (argparse subparsers)."""
    maintenance = sub.add_parser(
        "maintenance",
        help="put a terminal or a hall in maintenance (its alerts stop until the end time)",
    )
    m_sub = maintenance.add_subparsers(dest="maintenance_command", required=True)
    start = m_sub.add_parser("start", help="start (or replace) a maintenance window")
    _target(start)
    start.add_argument("--reason", required=True, help="why (shown to everyone, audited; required)")
    end = start.add_mutually_exclusive_group(required=True)
    end.add_argument(
        "--until",
        help="when it ends, ISO-8601 with an offset (2026-12-24T18:00Z); this or --for is required",
    )
    end.add_argument(
        "--for", dest="duration", help="how long from now: 90m, 2h, 3d; this or --until is required"
    )
    stop = m_sub.add_parser("end", help="end a maintenance window now")
    _target(stop)
    listing = m_sub.add_parser("list", help="the active maintenance windows")
    problem = sub.add_parser("problem", help="a terminal's peripheral problems")
    p_sub = problem.add_subparsers(dest="problem_command", required=True)
    ack = p_sub.add_parser("ack", help="acknowledge a peripheral's current problem")
    ack.add_argument("terminal_id", metavar="ID", help="the terminal's id")
    ack.add_argument("peripheral", metavar="PERIPHERAL", help="its name, as in the terminal view")
    ack.add_argument("--note", required=True, help="what is being done (audited; required)")
    ack.add_argument("--assignee", help="who is to fix it (default: nobody named)")
    for p in (start, stop, listing, ack):
        _connection(p)


def _path(args: argparse.Namespace) -> str:
    if args.terminal is not None:
        return f"/api/v1/terminals/{quote(args.terminal, safe='')}/maintenance"
    return f"/api/v1/halls/{quote(args.hall, safe='')}/maintenance"


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, body) of the command. Raises ValueError for a bad duration."""
    if args.command == "problem":
        path = (
            f"/api/v1/terminals/{quote(args.terminal_id, safe='')}"
            f"/problems/{quote(args.peripheral, safe='')}/ack"
        )
        body: dict[str, Any] = {"note": args.note}
        if args.assignee is not None:
            body["assignee"] = args.assignee
        return "POST", path, body
    command = args.maintenance_command
    if command == "list":
        return "GET", "/api/v1/maintenance", None
    if command == "end":
        return "DELETE", _path(args), None
    until = args.until
    if until is None:
        until = (datetime.now(UTC) + parse_duration(args.duration)).isoformat()
    return "PUT", _path(args), {"reason": args.reason, "until": until}


def run_maintenance_command(args: argparse.Namespace) -> int:
    """Run ``maintenance ...`` or ``problem ack``; prints the server's answer as JSON."""
    what = f"{args.command} {getattr(args, 'maintenance_command', None) or 'ack'}"
    try:
        method, path, body = _request(args)
    except ValueError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        return 2
    try:
        token = read_token(args.token_file)
        answer: ApiAnswer = call(
            method, args.server, path, token=token, ca_file=args.ca_file, body=body
        )
    except (ApiClientError, OSError) as exc:
        print(f"{what} failed: {exc}", file=sys.stderr)
        return 1
    if answer.status != 200:
        print(f"refused ({answer.status}): {answer.message}", file=sys.stderr)
        return 1
    print(json.dumps(answer.body, indent=2, sort_keys=True))
    return 0

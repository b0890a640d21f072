"""``kioskfleet rollout create|approve|status|pause|resume|cancel``: rollouts through the
running server's API (``server.rollout_api``) with an operator token, never the database:
only the running server owns the planner state and sends directives.

``create`` reads the rollout's JSON body (the API's ``RolloutCreate``) from a file or stdin.
Exit status 0 on success, 1 when the server refused (its sentence on stderr) or could not
be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kioskfleet.api_client import ApiAnswer, ApiClientError, get, post, read_token

__all__ = ["add_rollout_parser", "run_rollout_command"]

_EVENTS = ("approve", "pause", "resume", "cancel", "gate")


def add_rollout_parser(sub: Any) -> None:
    """The ``rollout`` command on ``sub`` (argparse subparsers)."""
    rollout = sub.add_parser(
        "rollout", help="create, approve, watch, pause, resume a rollout (server API)"
    )
    r_sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="SUBCOMMAND")
    create = r_sub.add_parser("create", help="create a rollout from a JSON file ('-': stdin)")
    create.add_argument("file", metavar="FILE", help="the rollout as JSON, docs/updates.md")
    status = r_sub.add_parser("status", help="one rollout, or all without ID")
    status.add_argument("rollout_id", metavar="ID", nargs="?", help="the rollout (default: all)")
    parsers = [create, status]
    for verb in _EVENTS:
        p = r_sub.add_parser(verb, help=f"{verb} rollout ID")
        p.add_argument("rollout_id", metavar="ID", help="the rollout's id")
        parsers.append(p)
    for p in parsers:
        p.add_argument(
            "--server", required=True, help="the server's base URL, https://host:port (required)"
        )
        p.add_argument(
            "--token-file",
            type=Path,
            required=True,
            help="a file holding an operator token (required)",
        )
        p.add_argument(
            "--ca-file",
            type=Path,
            help="the fleet CA chain to verify HTTPS with (default: the system's CAs)",
        )


def _body(file: str) -> dict[str, Any]:
    text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("the rollout file must hold a JSON object")
    return value


def run_rollout_command(args: argparse.Namespace) -> int:
    """Run ``args.rollout_command``; prints the rollout as JSON on success."""
    command = args.rollout_command
    try:
        token = read_token(args.token_file)
        base = "/api/v1/rollouts"
        answer: ApiAnswer
        if command == "create":
            answer = post(
                args.server, base, token=token, ca_file=args.ca_file, body=_body(args.file)
            )
        elif command == "status":
            path = base if args.rollout_id is None else f"{base}/{quote(args.rollout_id, safe='')}"
            answer = get(args.server, path, token=token, ca_file=args.ca_file)
        else:
            path = f"{base}/{quote(args.rollout_id, safe='')}/{command}"
            answer = post(args.server, path, token=token, ca_file=args.ca_file)
    except (ApiClientError, OSError, ValueError) as exc:
        print(f"rollout {command} failed: {exc}", file=sys.stderr)
        return 1
    if answer.status not in (200, 201):
        print(f"refused ({answer.status}): {answer.message}", file=sys.stderr)
        return 1
    print(json.dumps(answer.body, indent=2, sort_keys=True))
    return 0

"""The ``kioskfleet`` command: ``agent``, ``agent keygen``, ``server``, ``db upgrade``,
``token``, ``user create|passwd|disable|list``, ``hall hours set|show``, ``service set|list``,
``analytics transactions|utilisation|availability|turned-away``, ``report``,
``ca init``, ``terminal preauthorize|token|tag|revoke|decommission``, ``rollout``, ``maintenance
start|end|list``, ``problem ack``, ``simulate``, ``broker-config``, and
``repo``/``vendor`` (signed releases, Typer: kioskfleet/cli_updates.py).

Only argument parsing lives here; each subcommand hands over to its package
(imported lazily so that ``kioskfleet agent`` on a terminal never imports the
server's dependencies). ``kioskfleet --help`` groups the commands by task
(``COMMAND_GROUPS``) from their own one-line helps, every option's help shows its
default, ``server --help`` lists the settings from the settings model; logging is set
up here for every subcommand (``--log-format``, ``--verbose``: kioskfleet/log_setup.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from kioskfleet import __version__
from kioskfleet.log_setup import LOG_FORMAT_VARIABLE, LOG_FORMATS, configure_logging

__all__ = ["main"]


COMMAND_GROUPS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("On a terminal", ("agent",)),
    ("Running the server", ("server", "db", "broker-config")),
    ("Access and identity", ("token", "user", "ca", "terminal")),
    (
        "Halls and daily operations",
        ("hall", "service", "analytics", "report", "maintenance", "problem"),
    ),
    ("Signed releases and rollouts", ("repo", "vendor", "rollout")),
    ("Trying it out", ("simulate",)),
)
"""How ``kioskfleet --help`` groups the commands; every command is in exactly one group
(tests/unit/test_cli_help.py)."""

_SUMMARY = "Fleet management for self-service terminals: one command for the terminal agent, the server and the operators' tools."

_EXAMPLES = """examples:
  kioskfleet agent --config /etc/kioskfleet/agent.toml      run the agent on a terminal
  kioskfleet server --env-file /etc/kioskfleet/server.env   run the server
  kioskfleet server --help                                  every server setting and its default
  kioskfleet token create --role viewer --name grafana --expires 30d
  kioskfleet terminal token T-0042 --hall hall-01 --region north --model KF-200
  kioskfleet rollout status --server https://fleet:8080 --token-file op.token
  kioskfleet simulate --terminals 20 --broker mqtt://127.0.0.1:1883
  kioskfleet COMMAND --help                                 a command's options

Logs go to stderr; --log-format json (or KIOSKFLEET_LOG_FORMAT=json) writes one JSON
object per line for log collectors. Documentation: README.md and docs/ in the source."""

# The options every option's help describes its absence with; others show "(default: X)".
_NO_DEFAULT_WORDS = ("default", "required")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; each option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shows = action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
        if shows and not any(word in text.lower() for word in _NO_DEFAULT_WORDS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help can end with text made only when help is asked for
    (``server --help`` lists the settings without importing the server for other commands)."""

    help_appendix: Callable[[], str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        text = super().format_help()
        if self.help_appendix is not None:
            text += "\n" + self.help_appendix() + "\n"
        return text


def _settings_help() -> str:
    from server.config import settings_table

    rows = settings_table()
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {default}" for name, default in rows]
    return (
        "settings (environment variables or --env-file lines; what each means: docs/server.md):\n"
        + "\n".join(lines)
    )


def _command_overview(sub: argparse._SubParsersAction[_Parser]) -> str:
    """The grouped list of commands, one line each, from the subparsers' own help texts."""
    helps = {action.dest: action.help or "" for action in sub._choices_actions}
    width = max(len(name) for name in helps)
    parts = []
    for title, names in COMMAND_GROUPS:
        parts.append(f"{title}:")
        parts.extend(f"  {name:<{width}}  {helps[name]}" for name in names)
    return "\n".join(parts)


_TYPER_COMMANDS = ("repo", "vendor")


def _logging_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--log-level``, ``--log-format``, ``--verbose`` on ``parser``. Only the top level sets
    defaults; a command's copies are SUPPRESSed unless given, so they never undo the
    top level's (``kioskfleet --verbose server`` and ``kioskfleet server --verbose`` agree)."""
    unset = argparse.SUPPRESS
    parser.add_argument(
        "--log-level",
        default="INFO" if defaults else unset,
        help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get(LOG_FORMAT_VARIABLE, "text") if defaults else unset,
        help=f"text for people, json (one object per line) for log collectors; "
        f"default: {LOG_FORMAT_VARIABLE} or text",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=False if defaults else unset,
        help="also log the libraries' routine lines (the scheduler's every job run)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kioskfleet", epilog=_EXAMPLES)
    parser.add_argument("--version", action="version", version=f"kioskfleet {__version__}")
    _logging_options(parser, defaults=True)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    _command_parsers(sub)
    for name, command in sub.choices.items():
        if name not in _TYPER_COMMANDS:  # also after the command: `kioskfleet server --verbose`
            _logging_options(command, defaults=False)
    parser.description = f"{_SUMMARY}\n\n{_command_overview(sub)}"
    # The grouped overview above replaces argparse's flat list of the same commands: the
    # action stays in the usage line and the parser, out of the help's option groups.
    for group in parser._action_groups:
        if sub in group._group_actions:
            group._group_actions.remove(sub)
    return parser


def _command_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    env_help = "a file of KIOSKFLEET_* lines (default: the environment only)"
    agent = sub.add_parser("agent", help="run the terminal agent (agent keygen: its key)")
    agent.add_argument(
        "--config",
        type=Path,
        help="agent.toml (default: none, settings from KIOSKFLEET_AGENT_* only)",
    )
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")
    keygen = agent_sub.add_parser(
        "keygen", help="make the terminal's key (0600) if missing; print its public key PEM"
    )
    keygen.add_argument(
        "--key-file",
        type=Path,
        default=Path("/var/lib/kioskfleet/terminal.key"),
        help="where the key lives",
    )

    server = sub.add_parser("server", help="run the server: ingest, fleet state, API, /metrics")
    server.add_argument("--env-file", type=Path, help=env_help)
    server.help_appendix = _settings_help

    db = sub.add_parser("db", help="migrate the database (the server also does at start)")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    upgrade = db_sub.add_parser("upgrade", help="migrate the database to the newest schema")
    upgrade.add_argument("--env-file", type=Path, help=env_help)

    tok = sub.add_parser("token", help="API tokens for machines and people: create, list, revoke")
    tok.add_argument("--env-file", type=Path, help=env_help)
    tok_sub = tok.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND")
    create = tok_sub.add_parser("create", help="create a token and print its secret once")
    create.add_argument("--name", required=True, help="what the token is for (required)")
    create.add_argument(
        "--role",
        required=True,
        choices=["admin", "operator", "viewer", "vendor"],
        help="what it may do (required)",
    )
    create.add_argument(
        "--vendor", help="the vendor a vendor token is bound to (default: none; vendor role only)"
    )
    create.add_argument("--expires", help="30d, 12h, 90m, 2w or an ISO-8601 time (default: never)")
    tok_sub.add_parser("list", help="every token, without secrets")
    revoke = tok_sub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name", help="the token's name")

    usr = sub.add_parser(
        "user", help="console users (people), on the database (settings from KIOSKFLEET_*)"
    )
    usr.add_argument("--env-file", type=Path, help=env_help)
    usr_sub = usr.add_subparsers(dest="user_command", required=True, metavar="SUBCOMMAND")
    u_create = usr_sub.add_parser("create", help="add a console user; asks for the password")
    u_create.add_argument("username", help="the login name")
    u_create.add_argument(
        "--role",
        required=True,
        choices=["admin", "operator", "viewer"],
        help="what the user may do (required)",
    )
    u_passwd = usr_sub.add_parser("passwd", help="set a user's password; ends its sessions")
    u_passwd.add_argument("username", help="the login name")
    for p in (u_create, u_passwd):
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from stdin's first line",
        )
    u_disable = usr_sub.add_parser("disable", help="a user can no longer log in; ends its sessions")
    u_disable.add_argument("username", help="the login name")
    usr_sub.add_parser("list", help="every console user, without passwords")

    hall = sub.add_parser("hall", help="a hall's opening hours and holidays")
    hall.add_argument("--env-file", type=Path, help=env_help)
    hall_sub = hall.add_subparsers(dest="hall_command", required=True, metavar="SUBCOMMAND")
    hours = hall_sub.add_parser("hours", help="a hall's opening hours and holidays")
    hours_sub = hours.add_subparsers(dest="hours_command", required=True, metavar="SUBCOMMAND")
    hours_set = hours_sub.add_parser("set", help="set (replace) HALL's hours from a JSON file")
    hours_set.add_argument("hall", metavar="HALL", help="the hall's name")
    hours_set.add_argument(
        "--file", type=Path, required=True, help="hours.json, see docs/monitoring.md (required)"
    )
    hours_show = hours_sub.add_parser("show", help="print HALL's hours as JSON")
    hours_show.add_argument("hall", metavar="HALL", help="the hall's name")

    service = sub.add_parser(
        "service", help="the service catalogue, on the database (settings from KIOSKFLEET_*)"
    )
    service.add_argument("--env-file", type=Path, help=env_help)
    service_sub = service.add_subparsers(
        dest="service_command", required=True, metavar="SUBCOMMAND"
    )
    service_set = service_sub.add_parser(
        "set", help="replace the catalogue from a JSON file (docs/analytics.md)"
    )
    service_set.add_argument(
        "--file", type=Path, required=True, help="the catalogue, a JSON file (required)"
    )
    service_sub.add_parser("list", help="print the catalogue as JSON")

    analytics = sub.add_parser(
        "analytics",
        help="service-demand figures from the rollups, as JSON (docs/analytics.md; on the"
        " database, settings from KIOSKFLEET_*)",
    )
    analytics.add_argument("--env-file", type=Path, help=env_help)
    analytics_sub = analytics.add_subparsers(
        dest="analytics_command", required=True, metavar="SUBCOMMAND"
    )
    for name, text in (
        ("transactions", "transactions, completion rate, busy time and pages per group"),
        ("utilisation", "utilisation, idle terminals, overloaded halls, recommended moves"),
        ("availability", "per hall and service: opening seconds and those it was offerable"),
        ("turned-away", "per hall and service: failures by cause and the turned-away estimate"),
    ):
        command = analytics_sub.add_parser(name, help=text)
        command.add_argument(
            "--since",
            type=datetime.fromisoformat,
            default=None,
            help="RFC 3339 with an offset (default: 7 days before --until)",
        )
        command.add_argument(
            "--until",
            type=datetime.fromisoformat,
            default=None,
            help="RFC 3339 with an offset (default: now)",
        )
        command.add_argument("--hall", default=None, help="only this hall (default: all)")
        if name == "transactions":
            command.add_argument(
                "--by",
                choices=("hall", "terminal", "service", "hour_of_week"),
                default="hall",
                help="group by (default: %(default)s)",
            )

    report = sub.add_parser(
        "report",
        help="a hall's weekly report as PDF or HTML, with charts (docs/analytics.md; on the"
        " database, settings from KIOSKFLEET_*)",
    )
    report.add_argument("--env-file", type=Path, help=env_help)
    report.add_argument("--hall", required=True, help="the hall's name (required)")
    report.add_argument(
        "--week",
        required=True,
        help="the ISO week, e.g. 2026-W48, in the hall's time zone (required)",
    )
    report.add_argument("--format", choices=("html", "pdf"), default="pdf", help="what to write")
    report.add_argument(
        "--out", type=Path, default=None, help="the file to write (default: stdout)"
    )
    report.add_argument(
        "--language", choices=("en", "zh_CN"), default="en", help="the headings' language"
    )

    ca = sub.add_parser("ca", help="create the fleet's device CA")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="SUBCOMMAND")
    ca_init = ca_sub.add_parser(
        "init", help="create the root and issuing CA in DIR (never overwrites one)"
    )
    ca_init.add_argument("directory", type=Path, metavar="DIR", help="a new directory")

    terminal = sub.add_parser("terminal", help="let terminals enroll, revoke or decommission them")
    terminal.add_argument("--env-file", type=Path, help=env_help)
    t_sub = terminal.add_subparsers(dest="terminal_command", required=True, metavar="SUBCOMMAND")
    pre = t_sub.add_parser("preauthorize", help="let ID enroll with its public key")
    pre.add_argument("terminal_id", nargs="?", metavar="ID", help="the terminal's id")
    pre.add_argument(
        "--from-file",
        type=Path,
        help="CSV lines id,hall,region,model,key (a PEM path or the PEM); all or nothing "
        "(default: one terminal from ID and the options)",
    )
    tok = t_sub.add_parser("token", help="a one-time enrollment token for ID (printed once)")
    tok.add_argument("terminal_id", metavar="ID", help="the terminal's id")
    tok.add_argument("--ttl", default="24h", help="lifetime: 30m, 24h, 7d")
    for p in (pre, tok):
        needed = "required" if p is tok else "required without --from-file"
        p.add_argument("--hall", required=p is tok, help=f"the terminal's hall ({needed})")
        p.add_argument("--region", required=p is tok, help=f"the hall's region ({needed})")
        p.add_argument("--model", required=p is tok, help=f"the terminal's model ({needed})")
    pre.add_argument(
        "--key",
        type=Path,
        help="the terminal's public key PEM from `agent keygen` (required without --from-file)",
    )
    tag = t_sub.add_parser(
        "tag", help="replace ID's tags (rollout selectors match them); none: clear them"
    )
    tag.add_argument("terminal_id", metavar="ID", help="the terminal's id (registered)")
    tag.add_argument("tags", nargs="*", metavar="TAG", help="1-32 letters, digits, . _ - (max 16)")
    rev = t_sub.add_parser("revoke", help="revoke ID's certificates and rewrite the CRL")
    rev.add_argument("terminal_id", metavar="ID", help="the terminal's id")
    dec = t_sub.add_parser(
        "decommission",
        help="remove ID through the running server's API (revoked, its retained state cleared, "
        "out of the fleet state; history kept); needs an operator token",
    )
    dec.add_argument("terminal_id", metavar="ID", help="the terminal's id")
    dec.add_argument(
        "--server", required=True, help="the server's base URL, https://host:port (required)"
    )
    dec.add_argument(
        "--token-file", type=Path, required=True, help="a file holding the token (required)"
    )
    dec.add_argument(
        "--ca-file",
        type=Path,
        help="the fleet CA chain to verify HTTPS with (default: the system's CAs)",
    )

    from kioskfleet.rollout_cli import add_rollout_parser

    add_rollout_parser(sub)
    # Typer commands (kioskfleet/cli_updates.py): main() hands them over before parsing;
    # listed here so that `kioskfleet --help` shows them with the others.
    sub.add_parser("repo", help="the operator's offline TUF repository (signed releases)")
    sub.add_parser("vendor", help="a vendor's keys, signing and publishing a release")

    from kioskfleet.maintenance_cli import add_maintenance_parsers

    add_maintenance_parsers(sub)

    sim = sub.add_parser("simulate", help="run N simulated terminals with the real agent code")
    sim.add_argument("--terminals", type=int, default=50, help="how many terminals")
    sim.add_argument(
        "--broker",
        action="append",
        default=None,
        help="mqtt:// or mqtts:// URL (default mqtt://127.0.0.1:1883); repeat it for failover"
        " over several brokers (the agent's broker_urls)",
    )
    sim.add_argument("--halls", type=int, default=3, help="terminals are spread over halls")
    sim.add_argument("--regions", type=int, default=1, help="halls are spread over regions")
    sim.add_argument("--seed", type=int, default=1, help="the same seed plays the same faults")
    sim.add_argument("--report-interval", type=float, default=60.0, help="seconds between reports")
    sim.add_argument("--fault-rate", type=float, default=1.0, help="scenario speed-up for faults")
    sim.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    sim.add_argument("--processes", type=int, default=1, help="spread terminals over processes")
    sim.add_argument(
        "--demand",
        action="store_true",
        help="send citizen transactions from the seeded demand (opening hours 08-17 UTC"
        " Mon-Fri, lunch dip, Monday peak, an idle terminal, an overloaded last hall)",
    )
    sim.add_argument(
        "--start-at",
        type=datetime.fromisoformat,
        default=None,
        metavar="TIME",
        help="the terminals' clock starts at this time (RFC 3339 with an offset) and runs at"
        " real speed: sent_at and the demand's opening hours follow it (default: the real"
        " clock)",
    )
    sim.add_argument("--id-prefix", default="SIM", help="terminal ids are PREFIX-00001 ...")
    sim.add_argument(
        "--outbox",
        type=Path,
        default=None,
        help="the outbox file (with --processes N, PATH.0 ... PATH.N-1); "
        "default: a new file in a temporary directory, printed at start. "
        "Reusing it with the same ids continues their streams",
    )
    sim.add_argument(
        "--drain-jitter",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a terminal that finds a backlog at connect waits a random 0..SECONDS before"
        " draining it, so a hall coming back does not flood the broker (the agent's"
        " outbox.drain_jitter_s; default 10)",
    )
    sim.add_argument(
        "--no-commit-confirmation",
        action="store_true",
        help="remove a message on the broker's PUBACK instead of the server's kf.committed "
        "(a broker with no kioskfleet server behind it)",
    )
    sim.add_argument(
        "--enroll-url",
        help="EST base URL (https://...): enroll every terminal first (default: no enrollment)",
    )
    sim.add_argument(
        "--ca-file", type=Path, help="the fleet CA chain, EST server and broker (default: none)"
    )
    sim.add_argument(
        "--identity-dir",
        type=Path,
        help="the terminals' keys and certificates, <id>.key/.pem (default: none)",
    )
    sim.add_argument(
        "--enroll-concurrency", type=int, default=8, help="enrollments at the same time"
    )
    sim.add_argument(
        "--updates-server",
        help="the server's base URL: every terminal takes updates through the real agent "
        "update path (TUF, signed directives, the bundle handler into --work-dir); "
        "default: no updates",
    )
    sim.add_argument(
        "--trusted-root",
        type=Path,
        help="the operator's root.json (required with --updates-server)",
    )
    sim.add_argument(
        "--update-failure-fraction",
        type=float,
        default=0.0,
        help="share of terminals whose health check fails (spread evenly over the ids)",
    )
    sim.add_argument(
        "--work-dir", type=Path, help="the terminals' update files and slots (default: temporary)"
    )
    sim.add_argument(
        "--plant",
        action="append",
        default=[],
        metavar="ID:PROBE:CONDITION",
        help="hold one peripheral in a condition for the whole run, e.g. "
        "SIM-00003:receipt_printer:paper_out; repeat (default: none)",
    )
    sim.add_argument(
        "--plant-outage",
        action="append",
        default=[],
        metavar="ID:SECONDS",
        help="cut ID's connection for good SECONDS into the run (the broker sends its "
        "will); repeat (default: none)",
    )
    sim.add_argument(
        "--session-expiry",
        type=int,
        default=None,
        help="MQTT session expiry in seconds, 0 leaves no session on the broker "
        "(default: the agent's, 7 days)",
    )
    sim.add_argument(
        "--keys-only",
        action="store_true",
        help="make the keys in --identity-dir and its preauthorize.csv, then exit",
    )
    bc = sub.add_parser(
        "broker-config",
        help="write mosquitto.conf + ACL and the broker's certificates from the device CA",
    )
    bc.add_argument("--out", type=Path, required=True, help="directory to write into (required)")
    bc.add_argument(
        "--ca-dir", type=Path, required=True, help="the device CA, kioskfleet ca init (required)"
    )
    bc.add_argument("--host", default="127.0.0.1", help="listener address, first SAN")
    bc.add_argument("--port", type=int, default=8883, help="listener port (TLS)")
    bc.add_argument(
        "--san", action="append", default=[], help="another broker name, repeat (default: none)"
    )
    bc.add_argument(
        "--server-identity",
        action="append",
        default=None,
        help="CN of a server's MQTT client certificate (repeat; one per replica, e.g. "
        "kioskfleet:server:a); default kioskfleet:server",
    )
    bc.add_argument(
        "--crl-file", type=Path, default=None, help="the CRL the broker reads (default CA/crl.pem)"
    )


def _broker_config(args: argparse.Namespace) -> int:
    from kioskfleet.broker_config import DEFAULT_SERVER_IDENTITY
    from kioskfleet.broker_setup import write_broker_setup
    from server.errors import DeviceCaError

    try:
        setup = write_broker_setup(
            args.out,
            args.ca_dir,
            host=args.host,
            port=args.port,
            sans=args.san,
            server_identities=args.server_identity or [DEFAULT_SERVER_IDENTITY],
            crl_file=args.crl_file,
        )
    except (DeviceCaError, ValueError, OSError) as exc:
        print(f"kioskfleet broker-config: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {setup.conf} and {setup.acl}")
    for name, (cert, key) in setup.server_credentials.items():
        print(f"server identity {name}: {cert} {key}")
    for note in setup.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] in (["repo"], ["vendor"], ["--install-completion"], ["--show-completion"]) or (
        "_KIOSKFLEET_COMPLETE" in os.environ  # the shell asking Typer for completions
    ):  # signed releases: Typer (cli_updates.py), with shell completion for repo and vendor
        from kioskfleet.cli_updates import run

        return run(words)
    args = _parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format, verbose=args.verbose)
    except ValueError as exc:
        print(f"kioskfleet: {exc}", file=sys.stderr)
        return 2
    if args.command == "agent" and args.agent_command == "keygen":
        from agent.enrollment import keygen_command

        return keygen_command(args.key_file)
    if args.command == "agent":
        from agent.main import run_agent

        return run_agent(args.config)
    if args.command == "server":
        from server.main import run_server

        return run_server(args.env_file)
    if args.command == "db":
        from server.main import upgrade_database

        return upgrade_database(args.env_file)
    if args.command == "broker-config":
        return _broker_config(args)
    if args.command == "token":
        from server.token_cli import run_token_command

        fields = ("name", "role", "vendor", "expires")
        return run_token_command(
            args.token_command, {f: getattr(args, f, None) for f in fields}, args.env_file
        )
    if args.command == "user":
        from server.user_cli import run_user_command

        user_fields = ("username", "role", "password_stdin")
        return run_user_command(
            args.user_command, {f: getattr(args, f, None) for f in user_fields}, args.env_file
        )
    if args.command == "terminal":
        return _terminal(args)
    if args.command == "rollout":
        from kioskfleet.rollout_cli import run_rollout_command

        return run_rollout_command(args)
    if args.command in ("maintenance", "problem"):
        from kioskfleet.maintenance_cli import run_maintenance_command

        return run_maintenance_command(args)
    if args.command == "hall":
        from server.hours_cli import run_hours_command

        return run_hours_command(
            args.hours_command, args.hall, getattr(args, "file", None), args.env_file
        )
    if args.command == "analytics":
        from server.analytics_cli import run_analytics_command

        return run_analytics_command(
            args.analytics_command,
            since=args.since,
            until=args.until,
            by=getattr(args, "by", "hall"),
            hall=args.hall,
            env_file=args.env_file,
        )
    if args.command == "report":
        from server.hall_report_cli import run_report_command

        return run_report_command(
            args.hall,
            args.week,
            fmt=args.format,
            out=args.out,
            language=args.language,
            env_file=args.env_file,
        )
    if args.command == "service":
        from server.service_cli import run_service_command

        return run_service_command(args.service_command, getattr(args, "file", None), args.env_file)
    if args.command == "ca":
        from server.identity_cli import init_ca_command

        return init_ca_command(args.directory)
    from agent.planted_faults import PlantedFault, PlantedOutage
    from agent.simulator import (
        SimulationOptions,
        SimulationTuning,
        run_simulation,
        write_identities,
    )

    try:
        planted = tuple(PlantedFault.parse(text) for text in args.plant)
        outages = tuple(PlantedOutage.parse(text) for text in args.plant_outage)
    except ValueError as exc:
        print(f"kioskfleet simulate: {exc}", file=sys.stderr)
        return 2
    brokers: list[str] = args.broker or ["mqtt://127.0.0.1:1883"]
    if args.start_at is not None and args.start_at.tzinfo is None:
        print("kioskfleet simulate: --start-at needs a UTC offset (RFC 3339)", file=sys.stderr)
        return 2
    offset = 0.0 if args.start_at is None else (args.start_at - datetime.now(UTC)).total_seconds()
    options = SimulationOptions(
        terminals=args.terminals,
        broker_url=brokers[0],
        broker_urls=tuple(brokers) if len(brokers) > 1 else (),
        halls=args.halls,
        regions=args.regions,
        seed=args.seed,
        demand=args.demand,
        clock_offset_s=offset,
        report_interval_s=args.report_interval,
        fault_rate=args.fault_rate,
        duration_s=args.duration,
        processes=args.processes,
        id_prefix=args.id_prefix,
        outbox_path=args.outbox,
        commit_confirmation=not args.no_commit_confirmation,
        enroll_url=args.enroll_url,
        ca_file=args.ca_file,
        identity_dir=args.identity_dir,
        enroll_concurrency=args.enroll_concurrency,
        updates_server_url=args.updates_server,
        trusted_root=args.trusted_root,
        update_failure_fraction=args.update_failure_fraction,
        work_dir=args.work_dir,
        planted_faults=planted,
        planted_outages=outages,
        session_expiry_s=args.session_expiry,
    )
    if args.keys_only:
        if args.identity_dir is None:
            print("--keys-only needs --identity-dir", file=sys.stderr)
            return 2
        print(write_identities(options, args.identity_dir))
        return 0
    if not 0 <= args.drain_jitter <= 3600:
        print("kioskfleet simulate: --drain-jitter must be between 0 and 3600", file=sys.stderr)
        return 2
    return run_simulation(options, SimulationTuning(drain_jitter_s=args.drain_jitter))


def _decommission(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from kioskfleet.api_client import ApiClientError, post, read_token

    try:
        answer = post(
            args.server,
            f"/api/v1/terminals/{quote(args.terminal_id, safe='')}/decommission",
            token=read_token(args.token_file),
            ca_file=args.ca_file,
        )
    except (ApiClientError, OSError) as exc:
        print(f"decommission failed: {exc}", file=sys.stderr)
        return 1
    if answer.status != 200:
        print(f"refused ({answer.status}): {answer.message}", file=sys.stderr)
        return 1
    known = "" if answer.body.get("known") else " (the server did not know it)"
    print(f"decommissioned {args.terminal_id}{known}")
    return 0


def _terminal(args: argparse.Namespace) -> int:
    if args.terminal_command == "decommission":
        return _decommission(args)
    from server import identity_cli

    if args.terminal_command == "revoke":
        return identity_cli.revoke_command(args.env_file, args.terminal_id)
    if args.terminal_command == "tag":
        return identity_cli.tag_command(args.env_file, args.terminal_id, args.tags)
    if args.terminal_command == "token":
        return identity_cli.token_command(
            args.env_file, args.terminal_id, args.hall, args.region, args.model, args.ttl
        )
    if args.from_file is not None:
        if args.terminal_id is not None or args.key is not None:
            print("--from-file goes without ID and --key", file=sys.stderr)
            return 2
        return identity_cli.preauthorize_file_command(args.env_file, args.from_file)
    if None in (args.terminal_id, args.hall, args.region, args.model, args.key):
        print(
            "preauthorize needs ID --hall --region --model --key (or --from-file)", file=sys.stderr
        )
        return 2
    return identity_cli.preauthorize_command(
        args.env_file, args.terminal_id, args.hall, args.region, args.model, args.key
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``kioskfleet`` command: ``agent``, ``agent keygen``, ``server``, ``db upgrade``,
``token``, ``user create|passwd|disable|list``, ``hall hours set|show``, ``ca init``,
``terminal preauthorize|token|revoke|decommission``, ``simulate``, ``broker-config``, and
``repo``/``vendor`` (signed releases, Typer: kioskfleet/cli_updates.py).

Only argument parsing lives here; each subcommand hands over to its package
(imported lazily so that ``kioskfleet agent`` on a terminal never imports the
server's dependencies).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kioskfleet import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kioskfleet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kioskfleet {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run the terminal agent")
    agent.add_argument(
        "--config", type=Path, help="agent.toml (settings also from KIOSKFLEET_AGENT_*)"
    )
    agent_sub = agent.add_subparsers(dest="agent_command")
    keygen = agent_sub.add_parser(
        "keygen", help="make the terminal's key (0600) if missing; print its public key PEM"
    )
    keygen.add_argument("--key-file", type=Path, default=Path("/var/lib/kioskfleet/terminal.key"))

    server = sub.add_parser("server", help="run the central server (settings from KIOSKFLEET_*)")
    server.add_argument("--env-file", type=Path, help="a file of KIOSKFLEET_* settings")

    db = sub.add_parser("db", help="database maintenance (settings from KIOSKFLEET_*)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser(
        "upgrade", help="migrate the database to the newest schema (the server also does at start)"
    )
    upgrade.add_argument("--env-file", type=Path, help="a file of KIOSKFLEET_* settings")

    tok = sub.add_parser("token", help="API tokens, on the database (settings from KIOSKFLEET_*)")
    tok.add_argument("--env-file", type=Path, help="a file of KIOSKFLEET_* settings")
    tok_sub = tok.add_subparsers(dest="token_command", required=True)
    create = tok_sub.add_parser("create", help="create a token and print its secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["admin", "operator", "viewer", "vendor"])
    create.add_argument("--vendor", help="the vendor a vendor token is bound to")
    create.add_argument("--expires", help="30d, 12h, 90m, 2w or an ISO-8601 time")
    tok_sub.add_parser("list", help="every token, without secrets")
    revoke = tok_sub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")

    usr = sub.add_parser(
        "user", help="console users (people), on the database (settings from KIOSKFLEET_*)"
    )
    usr.add_argument("--env-file", type=Path, help="a file of KIOSKFLEET_* settings")
    usr_sub = usr.add_subparsers(dest="user_command", required=True)
    u_create = usr_sub.add_parser("create", help="add a console user; asks for the password")
    u_create.add_argument("username")
    u_create.add_argument("--role", required=True, choices=["admin", "operator", "viewer"])
    u_passwd = usr_sub.add_parser("passwd", help="set a user's password; ends its sessions")
    u_passwd.add_argument("username")
    for p in (u_create, u_passwd):
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from stdin's first line",
        )
    u_disable = usr_sub.add_parser("disable", help="a user can no longer log in; ends its sessions")
    u_disable.add_argument("username")
    usr_sub.add_parser("list", help="every console user, without passwords")

    hall = sub.add_parser("hall", help="halls, on the database (settings from KIOSKFLEET_*)")
    hall.add_argument("--env-file", type=Path, help="a file of KIOSKFLEET_* settings")
    hall_sub = hall.add_subparsers(dest="hall_command", required=True)
    hours = hall_sub.add_parser("hours", help="a hall's opening hours and holidays")
    hours_sub = hours.add_subparsers(dest="hours_command", required=True)
    hours_set = hours_sub.add_parser("set", help="set (replace) HALL's hours from a JSON file")
    hours_set.add_argument("hall", metavar="HALL")
    hours_set.add_argument("--file", type=Path, required=True, help="hours.json (docs/updates.md)")
    hours_show = hours_sub.add_parser("show", help="print HALL's hours as JSON")
    hours_show.add_argument("hall", metavar="HALL")

    ca = sub.add_parser("ca", help="the fleet's device CA")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_sub.add_parser(
        "init", help="create the root and issuing CA in DIR (never overwrites one)"
    )
    ca_init.add_argument("directory", type=Path, metavar="DIR")

    terminal = sub.add_parser(
        "terminal", help="the terminal registry (settings from KIOSKFLEET_*, KIOSKFLEET_CA_DIR)"
    )
    terminal.add_argument("--env-file", type=Path, help="a file of KIOSKFLEET_* settings")
    t_sub = terminal.add_subparsers(dest="terminal_command", required=True)
    pre = t_sub.add_parser("preauthorize", help="let ID enroll with its public key")
    pre.add_argument("terminal_id", nargs="?", metavar="ID")
    pre.add_argument(
        "--from-file",
        type=Path,
        help="CSV lines id,hall,region,model,key (a PEM path or the PEM); all or nothing",
    )
    tok = t_sub.add_parser("token", help="a one-time enrollment token for ID (printed once)")
    tok.add_argument("terminal_id", metavar="ID")
    tok.add_argument("--ttl", default="24h", help="lifetime: 30m, 24h, 7d (default 24h)")
    for p in (pre, tok):
        required = p is tok
        p.add_argument("--hall", required=required)
        p.add_argument("--region", required=required)
        p.add_argument("--model", required=required)
    pre.add_argument("--key", type=Path, help="the terminal's public key PEM (agent keygen)")
    rev = t_sub.add_parser("revoke", help="revoke ID's certificates and rewrite the CRL")
    rev.add_argument("terminal_id", metavar="ID")
    dec = t_sub.add_parser(
        "decommission",
        help="remove ID through the running server's API (revoked, its retained state cleared, "
        "out of the fleet state; history kept); needs an operator token",
    )
    dec.add_argument("terminal_id", metavar="ID")
    dec.add_argument("--server", required=True, help="the server's base URL, https://host:port")
    dec.add_argument("--token-file", type=Path, required=True, help="a file holding the token")
    dec.add_argument("--ca-file", type=Path, help="the fleet CA chain to verify HTTPS with")

    from kioskfleet.rollout_cli import add_rollout_parser

    add_rollout_parser(sub)

    sim = sub.add_parser("simulate", help="run N simulated terminals with the real agent code")
    sim.add_argument("--terminals", type=int, default=50)
    sim.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    sim.add_argument("--halls", type=int, default=3)
    sim.add_argument("--regions", type=int, default=1)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--report-interval", type=float, default=60.0, help="seconds between reports")
    sim.add_argument("--fault-rate", type=float, default=1.0, help="scenario speed-up for faults")
    sim.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    sim.add_argument("--processes", type=int, default=1, help="spread terminals over processes")
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
        "--no-commit-confirmation",
        action="store_true",
        help="remove a message on the broker's PUBACK instead of the server's kf.committed "
        "(a broker with no kioskfleet server behind it)",
    )
    sim.add_argument("--enroll-url", help="EST base URL (https://...): enroll every terminal first")
    sim.add_argument("--ca-file", type=Path, help="the fleet CA chain (EST server and broker)")
    sim.add_argument(
        "--identity-dir", type=Path, help="the terminals' keys and certificates (<id>.key/.pem)"
    )
    sim.add_argument("--enroll-concurrency", type=int, default=8)
    sim.add_argument(
        "--updates-server",
        help="the server's base URL: every terminal takes updates through the real agent "
        "update path (TUF, signed directives, the bundle handler into --work-dir)",
    )
    sim.add_argument("--trusted-root", type=Path, help="the operator's root.json (with updates)")
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
        "--keys-only",
        action="store_true",
        help="make the keys in --identity-dir and its preauthorize.csv, then exit",
    )
    bc = sub.add_parser(
        "broker-config",
        help="issue the broker's and the server's certificates from the device CA and write "
        "mosquitto.conf + acl (TLS, client certificates, CRL, per-terminal ACL)",
    )
    bc.add_argument("--out", type=Path, required=True, help="directory to write into")
    bc.add_argument("--ca-dir", type=Path, required=True, help="the device CA (kioskfleet ca init)")
    bc.add_argument("--host", default="127.0.0.1", help="listener address, first SAN")
    bc.add_argument("--port", type=int, default=8883)
    bc.add_argument("--san", action="append", default=[], help="another broker name (repeat)")
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
    return parser


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
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
    if args.command == "hall":
        from server.hours_cli import run_hours_command

        return run_hours_command(
            args.hours_command, args.hall, getattr(args, "file", None), args.env_file
        )
    if args.command == "ca":
        from server.identity_cli import init_ca_command

        return init_ca_command(args.directory)
    from agent.simulator import SimulationOptions, run_simulation, write_identities

    options = SimulationOptions(
        terminals=args.terminals,
        broker_url=args.broker,
        halls=args.halls,
        regions=args.regions,
        seed=args.seed,
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
    )
    if args.keys_only:
        if args.identity_dir is None:
            print("--keys-only needs --identity-dir", file=sys.stderr)
            return 2
        print(write_identities(options, args.identity_dir))
        return 0
    return run_simulation(options)


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

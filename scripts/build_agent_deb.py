"""Build the agent's Debian package: ``python scripts/build_agent_deb.py --out DIR``.

What goes in (docs/packaging.md):

- ``/opt/kioskfleet-agent/lib``: the kioskfleet wheel, built from this checkout, and every
  distribution it depends on, copied file by file (their ``RECORD``) from the interpreter
  running this script: the build is offline and vendors exactly what the tests ran on.
  Compiled parts are CPython 3.11 for this machine's architecture, hence
  ``Depends: python3.11`` and ``Architecture:`` from ``dpkg --print-architecture``;
- ``/opt/kioskfleet-agent/bin/{kioskfleet,kioskfleet-agent-launcher}``: ``python3.11 -I``
  scripts that find ``lib`` beside themselves, linked from ``/usr/bin``;
- ``/lib/systemd/system/kioskfleet-agent.service`` (``packaging/systemd/``),
  ``/etc/kioskfleet/agent.toml`` as a conffile (``agent.example.toml`` without its demo
  probes), the maintainer
  scripts and copyright in ``packaging/debian/``, and the lintian overrides.

``dpkg-deb --build --root-owner-group`` makes every file root's. Prints the .deb's path.
Never: write into the checkout (the wheel is built from a copy), or reach the network.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = ["PACKAGE", "build", "dependency_closure", "glibc_minor", "main", "packaged_config"]

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "kioskfleet-agent"
PREFIX = Path("opt/kioskfleet-agent")
PYTHON = "python3"  # 3.11 exactly: the vendored compiled parts are cp311 (Depends)
COMMANDS = {"kioskfleet": "kioskfleet.cli", "kioskfleet-agent-launcher": "agent.launcher"}
DEMO_SECTION = "# Scenario probes for a demo terminal"  # agent.example.toml, from here to the end
MAINTAINER = "kioskfleet maintainers <kioskfleet@example.org>"
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis", "var",
)  # fmt: skip

_COMMAND = """#!/usr/bin/{python} -I
# {name} from {prefix} (the kioskfleet-agent Debian package, scripts/build_agent_deb.py).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
from {module} import main  # noqa: E402

sys.exit(main())
"""


# The server's weekly hall report (charts and PDF): the agent never imports them, and their
# wheels embed copies of system libraries (libpng, freetype...) that lintian rightly refuses.
SERVER_ONLY: Final = frozenset({"matplotlib", "weasyprint"})


def dependency_closure(requirements: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions that ``requirements`` need, transitively, with extras.

    Raises PackageNotFoundError when one of them is not installed.
    """
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = found.get(key[0]) or metadata.distribution(req.name)
        found[key[0]] = dist
        for line in dist.requires or ():
            sub = Requirement(line)
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _installed_files(dist: metadata.Distribution) -> Iterator[tuple[Path, Path]]:
    """(source, path under site-packages) of the files a distribution installed there."""
    for item in dist.files or ():
        relative = Path(item)
        if relative.parts[0] == ".." or "__pycache__" in relative.parts:
            continue  # console scripts (bin/) and byte-code are not vendored
        if relative.name == ".gitignore":
            continue  # a vendored project's VCS file (lintian: package-contains-vcs-control-file)
        yield Path(str(dist.locate_file(item))), relative


def packaged_config(example: str) -> str:
    """``agent.example.toml`` without its demo section: an installed terminal must not
    report simulated faults. Raises ValueError if the section's marker is gone."""
    head, marker, _demo = example.partition(DEMO_SECTION)
    if not marker:
        raise ValueError(f"agent.example.toml lost its {DEMO_SECTION!r} line")
    return head + "# (The example's simulated probes are not packaged: list the real ones above.)\n"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)  # noqa: S603
    return done.stdout


def _build_date() -> str:
    """RFC 2822 date of the build: ``SOURCE_DATE_EPOCH`` if set, else the last commit's."""
    epoch = (
        os.environ.get("SOURCE_DATE_EPOCH")
        or _run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"]).strip()
    )
    return email.utils.format_datetime(datetime.fromtimestamp(int(epoch), UTC))


def _build_wheel(work: Path) -> Path:
    source = work / "source"  # setuptools builds in the tree: not in the checkout
    shutil.copytree(REPO, source, symlinks=True, ignore=_NOT_SOURCE)
    wheels = work / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "--wheel-dir", str(wheels), str(source)])  # fmt: skip
    (wheel,) = wheels.glob("kioskfleet-*.whl")
    return wheel


def _vendor(wheel: Path, lib: Path) -> None:
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
          "--no-compile", "--target", str(lib), str(wheel)])  # fmt: skip
    shutil.rmtree(lib / "bin", ignore_errors=True)  # console scripts naming this interpreter
    (ours,) = metadata.distributions(name="kioskfleet", path=[str(lib)])
    requires = ours.requires or ()
    runtime = [
        r
        for r in requires
        if "extra ==" not in r and canonicalize_name(Requirement(r).name) not in SERVER_ONLY
    ]
    for dist in dependency_closure(runtime):
        for source, relative in _installed_files(dist):
            target = lib / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def _normalise_modes(root: Path, executables: set[Path]) -> None:
    """0755 folders and listed executables, 0644 for the rest (shared objects included)."""
    for folder, _dirs, files in os.walk(root):
        Path(folder).chmod(0o755)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(0o755 if path in executables else 0o644)


def glibc_minor(lib: Path) -> int:
    """The newest glibc ``2.N`` a vendored wheel was built for (``manylinux_2_N``, 2014 = 17)."""
    newest = 17
    for wheel_file in lib.glob("*.dist-info/WHEEL"):
        for line in wheel_file.read_text().splitlines():
            match = re.fullmatch(r"Tag: .*-(manylinux2014|manylinux_2_(\d+))_\w+", line.strip())
            if match:
                newest = max(newest, int(match.group(2) or 17))
    return newest


def _control(version: str, arch: str, installed_kib: int, glibc_minor: int) -> str:
    return f"""Package: {PACKAGE}
Version: {version}
Architecture: {arch}
Maintainer: {MAINTAINER}
Installed-Size: {installed_kib}
Depends: python3 (>= 3.11), python3 (<< 3.12), libc6 (>= 2.{glibc_minor}), adduser, init-system-helpers (>= 1.52)
Section: admin
Priority: optional
Homepage: https://kioskfleet.example.org/
Description: kioskfleet terminal agent with its A/B launcher
 The agent of a government self-service terminal: it reads the peripherals,
 reports health to the fleet server over MQTT and installs signed updates.
 The systemd unit runs the launcher, which starts the agent from its active
 slot and rolls a new agent release back unless it confirms in time.
 .
 The agent and the Python packages it needs are vendored under
 /opt/kioskfleet-agent; the configuration is /etc/kioskfleet/agent.toml.
"""


def build(out: Path, wheel: Path | None = None) -> Path:
    """Build the package into ``out``; its path. Raises CalledProcessError from pip/dpkg-deb."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = _run(["dpkg", "--print-architecture"]).strip()
    with tempfile.TemporaryDirectory(prefix="kf-deb-") as tmp:
        work = Path(tmp)
        stage = work / "stage"
        wheel = wheel or _build_wheel(work)
        _vendor(wheel, stage / PREFIX / "lib")
        executables: set[Path] = set()
        for name, module in COMMANDS.items():
            script = stage / PREFIX / "bin" / name
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(
                _COMMAND.format(python=PYTHON, name=name, prefix=f"/{PREFIX}", module=module)
            )
            executables.add(script)
            link = stage / "usr/bin" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"/{PREFIX}/bin/{name}")
        unit = stage / "lib/systemd/system/kioskfleet-agent.service"
        unit.parent.mkdir(parents=True)
        shutil.copyfile(REPO / "packaging/systemd/kioskfleet-agent.service", unit)
        config = stage / "etc/kioskfleet/agent.toml"
        config.parent.mkdir(parents=True)
        config.write_text(packaged_config((REPO / "agent.example.toml").read_text()))
        docs = stage / "usr/share/doc" / PACKAGE
        docs.mkdir(parents=True)
        shutil.copyfile(REPO / "packaging/debian/copyright", docs / "copyright")
        changelog = (
            f"{PACKAGE} ({version}) unstable; urgency=medium\n\n"
            "  * Built from the kioskfleet checkout by scripts/build_agent_deb.py.\n\n"
            f" -- {MAINTAINER}  {_build_date()}\n"
        )
        (docs / "changelog.gz").write_bytes(gzip.compress(changelog.encode(), mtime=0))
        overrides = stage / "usr/share/lintian/overrides" / PACKAGE
        overrides.parent.mkdir(parents=True)
        shutil.copyfile(REPO / "packaging/debian/lintian-overrides", overrides)

        control = stage / "DEBIAN"
        control.mkdir()
        for script_name in ("postinst", "prerm", "postrm"):
            shutil.copyfile(REPO / "packaging/debian" / script_name, control / script_name)
            executables.add(control / script_name)
        (control / "conffiles").write_text("/etc/kioskfleet/agent.toml\n")
        payload = sorted(p for p in stage.rglob("*") if p.is_file() and not p.is_symlink()
                         and control not in p.parents)  # fmt: skip
        (control / "md5sums").write_text("".join(
            f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(stage)}\n"  # noqa: S324 -- dpkg's format
            for p in payload if not p.is_relative_to(stage / "etc")
        ))  # fmt: skip
        installed_kib = sum(p.stat().st_size for p in payload) // 1024 + 1
        (control / "control").write_text(
            _control(version, arch, installed_kib, glibc_minor(stage / PREFIX / "lib"))
        )
        _normalise_modes(stage, executables)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{PACKAGE}_{version}_{arch}.deb"
        _run(["dpkg-deb", "--build", "--root-owner-group", "-Zgzip", str(stage), str(deb)])
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="folder for the .deb")
    parser.add_argument("--wheel", type=Path, help="a built kioskfleet wheel (default: build)")
    args = parser.parse_args(argv)
    print(build(args.out, args.wheel))
    return 0


if __name__ == "__main__":
    sys.exit(main())

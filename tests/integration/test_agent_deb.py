"""The agent's Debian package (scripts/build_agent_deb.py, docs/packaging.md): built once per
module, checked with lintian, unpacked with ``dpkg -x``, its launcher run from there and its
systemd unit verified with ``systemd-analyze verify``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_agent_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UNIT = "lib/systemd/system/kioskfleet-agent.service"
PREFIX = "opt/kioskfleet-agent"


def run(
    *argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} missing: make setup installs it (scripts/system-deps.sh)"
    return found


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = run(sys.executable, REPO / "scripts" / "build_agent_deb.py", "--out", out, env=env)
    assert done.returncode == 0, done.stderr
    package = Path(done.stdout.strip())
    assert package.parent == out
    assert package.is_file()
    return package


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    done = run(tool("dpkg"), "-x", deb, root)
    assert done.returncode == 0, done.stderr
    return root


def test_lintian_reports_no_error_and_every_override_is_used(deb: Path) -> None:
    done = run(tool("lintian"), "--tag-display-limit", "0", "--display-info", deb)
    tags = [ln for ln in done.stdout.splitlines() if re.match(r"[EWIXPO]: ", ln)]
    assert [t for t in tags if t.startswith("E: ")] == []
    assert [t for t in tags if "unused-override" in t or "mismatched-override" in t] == []


def test_the_package_is_root_owned_with_the_unit_the_launcher_and_agent_toml_as_conffile(
    deb: Path,
) -> None:
    listing = run(tool("dpkg-deb"), "--contents", deb).stdout.splitlines()
    owners = {line.split()[1] for line in listing}
    assert owners == {"root/root"}
    names = {line.split()[5] for line in listing}
    assert {f"./{UNIT}", "./etc/kioskfleet/agent.toml", f"./{PREFIX}/bin/kioskfleet-agent-launcher",
            "./usr/bin/kioskfleet-agent-launcher", "./usr/bin/kioskfleet",
            "./usr/share/doc/kioskfleet-agent/copyright"} <= names  # fmt: skip
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert run(tool("dpkg-deb"), "--info", deb, "conffiles").stdout == (
        "/etc/kioskfleet/agent.toml\n"
    )
    control = run(tool("dpkg-deb"), "--field", deb, "Depends").stdout
    assert "python3 (>= 3.11), python3 (<< 3.12)" in control


def test_the_unpacked_files_are_the_checkouts_unit_and_the_example_config_without_demo_probes(
    unpacked: Path,
) -> None:
    assert (unpacked / UNIT).read_text() == (
        REPO / "packaging/systemd/kioskfleet-agent.service"
    ).read_text()
    installed = unpacked / "etc/kioskfleet/agent.toml"
    example = (REPO / "agent.example.toml").read_text()
    kept = installed.read_text().rsplit("\n# (The example", 1)[0]
    assert example.startswith(kept)
    assert len(kept) > len(example) / 2  # only the demo section at the end is left out
    config = load_agent_config(installed)  # the agent's own loader accepts it
    assert config.probes == []
    assert [p.type for p in load_agent_config(REPO / "agent.example.toml").probes] == [
        "simulated",
        "simulated",
    ]
    assert os.readlink(unpacked / "usr/bin/kioskfleet-agent-launcher") == (
        f"/{PREFIX}/bin/kioskfleet-agent-launcher"
    )


def test_the_installed_launcher_runs_from_the_unpacked_root_on_the_system_python(
    unpacked: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    bindir = unpacked / PREFIX / "bin"
    helped = run(bindir / "kioskfleet-agent-launcher", "--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: kioskfleet-agent-launcher")
    assert "--fallback" in helped.stdout
    # the code that runs is the vendored copy, not the checkout's or the venv's
    where = run("/usr/bin/python3", "-I", "-c",
                f"import sys; sys.path.insert(0, {str(unpacked / PREFIX / 'lib')!r}); "
                "import agent.launcher, pydantic, paho.mqtt; "
                "print(agent.launcher.__file__, pydantic.__file__, paho.mqtt.__file__)",
                cwd=tmp_path, env=env)  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(unpacked / PREFIX / "lib") for p in where.stdout.split())
    version = run(bindir / "kioskfleet", "--version", cwd=tmp_path, env=env)
    assert (version.returncode, version.stdout.strip()) == (0, "kioskfleet 0.1.0")


def _with_host_targets(root: Path) -> None:
    """The unit's dependencies (multi-user.target, network-online.target, ...) come from the
    host's systemd; the package ships only its own unit."""
    units = root / "lib/systemd/system"
    for target in Path("/lib/systemd/system").glob("*.target"):
        if not (units / target.name).exists():
            shutil.copy2(target, units / target.name)


def test_systemd_analyze_verifies_the_installed_unit_and_would_flag_a_broken_one(
    unpacked: Path, tmp_path: Path
) -> None:
    analyze = tool("systemd-analyze")
    _with_host_targets(unpacked)
    ok = run(analyze, "verify", f"--root={unpacked}", f"/{UNIT}")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")

    broken = tmp_path / "broken"
    shutil.copytree(unpacked / "lib", broken / "lib", symlinks=True)
    shutil.copytree(unpacked / "usr", broken / "usr", symlinks=True)
    unit = broken / UNIT
    unit.write_text(unit.read_text().replace("Restart=always", "Restart=sometimes"))
    (broken / "usr/bin/kioskfleet-agent-launcher").unlink()
    bad = run(analyze, "verify", f"--root={broken}", f"/{UNIT}")
    assert "Failed to parse service restart specifier" in bad.stderr
    assert "kioskfleet-agent-launcher is not executable" in bad.stderr


def test_dpkg_installs_reinstalls_reconfigures_and_purges_it_in_a_sandboxed_root(
    deb: Path, tmp_path: Path
) -> None:
    """The maintainer scripts for real, run by dpkg in a chroot whose /usr, /etc and /var are
    overlays on this machine's (tests/integration/deb_sandbox.sh): the host is untouched."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a mount namespace and chroot (make test runs as root)")
    done = run(tool("unshare"), "-m", "sh", REPO / "tests/integration/deb_sandbox.sh",
               tmp_path, deb)  # fmt: skip
    assert done.returncode == 0, done.stderr
    facts = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert facts == {
        # installed twice and configured three times: one user, one group, one override
        "users": "1",
        "groups": "1",
        "shell": "/usr/sbin/nologin",
        "overrides": "1",
        "agent.toml": "root:kioskfleet 640",
        "enabled": "/lib/systemd/system/kioskfleet-agent.service",
        "bytecode": "1",
        "help": facts["help"],
        "status": "install ok installed",
        # purge: files, state and override gone; the system user stays (Debian practice)
        "purged opt": "gone",
        "purged state": "gone",
        "purged overrides": "0",
        "purged users": "1",
    }
    assert facts["help"].startswith("usage: kioskfleet-agent-launcher")
    assert "warning" not in done.stderr.lower()
    assert not (tmp_path / "up" / "usr" / "bin" / "kioskfleet").exists()  # purge removed it


def test_the_maintainer_scripts_are_valid_posix_sh_and_guard_every_creation() -> None:
    for name in ("postinst", "prerm", "postrm"):
        script = REPO / "packaging/debian" / name
        assert run("sh", "-n", script).returncode == 0
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n")
        assert "\nset -e\n" in text
    postinst = (REPO / "packaging/debian/postinst").read_text()
    # each creation sits behind the check that makes a second run a no-op
    assert "if ! getent group kioskfleet" in postinst
    assert "if ! getent passwd kioskfleet" in postinst
    assert "if ! dpkg-statoverride --list /etc/kioskfleet/agent.toml" in postinst

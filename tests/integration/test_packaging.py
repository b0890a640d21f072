"""An installed kioskfleet finds its own broker and Prometheus files, away from any checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kioskfleet.shipped_files import SHIPPED_FILES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", "var"
)

_PROBE = """
import json, kioskfleet
from kioskfleet.local_broker import project_broker_conf
from kioskfleet.local_prometheus import project_prometheus_config, project_rules_file
print(json.dumps({
    "package": kioskfleet.__file__,
    "files": {p.name: p.read_text() for p in (
        project_broker_conf(), project_prometheus_config(), project_rules_file())},
    "paths": [str(p) for p in (
        project_broker_conf(), project_prometheus_config(), project_rules_file())],
}))
"""


def test_a_built_wheel_carries_the_config_and_the_harnesses_read_it_from_there(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"  # setuptools builds in the tree: not in the checkout
    shutil.copytree(REPO, source, symlinks=True, ignore=_NOT_SOURCE)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("kioskfleet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped = {n.rsplit("/", 1)[1] for n in names if "/shipped/" in n}
    assert shipped == set(SHIPPED_FILES)
    console = REPO / "server" / "console"
    console_files = [p for p in console.rglob("*") if p.suffix in (".html", ".css", ".po")]
    assert console_files  # the console's templates, stylesheet and catalogs ship too
    assert {str(p.relative_to(REPO)) for p in console_files} <= set(names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {_PROBE}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)

    assert Path(found["package"]).is_relative_to(site)
    assert all(Path(p).is_relative_to(site) for p in found["paths"])
    originals = {
        "mosquitto.conf": REPO / "broker" / "mosquitto.conf",
        "prometheus.yml": REPO / "monitoring" / "prometheus" / "prometheus.yml",
        "kioskfleet.rules.yml": REPO
        / "monitoring"
        / "prometheus"
        / "rules"
        / "kioskfleet.rules.yml",
    }
    assert found["files"] == {name: path.read_text() for name, path in originals.items()}


def test_in_the_checkout_the_shipped_files_are_the_files_at_the_top() -> None:
    for name in SHIPPED_FILES:
        link = REPO / "kioskfleet" / "shipped" / name
        assert link.is_symlink(), f"{link} must stay a symlink (one home for the file)"
        assert link.resolve().is_relative_to(REPO)
        assert link.resolve().is_file()

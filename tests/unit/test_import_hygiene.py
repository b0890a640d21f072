"""What importing a module drags in: pure cores stay pure, sides never import the CLI package.

Each check imports the module in a fresh interpreter (``sys.modules`` of this
test process is full of everything) and reports the modules it loaded that it
must not.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import kioskfleet
from protocol.version import __version__

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
before = set(sys.modules)
import {module}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def loaded_by(module: str) -> list[str]:
    """The modules a fresh interpreter loads to import ``module`` (beyond its start-up set)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(done.stdout)
    return names


def offending(loaded: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """The loaded modules that are, or are inside, one of ``forbidden``."""
    return [n for n in loaded if any(n == f or n.startswith(f + ".") for f in forbidden)]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# --- the version and the CLI package -----------------------------------------------------------


@pytest.mark.parametrize("side", ["agent", "server", "protocol"])
def test_no_module_of_a_side_imports_the_cli_package(side: str) -> None:
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / side).rglob("*.py"))
        if any(m == "kioskfleet" or m.startswith("kioskfleet.") for m in _imported_modules(path))
    ]
    assert importers == []


@pytest.mark.parametrize("entry", ["agent.main", "server.main"])
def test_the_agent_and_server_entry_points_load_without_the_cli_package(entry: str) -> None:
    assert offending(loaded_by(entry), ("kioskfleet",)) == []


def test_the_cli_package_reexports_the_one_version() -> None:
    assert kioskfleet.__version__ == __version__
    assert __version__

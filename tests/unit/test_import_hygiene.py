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


# --- pure cores --------------------------------------------------------------------------------

_PYDANTIC = (
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
)
_DATABASE = ("sqlalchemy", "alembic", "sqlmodel", "psycopg")
_SERVER_ADAPTERS = (
    *_DATABASE,
    "paho",
    "pydantic_settings",
    "fastapi",
    "starlette",
    "uvicorn",
    "apscheduler",
    "server.storage",
    "server.mqtt_source",
    "server.config",
    "server.main",
    "kioskfleet",
)
_PROBE_ADAPTERS = tuple(
    f"agent.probes.{name}"
    for name in ("escpos", "ipp", "pcsc", "usb", "simulated", "factory", "system")
)
_AGENT_ADAPTERS = (
    "paho",
    "pydantic_settings",
    "sqlite3",
    "smartcard",
    "agent.config",
    "agent.mqtt_connection",
    "agent.outbox",
    "agent.main",
    *_PROBE_ADAPTERS,
    "kioskfleet",
    "server",
)

# What a pure core must never load: the library of any adapter, and the adapters themselves.
PURE_CORES = {
    "agent.agent": _AGENT_ADAPTERS,
    "agent.broker_rotation": _AGENT_ADAPTERS,
    "agent.clock": _AGENT_ADAPTERS,
    "agent.errors": _AGENT_ADAPTERS,
    "agent.probes.base": _AGENT_ADAPTERS,
    "server.ingest": _SERVER_ADAPTERS,
    "server.write_behind": _SERVER_ADAPTERS,
    "server.records": _SERVER_ADAPTERS,
    "server.inbound": _SERVER_ADAPTERS,
    "server.message_source": _SERVER_ADAPTERS,
    "server.in_memory_source": _SERVER_ADAPTERS,
    "server.errors": _SERVER_ADAPTERS,
    "server.log_throttle": _SERVER_ADAPTERS,
    "server.fleet_state": _SERVER_ADAPTERS,
    "server.terminal_rules": _SERVER_ADAPTERS,
    "server.fleet_tallies": _SERVER_ADAPTERS,
    "server.fleet_query": _SERVER_ADAPTERS,
    "server.fleet_views": _SERVER_ADAPTERS,
    "server.health": _SERVER_ADAPTERS,
    "server.history_query": _SERVER_ADAPTERS,
    "server.csv_export": _SERVER_ADAPTERS,
    "server.fleet_collector": _SERVER_ADAPTERS,
    "server.access": _SERVER_ADAPTERS,
    "server.audit": _SERVER_ADAPTERS,
}


@pytest.mark.parametrize("core", sorted(PURE_CORES))
def test_a_pure_core_loads_no_adapter_and_no_adapter_library(core: str) -> None:
    assert offending(loaded_by(core), PURE_CORES[core]) == []


def _third_party(loaded: list[str]) -> list[str]:
    tops = {name.partition(".")[0] for name in loaded}
    return sorted(
        top
        for top in tops
        if top not in sys.stdlib_module_names and not top.startswith("_sysconfigdata")
    )


@pytest.mark.parametrize(
    "module", ["protocol", "protocol.broker_url", "protocol.version", "protocol.codec"]
)
def test_the_wire_package_needs_nothing_but_pydantic_and_the_standard_library(
    module: str,
) -> None:
    assert [m for m in _third_party(loaded_by(module)) if m not in ("protocol", *_PYDANTIC)] == []

"""Guardrail: each side raises one documented tree of errors, and no two errors share a name.

A new exception class in ``agent/`` must derive from ``agent.errors.AgentError``
and one in ``server/`` from ``server.errors.ServerError``, and each must be named
in the tree drawn in its side's ``errors.py`` docstring.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import defaultdict
from types import ModuleType

import pytest

import agent.errors
import server.errors
from agent.config import AgentConfigError
from agent.probes.escpos import EscPosStatusError
from agent.probes.ipp import IppDecodeError
from agent.probes.usb import UsbScanError

_ROOTS: dict[str, tuple[ModuleType, type[Exception]]] = {
    "agent": (agent.errors, agent.errors.AgentError),
    "server": (server.errors, server.errors.ServerError),
}
_SKIPPED_MODULES = ("server.migrations",)  # Alembic's env.py runs migrations when imported


def _modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    names = [package] + [
        info.name
        for info in pkgutil.walk_packages(root.__path__, prefix=package + ".")
        if not info.name.startswith(_SKIPPED_MODULES)
    ]
    return [importlib.import_module(name) for name in names]


def _public_errors(package: str) -> list[type[BaseException]]:
    """Exception classes defined (not just imported) in ``package``, private ones excluded."""
    return [
        cls
        for module in _modules(package)
        for name, cls in vars(module).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == module.__name__
        and not name.startswith("_")
    ]


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize("side", sorted(_ROOTS))
def test_every_error_a_side_defines_derives_from_its_root(side: str) -> None:
    _, root = _ROOTS[side]
    outside = {_qualified(c) for c in _public_errors(side) if not issubclass(c, root)}
    assert outside == set(), f"derive from {root.__name__}"


@pytest.mark.parametrize("side", sorted(_ROOTS))
def test_every_error_a_side_defines_is_drawn_in_its_tree(side: str) -> None:
    module, _ = _ROOTS[side]
    tree = module.__doc__ or ""
    assert [c.__name__ for c in _public_errors(side) if c.__name__ not in tree] == []


def test_errors_keep_the_builtin_bases_their_callers_catch() -> None:
    assert issubclass(AgentConfigError, ValueError)
    assert issubclass(EscPosStatusError, ValueError)
    assert issubclass(IppDecodeError, ValueError)
    assert issubclass(UsbScanError, OSError)
    assert issubclass(server.errors.InvalidCursorError, ValueError)


def test_no_two_error_classes_of_the_project_share_a_name() -> None:
    by_name: dict[str, set[str]] = defaultdict(set)
    for package in ("agent", "server", "protocol", "kioskfleet"):
        for cls in _public_errors(package):
            by_name[cls.__name__].add(_qualified(cls))
    shared = {n: q for n, q in by_name.items() if len(q) > 1}
    assert shared == {}

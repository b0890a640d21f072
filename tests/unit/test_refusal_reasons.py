"""Guardrail: enrollment refusals come from one table. Every refusal the server raises names a
reason of ``REFUSALS`` (so it has a status and a pre-set metric label), nobody builds an
``EnrollmentRefusedError`` around the table, and docs/security.md lists every reason with its
status."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from server.terminal_registry import REFUSALS

ROOT = Path(__file__).resolve().parents[2]


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == name
            ):
                found.append((path, node))
    return found


def test_every_refusal_names_a_reason_of_the_table() -> None:
    calls = _calls("refusal")
    assert calls, "no refusal() call found: the scan is broken"
    for path, call in calls:
        reason = call.args[0]
        if path.name == "terminal_registry.py" and isinstance(reason, ast.Name):
            continue  # refusal() itself passes its parameter on
        assert isinstance(reason, ast.Constant), f"{path.name}:{call.lineno}: reason not literal"
        assert reason.value in REFUSALS, f"{path.name}:{call.lineno}: {reason.value!r}"


def test_only_refusal_builds_the_error() -> None:
    builders = [f"{path.name}:{call.lineno}" for path, call in _calls("EnrollmentRefusedError")]
    assert builders == [f"terminal_registry.py:{_refusal_line()}"]


def _refusal_line() -> int:
    source = (ROOT / "server" / "terminal_registry.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == "refusal":
            return node.body[-1].lineno
    raise AssertionError("refusal() not found")


def test_docs_list_every_reason_with_its_status() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", text, flags=re.MULTILINE))
    assert {reason: int(status) for reason, status in rows.items()} == dict(REFUSALS)

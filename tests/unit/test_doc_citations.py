"""Guardrail: every test the docs cite exists, so a claim cannot outlive the test behind it.

The docs name the test that proves each claim as ``file.py::test_name`` (or, right after
such a citation, ``::test_name`` for another test of the same file). A renamed or removed
test then fails here, naming the document and the citation, instead of leaving a claim
that nothing proves. Paths of the form ``tests/....py`` must exist too.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
_CITATION = re.compile(r"(?:[\w/]*?(?P<file>\w+\.py))?::(?P<test>test_\w+)")
_TEST_PATH = re.compile(r"\btests/[\w/]+\.py\b")
_TEST_DEF = re.compile(r"^(?:async )?def (test_\w+)", re.MULTILINE)


def _tests_by_file() -> dict[str, set[str]]:
    """Test function names per test file name (``test_x.py``), over the whole suite."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("*.py"):
        names = set(_TEST_DEF.findall(path.read_text(encoding="utf-8")))
        found.setdefault(path.name, set()).update(names)
    return found


def _citations(text: str) -> list[tuple[str | None, str]]:
    """(file name, test name) of every citation; a bare ``::test`` takes the last file."""
    cited, last = [], None
    for match in _CITATION.finditer(text):
        last = match["file"] or last
        cited.append((last, match["test"]))
    return cited


def test_every_test_the_docs_cite_exists() -> None:
    tests = _tests_by_file()
    missing = [
        f"{doc.name}: {file}::{name}"
        for doc in DOCS
        for file, name in _citations(doc.read_text(encoding="utf-8"))
        if file is None or name not in tests.get(file, set())
    ]
    assert missing == []


def test_every_test_file_the_docs_name_exists() -> None:
    missing = [
        f"{doc.name}: {path}"
        for doc in DOCS
        for path in _TEST_PATH.findall(doc.read_text(encoding="utf-8"))
        if not (ROOT / path).is_file()
    ]
    assert missing == []


def test_a_bare_citation_belongs_to_the_file_cited_before_it() -> None:
    text = "`a.py::test_one`, `::test_two`; `b/c.py::test_three`"
    assert _citations(text) == [("a.py", "test_one"), ("a.py", "test_two"),
                                ("c.py", "test_three")]  # fmt: skip

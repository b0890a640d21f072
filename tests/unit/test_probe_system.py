"""Uptime and boot id, read from this machine's /proc and from prepared files."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from agent.probes.system import SystemReadError, read_boot_id, read_uptime_s


def test_uptime_of_this_machine_is_positive_and_does_not_go_backwards() -> None:
    first = read_uptime_s()
    second = read_uptime_s()
    assert 0 < first <= second


def test_boot_id_of_this_machine_is_a_stable_uuid_the_envelope_accepts() -> None:
    boot_id = read_boot_id()
    assert str(uuid.UUID(boot_id)) == boot_id
    assert re.fullmatch(r"[A-Za-z0-9-]{8,64}", boot_id)
    assert read_boot_id() == boot_id


def test_uptime_is_the_first_field_of_proc_uptime(tmp_path: Path) -> None:
    path = tmp_path / "uptime"
    path.write_text("350735.47 234388.90\n")
    assert read_uptime_s(path) == 350735.47


@pytest.mark.parametrize("content", ["", "\n", "abc 1.0\n", "-5.0 1.0\n", "nan 1\n", "inf 1\n"])
def test_malformed_uptime_is_a_typed_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "uptime"
    path.write_text(content)
    with pytest.raises(SystemReadError) as caught:
        read_uptime_s(path)
    assert caught.value.path == str(path)


def test_boot_id_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "boot_id"
    path.write_text("8b3c1f4e-1d2a-4c5b-9e6f-7a8b9c0d1e2f\n")
    assert read_boot_id(path) == "8b3c1f4e-1d2a-4c5b-9e6f-7a8b9c0d1e2f"


@pytest.mark.parametrize("content", ["", "short\n", "has space in it\n", "x" * 65, "ü" * 10])
def test_boot_id_the_envelope_would_refuse_is_a_typed_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "boot_id"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SystemReadError):
        read_boot_id(path)


def test_missing_files_are_a_typed_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SystemReadError, match="nope"):
        read_uptime_s(missing)
    with pytest.raises(SystemReadError, match="nope"):
        read_boot_id(missing)

"""Guardrail: every table the server stores says how it stops growing (server/retention.py),
the server prunes every table the list calls pruned, and docs/data-model.md says the same."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from server.config import Settings
from server.in_memory_source import InMemorySource
from server.main import Server
from server.retention import TABLE_RETENTIONS, Bounded, Pruned, retentions
from server.storage import server_metadata

ROOT = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\| `(?P<table>\w+)` \| (?P<kind>pruned|bounded) \| (?P<setting>[^|]*)\|", re.M)


def test_every_table_has_a_retention_or_a_bound() -> None:
    assert set(TABLE_RETENTIONS) == set(server_metadata().tables), (
        "add each new table to server.retention.TABLE_RETENTIONS: Pruned (with its job and"
        " setting) or Bounded (with the reason it cannot grow)"
    )
    for table, rule in TABLE_RETENTIONS.items():
        if isinstance(rule, Pruned):
            assert rule.setting is None or rule.setting in Settings.model_fields, table
            assert rule.job, table
            assert rule.rule, table
        else:
            assert isinstance(rule, Bounded), table
            assert rule.reason, table


def test_the_server_prunes_every_pruned_table(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()  # with a device CA folder: the terminal registry is on
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        ca_dir=tmp_path / "ca",
        token_retention_days=3,
        decommissioned_retention_days=400,
    )
    server = Server(settings, source=InMemorySource.factory([]))
    jobs = {r.name: r.keep for r in server.pruner.retentions}
    wanted = {r.job for r in TABLE_RETENTIONS.values() if isinstance(r, Pruned)}
    assert set(jobs) == wanted
    assert jobs["revoked or expired API tokens"] == timedelta(days=3)
    assert jobs["decommissioned terminals"] == timedelta(days=400)
    assert jobs["events"] == timedelta(days=settings.event_retention_days)
    assert jobs["orphaned directive seqs"] == timedelta(0)  # no age: follows the tombstone


def test_the_data_model_doc_lists_every_tables_retention() -> None:
    text = (ROOT / "docs" / "data-model.md").read_text(encoding="utf-8")
    section = text[text.index("## Retention") : text.index("## Decisions")]
    rows = {m["table"]: (m["kind"], m["setting"].strip()) for m in _ROW.finditer(section)}
    assert set(rows) == set(TABLE_RETENTIONS)
    for table, rule in TABLE_RETENTIONS.items():
        kind, setting = rows[table]
        assert kind == ("pruned" if isinstance(rule, Pruned) else "bounded"), table
        if isinstance(rule, Pruned):
            expected = "" if rule.setting is None else f"`{rule.setting}` "
            assert setting.startswith(expected.strip()), table
            if rule.setting is not None:
                default = Settings.model_fields[rule.setting].default
                assert setting == f"`{rule.setting}` ({default:g})", table


def test_a_pruning_the_list_does_not_name_is_refused() -> None:
    def prune(*, older_than: timedelta, now: object) -> int:
        return 0

    with pytest.raises(KeyError):
        retentions(Settings(), {"a table nobody listed": prune})

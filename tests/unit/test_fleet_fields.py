"""A terminal's fields are declared once (``TerminalView``) and every mapping derives from it.

The live record, the database rows and the API models are built by field
name; these tests fail when one of them cannot carry a field, and the pure
fleet modules are checked to hold no lock and do no I/O.
"""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from protocol.messages import PeripheralCondition, PeripheralKind
from server import api_models, storage
from server.fleet_views import (
    HallSummary,
    OfflineReason,
    PeripheralCount,
    PeripheralView,
    TerminalView,
    Transition,
)
from server.records import EventRecord
from server.terminal_rules import VIEW_FIELDS, TerminalPolicy, TerminalRecord

ROOT: Final = Path(__file__).resolve().parents[2]
T: Final = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)


def _every_field_set() -> TerminalView:
    """A view in which no field has its default value."""
    return TerminalView(
        id="T-9",
        online=True,
        state_since=T,
        last_seen=T + timedelta(seconds=1),
        first_seen=T - timedelta(days=1),
        hall="Hall 9",
        region="East",
        model="KF-300",
        offline_reason=OfflineReason.WILL,
        last_sent_at=T + timedelta(seconds=2),
        boot_id="boot-9999",
        last_seq=42,
        report_interval_s=15.0,
        agent_version="2.0.0",
        software={"kiosk-app": "4.2"},
        peripherals=(
            PeripheralView("printer", PeripheralKind.RECEIPT_PRINTER, PeripheralCondition.JAM, T),
        ),
        prev_boot_id="boot-8888",
        reports_received=7,
        events_received=3,
        seq_gaps=2,
        dropped_reports=1,
    )


def test_the_example_view_sets_every_field_away_from_its_default() -> None:
    view = _every_field_set()
    for f in dataclasses.fields(TerminalView):
        if f.default is not dataclasses.MISSING:
            assert getattr(view, f.name) != f.default, f.name
        if f.default_factory is not dataclasses.MISSING:
            assert getattr(view, f.name) != f.default_factory(), f.name


def test_the_live_record_carries_every_field_of_the_view_and_copies_it_back() -> None:
    assert set(VIEW_FIELDS) <= set(TerminalRecord.__slots__)
    view = _every_field_set()
    record = TerminalRecord.from_view(view, TerminalPolicy())
    assert record.view() == view
    copy = record.view()
    assert copy.software is not record.software  # readers never get the live dict


def test_storage_maps_every_field_of_each_read_model_to_a_column() -> None:
    mappings: list[tuple[storage._RowMapping[Any], type[Any]]] = [
        (storage._TERMINALS, TerminalView),
        (storage._PERIPHERALS, PeripheralView),
        (storage._TRANSITIONS, Transition),
        (storage._EVENTS, EventRecord),
    ]
    for mapping, model in mappings:
        stored = {name for name, _ in mapping.pairs}
        declared = {f.name for f in dataclasses.fields(model)}
        assert stored == declared - mapping.unstored, model.__name__


def test_a_read_model_and_a_table_that_drift_apart_are_refused_at_import() -> None:
    table = sa.Table(
        "t", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("subject", sa.String)
    )
    with pytest.raises(TypeError, match="have no column"):
        storage._RowMapping(table, Transition, table_only=frozenset({"id"}))


def test_terminal_rows_round_trip_every_field() -> None:
    view = _every_field_set()
    row = storage._TERMINALS.row(view, updated_at=T)
    assert row["online_since"] == view.state_since
    assert row["offline_reason"] == "will"
    assert storage._TERMINALS.model_of(row, peripherals=view.peripherals) == view


def _attributes(model: type[Any]) -> set[str]:
    names = {f.name for f in dataclasses.fields(model)}
    return names | {n for n, v in vars(model).items() if isinstance(v, property)}


@pytest.mark.parametrize(
    ("public", "source"),
    [
        (api_models.TerminalPublic, TerminalView),
        (api_models.DeliveryPublic, TerminalView),
        (api_models.PeripheralPublic, PeripheralView),
        (api_models.TransitionPublic, Transition),
        (api_models.EventPublic, EventRecord),
        (api_models.TerminalCountsPublic, HallSummary),
        (api_models.ProblemCountPublic, PeripheralCount),
    ],
)
def test_every_public_field_has_a_source_attribute(
    public: type[BaseModel], source: type[Any]
) -> None:
    assert set(public.model_fields) <= _attributes(source), public.__name__


PURE_FLEET_MODULES: Final = (
    "server/terminal_rules.py",
    "server/fleet_tallies.py",
    "server/fleet_query.py",
    "server/fleet_views.py",
    "server/health.py",
    "protocol/taxonomy.py",
)
FORBIDDEN: Final = {"threading", "socket", "sqlalchemy", "sqlmodel", "logging", "time", "os"}


@pytest.mark.parametrize("path", PURE_FLEET_MODULES)
def test_pure_fleet_modules_hold_no_lock_and_do_no_io(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported & FORBIDDEN == set(), path

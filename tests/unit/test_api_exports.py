"""Pure pieces behind the API's exports and history pages: CSV cells that cannot start a
formula, and history cursors and time ranges (server.csv_export, server.history_query)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.api_models import TransitionPublic
from server.csv_export import csv_lines, safe_cell
from server.errors import InvalidCursorError, InvalidTimeRangeError
from server.fleet_query import encode_cursor
from server.history_query import Position, decode_position, encode_position, time_range


@given(st.text())
def test_no_text_cell_starts_a_spreadsheet_formula(text: str) -> None:
    cell = safe_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert cell in (text, "'" + text)


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=HYPERLINK(1)", "'=HYPERLINK(1)"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("+1", "'+1"),
        ("E-PAPER", "E-PAPER"),
        (None, ""),
        (3, "3"),
        (True, "true"),
        ({"b": "=1", "a": 1}, '{"a":1,"b":"=1"}'),
    ],
)
def test_cells_keep_their_text_and_defuse_formula_starts(value: object, cell: str) -> None:
    assert safe_cell(value) == cell


def test_csv_lines_have_the_models_fields_as_header_and_one_row_per_item() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    item = TransitionPublic(
        subject="printer",
        kind="receipt_printer",
        from_state="ok",
        to_state="jam",
        fault_code="=1+1",
        reason=None,
        occurred_at=at,
        recorded_at=at,
    )
    header, row = csv.reader(io.StringIO("".join(csv_lines(TransitionPublic, [item]))))
    assert header == list(TransitionPublic.model_fields)
    assert dict(zip(header, row, strict=True))["fault_code"] == "'=1+1"


@given(
    st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1)),
    st.integers(min_value=0, max_value=2**62),
)
def test_a_history_cursor_gives_back_its_position(at: datetime, row_id: int) -> None:
    assert decode_position(encode_position(Position(at, row_id))) == Position(at, row_id)


@pytest.mark.parametrize(
    "cursor", ["!!!", encode_cursor("T-1"), encode_cursor("2026-01-01|x"), encode_cursor("x|1")]
)
def test_a_history_cursor_not_handed_out_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        decode_position(cursor)


def test_a_time_range_needs_offsets_and_since_before_until() -> None:
    east = timezone(timedelta(hours=8))
    r = time_range(datetime(2026, 1, 1, 8, tzinfo=east), None)
    assert r.since == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidTimeRangeError, match="offset"):
        time_range(datetime(2026, 1, 1), None)
    with pytest.raises(InvalidTimeRangeError, match="before"):
        time_range(datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))

"""CSV text of the API's public models: the columns are the model's fields, never a list
typed here, and no cell can start a spreadsheet formula.

``csv_lines(Model, items)`` yields the header (``Model``'s field names, in declaration
order) and then one line per item, so a route can stream it. Nested values (a
terminal's peripherals and software) are one cell of compact JSON. A text cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``
(OWASP "CSV injection"): a hall name or a fault code a terminal chose cannot become a
formula in the operator's spreadsheet. Pure: no I/O.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from pydantic import BaseModel

__all__ = ["CSV_MEDIA_TYPE", "csv_lines", "safe_cell"]

CSV_MEDIA_TYPE: Final = "text/csv; charset=utf-8"
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    """``value`` as a CSV cell: empty for None, JSON for lists and dicts, a leading ``'``
    before a formula start."""
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | dict):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _line(cells: Sequence[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


def csv_lines(model: type[BaseModel], items: Iterable[BaseModel]) -> Iterator[str]:
    """The header of ``model``'s fields, then one line per item (an instance of ``model``)."""
    columns = list(model.model_fields)
    yield _line(columns)
    for item in items:
        data = item.model_dump(mode="json")
        yield _line([safe_cell(data[c]) for c in columns])

"""The ``/metrics`` text: prometheus_client's ``generate_latest``, with a faster path for gauges.

``exposition(registry)`` returns the same bytes as ``generate_latest(registry)`` (the
Prometheus text format 0.0.4; ``tests/unit/test_exposition.py`` compares them byte for
byte). It writes plain gauge families itself and hands every other family (counters,
histograms, summaries, info, a gauge with a timestamp or a name that needs escaping) to
``generate_latest`` one at a time.

Why: at 1 000 halls the fleet gauges are ~16 000 samples (1.5 MB), and
``generate_latest`` spends about 5 µs on each: it sorts every sample's labels, checks
and escapes every label name and escapes every label value again. A gauge family's
samples share their label names (``GaugeMetricFamily``), so the order and the names are
settled once per family, and a label value (a hall's name is on every family of the
hall) is escaped once per scrape. ``docs/benchmarks.md`` ("The server writes its own
exposition") has the figures. The memo lives for one call: nothing here grows across scrapes.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from typing import Final, cast

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["exposition"]

# fullmatch, not match with "$": "$" also matches before a final newline.
_LEGACY_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEGACY_LABEL: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_go_float: Final = cast(Callable[[float], str], floatToGoString)  # untyped upstream


class _One(Collector):
    """One family as a collector: what ``generate_latest`` renders for the other types."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric


def exposition(registry: Collector) -> bytes:
    """``generate_latest(registry)``, the same bytes, with plain gauges written here."""
    escaped = _Escaped()  # for this call only
    out: list[bytes] = []
    for metric in registry.collect():
        lines = _gauge_lines(metric, escaped)
        if lines is None:
            out.append(generate_latest(_One(metric)))
        else:
            out.append("".join(lines).encode("utf-8"))
    return b"".join(out)


def _gauge_lines(metric: Metric, escaped: _Escaped) -> list[str] | None:
    """The family's lines, or None when ``generate_latest`` must write it."""
    if metric.type != "gauge" or not _LEGACY_NAME.fullmatch(metric.name):
        return None
    samples = metric.samples
    names = samples[0].labels.keys() if samples else set()
    for s in samples:  # every sample must be plain and share the label names
        if s.name != metric.name or s.timestamp is not None or s.exemplar is not None:
            return None
        if s.labels.keys() != names:
            return None
    order = sorted(names)
    if not all(_LEGACY_LABEL.fullmatch(n) for n in order):
        return None
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {metric.name} {doc}\n", f"# TYPE {metric.name} gauge\n"]
    if not order:
        lines.extend(f"{metric.name} {_go_float(s.value)}\n" for s in samples)
        return lines
    # name{a="%s",b="%s"} %s: the label values in sorted name order, then the value
    line = metric.name + "{" + ",".join(f'{n}="%s"' for n in order) + "} %s\n"
    values = operator.itemgetter(*order)
    esc = escaped.__getitem__
    if len(order) == 1:  # itemgetter of one name gives the value, not a tuple
        lines.extend(line % (esc(values(s.labels)), _go_float(s.value)) for s in samples)
    else:
        lines.extend(line % (*map(esc, values(s.labels)), _go_float(s.value)) for s in samples)
    return lines


class _Escaped(dict[str, str]):
    """Label value -> its escaped form (``openmetrics._escape``, UTF-8 allowed), filled on
    first use: a hall's name is on every family of the hall."""

    def __missing__(self, value: str) -> str:
        text = self[value] = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        return text

"""Fleet-wide gauges exported by the job-lease holder only (docs/scale-out.md).

Every replica sees the same fleet (or reads the same database), so a gauge about the
fleet computed on each of them is counted once per replica by a sum over instances.
``HolderOnly(collector, exporting)`` wraps such a collector: at every scrape it asks
``exporting`` (the server passes ``JobLease.held``, the lease's belief) and yields the
collector's families while it says yes; otherwise the families from the collector's
``describe()``, without samples, and the collector computes nothing. A new holder
exports at its first scrape after it took the lease over, and a standby's exposition
still names every family (a dashboard sees "no data", never a missing metric).

The one rule for the fleet gauges (``server.fleet_collector``), the service gauges
(``server.usage_metrics``), the paper gauges (``server.paper_metrics``) and the
analytics gauges (``server.analytics_metrics``). Per-process series (ingest, database,
HTTP, the lease's own) are not wrapped: each replica exports its own. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["DescribedCollector", "HolderOnly"]


class DescribedCollector(Protocol):
    """A collector whose ``describe`` yields its families without samples, reading nothing."""

    def collect(self) -> Iterator[Metric]: ...

    def describe(self) -> Iterator[Metric]: ...


class HolderOnly(Collector):
    """``inner``'s families while ``exporting()``, else the same families empty."""

    def __init__(self, inner: DescribedCollector, exporting: Callable[[], bool]) -> None:
        self._inner = inner
        self._exporting = exporting

    def describe(self) -> Iterator[Metric]:
        """The inner collector's families without samples (registering reads nothing)."""
        return self._inner.describe()

    def collect(self) -> Iterator[Metric]:
        if self._exporting():
            yield from self._inner.collect()
        else:  # a standby replica: the lease holder exports these families
            yield from self._inner.describe()

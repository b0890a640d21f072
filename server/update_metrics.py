"""Metrics of the signed-release repository: seconds until each role expires, refused uploads.

``kioskfleet_tuf_metadata_expiry_seconds{role}`` is computed at scrape time from the
repository, one series per ``EXPIRY_ROLES`` value (root, targets, snapshot, timestamp,
and ``vendors``: the soonest delegated vendor role), so the label set is bounded
however many vendors there are. ``kioskfleet_update_uploads_rejected_total{code}`` counts
refused uploads by ``RejectCode`` (plus the store's own codes), every series present at 0.
Registered on the registry passed in; nothing at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.tuf_repository import EXPIRY_ROLES, TufRepository
from server.tuf_verify import RejectCode

__all__ = ["EXPIRY_METRIC", "UPLOAD_REJECT_CODES", "UpdateMetrics"]

EXPIRY_METRIC: Final = "kioskfleet_tuf_metadata_expiry_seconds"
UPLOAD_REJECT_CODES: Final = (
    *(c.value for c in RejectCode),
    "upload_offset",
    "upload_busy",
    "too_many_uploads",
    "artifact_too_large",
    "metadata_too_large",
    "invalid_name",
    "no_root",
    "no_targets",
)


class _ExpiryCollector(Collector):
    def __init__(self, repository: TufRepository, clock: Callable[[], datetime]) -> None:
        self._repository = repository
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            EXPIRY_METRIC,
            "Seconds until the role's current signed metadata expires (negative: expired);"
            " role=vendors is the soonest delegated vendor role.",
            labels=["role"],
        )
        now = self._clock()
        expiries = self._repository.expiries()
        for role in EXPIRY_ROLES:
            if role in expiries:
                family.add_metric([role], (expiries[role] - now).total_seconds())
        yield family


class UpdateMetrics:
    """The release repository's metrics on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        repository: TufRepository,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.uploads_rejected = Counter(
            "kioskfleet_update_uploads_rejected",
            "Uploads (metadata or artifact bytes) the server refused, by reject code.",
            ["code"],
            registry=registry,
        )
        for code in UPLOAD_REJECT_CODES:
            self.uploads_rejected.labels(code)
        registry.register(_ExpiryCollector(repository, clock))

    def rejected(self, code: str) -> None:
        if code in UPLOAD_REJECT_CODES:
            self.uploads_rejected.labels(code).inc()

"""Every table that grows is pruned past its retention; one failing table does not stop the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from server.errors import StorageError
from server.metrics import ServerMetrics
from server.scheduler import Retention, RetentionPruner

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_each_table_is_pruned_with_its_own_retention_and_a_failure_is_counted() -> None:
    calls: list[tuple[str, timedelta, datetime]] = []

    def pruner(name: str, result: int | None) -> Retention:
        def prune(*, older_than: timedelta, now: datetime) -> int:
            calls.append((name, older_than, now))
            if result is None:
                raise StorageError("prune", "database is locked")
            return result

        return Retention(name, prune, timedelta(days=len(name)))

    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    job = RetentionPruner(
        [pruner("events", 3), pruner("broken", None), pruner("transitions", 0)],
        metrics,
        clock=lambda: NOW,
    )
    assert job.run() == {"events": 3, "broken": 0, "transitions": 0}
    assert calls == [
        ("events", timedelta(days=6), NOW),
        ("broken", timedelta(days=6), NOW),
        ("transitions", timedelta(days=11), NOW),
    ]
    assert registry.get_sample_value("kioskfleet_db_errors_total") == 1

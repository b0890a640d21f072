"""The hall report's render gate: at most ``concurrent`` renders at once, one more refused
at once (never queued) and counted, the last answer handed out again while fresh. Renders
that block on an event hold the slots; the cache's clock is set by hand."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from server.errors import ReportsBusyError
from server.report_gate import RESULTS, RenderGate, ReportLimits
from tests.support.waiting import wait_until


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _count(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value("kioskfleet_hall_report_renders_total", {"result": result})
    assert value is not None  # every series exists from the start
    return value


def _held(release: threading.Event, started: list[str], body: bytes) -> Callable[[], bytes]:
    def render() -> bytes:
        started.append(body.decode())
        release.wait()
        return body

    return render


def test_one_render_more_than_the_limit_is_refused_at_once_while_the_limits_worth_succeed() -> None:
    registry = CollectorRegistry()
    gate = RenderGate(ReportLimits(concurrent=2, cache_s=0, retry_after_s=7), registry)
    release, started = threading.Event(), list[str]()
    assert [_count(registry, r) for r in RESULTS] == [0, 0, 0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(gate.run, n, _held(release, started, n.encode())) for n in "ab"]
        wait_until(lambda: len(started) == 2, 5, "both renders to start")
        for key in ("a", "c", "d"):  # a third render of any key, the same or another
            with pytest.raises(ReportsBusyError) as refused:
                gate.run(key, lambda: pytest.fail("a refused render ran"))
            assert (refused.value.limit, refused.value.retry_after_s) == (2, 7)
        release.set()
        assert [f.result(timeout=5) for f in held] == [b"a", b"b"]
    assert (_count(registry, "refused"), _count(registry, "rendered")) == (3, 2)
    assert gate.run("c", lambda: b"c") == b"c"  # the slots are free again
    assert _count(registry, "cached") == 0  # cache_s=0: nothing kept


def test_a_failed_render_frees_its_slot() -> None:
    gate = RenderGate(ReportLimits(concurrent=1, cache_s=60), CollectorRegistry())

    def failing() -> bytes:
        raise ValueError("no such week")

    with pytest.raises(ValueError, match="no such week"):
        gate.run("a", failing)
    assert gate.run("a", lambda: b"a") == b"a"


def test_the_last_report_is_answered_again_while_fresh_even_with_the_gate_full() -> None:
    registry, clock = CollectorRegistry(), _Clock()
    gate = RenderGate(ReportLimits(concurrent=1, cache_s=60), registry, clock=clock)
    assert gate.run(("hall-01", "2026-W48"), lambda: b"first") == b"first"
    release, started = threading.Event(), list[str]()
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(gate.run, "other", _held(release, started, b"other"))
        wait_until(lambda: started, 5, "the other render to start")
        clock.now += 59.9
        kept = gate.run(("hall-01", "2026-W48"), lambda: pytest.fail("rendered again"))
        assert kept == b"first"  # the gate is full, the kept answer is served all the same
        release.set()
        assert other.result(timeout=5) == b"other"
    assert gate.run(("hall-01", "2026-W48"), lambda: b"second") == b"second"  # one kept: other
    clock.now += 60
    assert gate.run(("hall-01", "2026-W48"), lambda: b"third") == b"third"  # stale
    assert (_count(registry, "cached"), _count(registry, "rendered")) == (1, 4)

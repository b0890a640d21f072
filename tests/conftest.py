"""Shared fixtures: a real mosquitto per test session, started with the project's config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from kioskfleet.local_broker import LocalBroker

_INTEGRATION_DIR: Final = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration talks to real components: mark it so, whether or
    not its module says so, so that ``-m "not integration"`` is the pure unit run."""
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One mosquitto on a free loopback port for the whole session."""
    with LocalBroker(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A mosquitto for one test, which the test may kill and restart."""
    running = LocalBroker(tmp_path / "mosquitto").start()
    try:
        yield running
    finally:
        running.stop()

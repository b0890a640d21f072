"""A server that loads a large fleet takes it out of Python's full garbage collections.

``Server.start`` runs ``gc.collect(); gc.freeze()`` after loading at least
``gc_freeze_min_terminals`` terminals (docs/monitoring.md, "A mass outage";
docs/benchmarks.md has what it saves at 100 000 terminals). A small fleet, as in every
other test, freezes nothing. Each test unfreezes what it froze, so the rest of the test
process is collected as usual.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_a_server_loading_at_least_the_threshold_freezes_the_loaded_objects(
    private_server: ServerFactory,
) -> None:
    private_server(gc_freeze_min_terminals=0)  # an empty fleet is at least 0 terminals
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("unfrozen")
def test_a_server_loading_fewer_than_the_threshold_freezes_nothing(
    private_server: ServerFactory,
) -> None:
    private_server()  # default threshold 10 000, empty database
    assert gc.get_freeze_count() == 0

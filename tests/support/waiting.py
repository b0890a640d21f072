"""Polling for something another thread or process will make true: the suite's one ``wait_until``,
and the bound of one HTTP request to a server a test started (``HTTP_TIMEOUT_S``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import pytest

__all__ = ["HTTP_TIMEOUT_S", "wait_until"]

# A bound, not an expectation: an answer takes milliseconds, but `make test` runs its files
# on several workers of a machine that may be busy with more (argon2 hashes, servers
# starting), where one answer has taken over 5 s.
HTTP_TIMEOUT_S: Final = 30.0


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, what: str = "", *, every: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    Fails the test (``pytest.fail``, naming ``what``) after ``timeout`` seconds;
    the predicate is always tried once more after the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(every)

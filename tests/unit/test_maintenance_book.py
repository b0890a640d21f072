"""The metrics' cache of maintenance windows: one load per refresh or change, windows end
by the clock between loads, a failed reload keeps what it held."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.errors import StorageError
from server.maintenance import MaintenanceWindow, Scope
from server.maintenance_book import MaintenanceBook

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class _Loader:
    """The store's port as the book sees it: counts its loads, can fail."""

    def __init__(self, windows: list[MaintenanceWindow]) -> None:
        self.windows = windows
        self.loads = 0
        self.fail = False

    def __call__(self) -> list[MaintenanceWindow]:
        self.loads += 1
        if self.fail:
            raise StorageError("read maintenance windows", "database away")
        return list(self.windows)


def _window(target: str, minutes: int) -> MaintenanceWindow:
    return MaintenanceWindow(
        Scope.TERMINAL, target, "r", T0 + timedelta(minutes=minutes), T0, "token:t"
    )


def test_the_windows_are_loaded_once_per_refresh_and_again_after_a_change() -> None:
    clock, load = _Clock(), _Loader([_window("KF-1", 60)])
    book = MaintenanceBook(load, refresh_s=60, clock=clock)

    for _ in range(5):
        assert book().terminals == {"KF-1"}
    assert load.loads == 1
    book.invalidate()
    book()
    assert load.loads == 2
    clock.now += timedelta(seconds=61)
    book()
    assert load.loads == 3


def test_a_window_ends_at_its_until_without_a_reload() -> None:
    clock, load = _Clock(), _Loader([_window("KF-1", 1)])
    book = MaintenanceBook(load, refresh_s=3600, clock=clock)
    assert book().terminals == {"KF-1"}
    clock.now += timedelta(minutes=1)
    assert book().terminals == frozenset()
    assert load.loads == 1


def test_a_failed_reload_keeps_the_windows_already_held() -> None:
    clock, load = _Clock(), _Loader([_window("KF-1", 60)])
    book = MaintenanceBook(load, refresh_s=60, clock=clock)
    book()
    load.fail = True
    book.invalidate()
    assert book().terminals == {"KF-1"}

"""A hall's opening hours and holidays, and when its terminals may install (issue 11).

Pure: data and a clock in, an answer out; no database, no file, no network.
``OpeningHours`` is the wire and storage model (the API body, the CLI's
``hours.json``, the stored document)::

    {"timezone": "Europe/Berlin",
     "weekly": {"mon": [{"start": "08:00", "end": "12:00"}, {"start": "13:00", "end": "24:00"}],
                "sat": [{"start": "10:00", "end": "16:00"}]},
     "holidays": [{"date": "2026-12-25"},
                  {"date": "2026-12-24", "hours": [{"start": "08:00", "end": "12:00"}]}]}

Public interface (for the rollout wiring):

- ``is_open(hours, now) -> bool``: is the hall open at the instant ``now``;
- ``next_closed_window(hours, now) -> (start, end) | None``: the closed window terminals may
  install in: ``start`` is ``now`` if the hall is closed now, else the instant the current
  opening ends; ``end`` the next opening after ``start``, ``None`` if it does not open in
  the next ``HORIZON_DAYS`` days (closed for good, as far as these hours say); None if the
  hall never closes within that horizon (open around the clock);
- ``opening_status(hours, now) -> OpeningStatus``: open now or not, when it next opens
  (while closed), and until when that answer holds (for the metrics' cache,
  ``server.hall_openings``);
- all three raise ``ValueError`` for a naive ``now`` (a caller's bug: no error class of its
  own); bad hours are refused by the model (pydantic's ``ValidationError``).

Decisions (docs/updates.md, "Opening hours"):

- Times are wall-clock times of the hall's zone (``zoneinfo``): "08:00" is 08:00 local
  on every day, summer and winter. In the hour repeated when clocks go back, a wall time
  occurs twice and both are treated alike; wall times skipped when clocks go forward do
  not occur, so an opening or closing there takes effect at the jump.
- An interval never crosses midnight: ``start < end``, ``end`` may be ``"24:00"``. A
  late shift ``22:00-02:00`` is written as ``22:00-24:00`` on one day and ``00:00-02:00``
  on the next; ``next_closed_window`` joins them (no closed window at midnight). Refused
  rather than handled because a holiday replaces one date's hours: a crossing interval
  would leave unclear which date's entry owns the hours after midnight.
- A holiday entry replaces the weekly hours of its date: no ``hours`` (or ``[]``) is
  closed all day, ``hours`` are that day's special hours.
- Intervals of a day are sorted and may not overlap or touch (touching ones are one
  interval); bounded: ``MAX_INTERVALS_PER_DAY`` per day, ``MAX_HOLIDAYS`` holidays, one
  entry per date.

Never does: read the system clock or time zone (the caller passes ``now``, aware).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Final, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ALWAYS_OPEN",
    "HORIZON_DAYS",
    "MAX_HOLIDAYS",
    "MAX_INTERVALS_PER_DAY",
    "Holiday",
    "Interval",
    "OpeningHours",
    "OpeningStatus",
    "Weekday",
    "is_open",
    "next_closed_window",
    "open_seconds",
    "opening_status",
]

MAX_INTERVALS_PER_DAY: Final = 8
MAX_HOLIDAYS: Final = 400
HORIZON_DAYS: Final = 400  # how far next_closed_window looks for the next opening
_DAY_MINUTES: Final = 24 * 60
_CLOCK: Final = r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_WEEKDAYS: Final = tuple(Weekday)  # index = date.weekday()


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


class Interval(BaseModel):
    """Open from ``start`` (inclusive) to ``end`` (exclusive), local wall time, one day."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: str = Field(pattern=_CLOCK, description='"HH:MM", 00:00 to 23:59')
    end: str = Field(pattern=_CLOCK, description='"HH:MM", after start; "24:00" is midnight')

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start == "24:00":
            raise ValueError("an interval cannot start at 24:00")
        if _minutes(self.start) >= _minutes(self.end):
            raise ValueError(
                f"{self.start}-{self.end}: the end must come after the start; an interval"
                " never crosses midnight (split it: ...-24:00 and 00:00-... the next day)"
            )
        return self

    @property
    def minutes(self) -> tuple[int, int]:
        return _minutes(self.start), _minutes(self.end)


_Day = Annotated[list[Interval], Field(max_length=MAX_INTERVALS_PER_DAY)]


def _disjoint(intervals: list[Interval]) -> list[Interval]:
    ordered = sorted(intervals, key=lambda iv: iv.minutes)
    for before, after in itertools.pairwise(ordered):
        if before.minutes[1] >= after.minutes[0]:
            raise ValueError(
                f"{before.start}-{before.end} and {after.start}-{after.end} overlap or touch"
            )
    return ordered


class Holiday(BaseModel):
    """A date whose weekly hours do not apply: closed (no ``hours``) or these hours."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    date: date
    hours: _Day = Field(default_factory=list, description="special hours; none = closed")

    @field_validator("hours")
    @classmethod
    def _hours_disjoint(cls, value: list[Interval]) -> list[Interval]:
        return _disjoint(value)


class OpeningHours(BaseModel):
    """A hall's weekly hours in its time zone, and its holidays (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = Field(min_length=1, max_length=64, description='IANA name, "Europe/Berlin"')
    weekly: dict[Weekday, _Day] = Field(
        default_factory=dict, description="a weekday left out is closed"
    )
    holidays: list[Holiday] = Field(default_factory=list, max_length=MAX_HOLIDAYS)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, say
            raise ValueError(f"{value!r} is not a known IANA time zone") from None
        return value

    @field_validator("weekly")
    @classmethod
    def _weekly_disjoint(
        cls, value: dict[Weekday, list[Interval]]
    ) -> dict[Weekday, list[Interval]]:
        return {day: _disjoint(intervals) for day, intervals in value.items()}

    @field_validator("holidays")
    @classmethod
    def _one_per_date(cls, value: list[Holiday]) -> list[Holiday]:
        seen: set[date] = set()
        for holiday in value:
            if holiday.date in seen:
                raise ValueError(f"{holiday.date} is listed twice")
            seen.add(holiday.date)
        return sorted(value, key=lambda h: h.date)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def intervals_on(self, day: date) -> list[tuple[int, int]]:
        """The day's open intervals in minutes since local midnight: its holiday entry's,
        else its weekday's."""
        for holiday in self.holidays:
            if holiday.date == day:
                return [iv.minutes for iv in holiday.hours]
        return [iv.minutes for iv in self.weekly.get(_WEEKDAYS[day.weekday()], [])]


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now.isoformat()} has no time zone: pass an aware datetime")
    return now


def is_open(hours: OpeningHours, now: datetime) -> bool:
    """Whether the hall is open at ``now``. Raises ValueError for a naive ``now``."""
    local = _aware(now).astimezone(hours.zone)
    minute = local.hour * 60 + local.minute
    return any(start <= minute < end for start, end in hours.intervals_on(local.date()))


def _instants(zone: ZoneInfo, day: date, minute: int) -> set[datetime]:
    """The UTC instants whose local wall time in ``zone`` is ``minute`` past ``day``'s
    midnight (two in a repeated hour; for a skipped time, the instants either offset gives)."""
    day += timedelta(days=minute // _DAY_MINUTES)
    wall = datetime.combine(day, time(minute % _DAY_MINUTES // 60, minute % 60), tzinfo=zone)
    return {wall.replace(fold=fold).astimezone(UTC) for fold in (0, 1)}


def _offset_changes(zone: ZoneInfo, a: datetime, b: datetime) -> Iterator[datetime]:
    """The instant (to the minute) in ``(a, b]`` where ``zone``'s UTC offset changes, if it
    changes once between them (candidates are at most a day apart: one transition)."""
    if a.astimezone(zone).utcoffset() == b.astimezone(zone).utcoffset():
        return
    low, high = a, b  # offset(low) differs from offset(high)
    before = a.astimezone(zone).utcoffset()
    while high - low > timedelta(minutes=1):
        middle = low + (high - low) // 2
        middle = middle.replace(second=0, microsecond=0)
        if middle <= low:
            middle = low + timedelta(minutes=1)
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    yield high


def _change_points(hours: OpeningHours, first: date, days: int) -> list[datetime]:
    """Every instant at which ``is_open`` may change, from ``first``'s local midnight on
    for ``days`` days: interval starts and ends, midnights, offset changes, sorted."""
    zone = hours.zone
    points: set[datetime] = set()
    for n in range(days):
        day = first + timedelta(days=n)
        points |= _instants(zone, day, 0)
        for start, end in hours.intervals_on(day):
            points |= _instants(zone, day, start) | _instants(zone, day, end)
    ordered = sorted(points)
    transitions = {t for a, b in itertools.pairwise(ordered) for t in _offset_changes(zone, a, b)}
    return sorted(points | transitions)


def next_closed_window(
    hours: OpeningHours, now: datetime
) -> tuple[datetime, datetime | None] | None:
    """The closed window terminals may install in, as UTC instants: from ``now`` if closed
    now, else from the end of the current opening (adjacent openings, as over midnight, are
    one), to the next opening; ``end`` is None if the hall does not open within
    ``HORIZON_DAYS`` days of ``now``. None if the hall does not close within that horizon.
    Raises ValueError for a naive ``now``."""
    now = _aware(now).astimezone(UTC)
    first = now.astimezone(hours.zone).date() - timedelta(days=1)
    for span in (9, HORIZON_DAYS + 2):
        # Complete up to the local midnight ending the span's last day but one.
        trusted_until = min(_instants(hours.zone, first, (span - 1) * _DAY_MINUTES))
        later = [p for p in _change_points(hours, first, span) if now < p < trusted_until]
        start: datetime | None = now
        if is_open(hours, now):
            start = next((p for p in later if not is_open(hours, p)), None)
        if start is not None:
            end = next((p for p in later if p > start and is_open(hours, p)), None)
            if end is not None:
                return start, end
        if span > 9:
            return None if start is None else (start, None)
    return None  # not reached: the last span always answers


_RECHECK: Final = timedelta(days=1)  # how long an answer with no change in sight is kept


@dataclass(frozen=True, slots=True)
class OpeningStatus:
    """Whether a hall is open, as of an instant, and for how long that stays true.

    ``opens_at`` is the next opening while closed (None while open, or when the hall does
    not open within ``HORIZON_DAYS``); the answer holds from ``valid_from`` (the instant
    it was computed for) to ``valid_until`` (the next opening or closing, or a day later
    when none is in sight), when it must be recomputed."""

    open: bool
    opens_at: datetime | None
    valid_from: datetime
    valid_until: datetime

    def opens_in_s(self, now: datetime) -> float | None:
        """Seconds from ``now`` to the next opening: 0 while open, None if none is in sight."""
        if self.open:
            return 0.0
        if self.opens_at is None:
            return None
        return max(0.0, (self.opens_at - now).total_seconds())


ALWAYS_OPEN: Final = OpeningStatus(
    open=True,
    opens_at=None,
    valid_from=datetime.min.replace(tzinfo=UTC),
    valid_until=datetime.max.replace(tzinfo=UTC),
)
"""The status of a hall with no hours set (decision: alerts behave as without hours)."""


def opening_status(hours: OpeningHours, now: datetime) -> OpeningStatus:
    """Open or closed at ``now``, the next opening, and until when this holds (UTC instants).

    Raises ValueError for a naive ``now``."""
    now = _aware(now).astimezone(UTC)
    window = next_closed_window(hours, now)
    if window is None:  # open around the clock within the horizon
        return OpeningStatus(True, None, now, now + _RECHECK)
    start, end = window
    if start > now:  # open now, until start
        return OpeningStatus(True, None, now, start)
    if end is None:  # closed, no opening in sight
        return OpeningStatus(False, None, now, now + _RECHECK)
    return OpeningStatus(False, end, now, end)


def open_seconds(hours: OpeningHours, since: datetime, until: datetime) -> float:
    """Seconds the hall is open in ``[since, until)`` (aware instants; holidays and offset
    changes included). Raises ValueError for a naive instant."""
    since, until = _aware(since).astimezone(UTC), _aware(until).astimezone(UTC)
    if until <= since:
        return 0.0
    first = since.astimezone(hours.zone).date() - timedelta(days=1)
    days = (until - since).days + 3
    cuts = [p for p in _change_points(hours, first, days) if since < p < until]
    total = 0.0
    for a, b in itertools.pairwise([since, *cuts, until]):
        if is_open(hours, a):
            total += (b - a).total_seconds()
    return total

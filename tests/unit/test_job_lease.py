"""The job lease's pure core: ``decide`` (row and the database's clock in, action out) and
``cas_applies`` (the compare-and-set the SQL ``UPDATE`` performs), and the property the lease
exists for: at no time do two replicas believe they hold an unexpired lease, each judging
its belief by its own monotonic clock (offset from the others', and jumping ahead now and
then) from the moment it sent its read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.job_lease import Action, Attempt, LeaseRow, cas_applies, decide

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def test_no_row_is_created_with_token_one() -> None:
    attempt = decide(None, "a", T0, LEASE)
    assert attempt.action is Action.CREATE
    assert attempt.written() == LeaseRow("a", T0 + LEASE, 1)
    assert cas_applies(None, attempt)
    assert not cas_applies(LeaseRow("b", T0 + LEASE, 1), attempt)  # b created it first


def test_the_holder_renews_with_the_same_token_and_a_later_expiry() -> None:
    row = LeaseRow("a", T0 + LEASE, 4)
    attempt = decide(row, "a", T0 + timedelta(seconds=5), LEASE)
    assert attempt.action is Action.RENEW
    assert attempt.written() == LeaseRow("a", T0 + timedelta(seconds=35), 4)
    assert cas_applies(row, attempt)


def test_another_replica_stands_by_while_the_lease_is_live() -> None:
    row = LeaseRow("a", T0 + LEASE, 4)
    attempt = decide(row, "b", T0 + LEASE - timedelta(microseconds=1), LEASE)
    assert attempt.action is Action.STAND_BY
    assert not cas_applies(row, attempt)


def test_an_expired_lease_is_taken_over_with_the_next_token() -> None:
    row = LeaseRow("a", T0 + LEASE, 4)
    attempt = decide(row, "b", T0 + LEASE, LEASE)  # expiry is exclusive
    assert attempt.action is Action.TAKE_OVER
    assert attempt.written() == LeaseRow("b", T0 + 2 * LEASE, 5)
    assert cas_applies(row, attempt)


def test_a_holder_whose_lease_expired_takes_it_over_again_with_a_new_token() -> None:
    row = LeaseRow("a", T0 + LEASE, 4)
    attempt = decide(row, "a", T0 + LEASE + timedelta(seconds=1), LEASE)
    assert attempt.action is Action.TAKE_OVER
    assert attempt.token == 5


def test_a_released_lease_is_taken_over_at_once() -> None:
    row = LeaseRow(None, None, 4)
    attempt = decide(row, "b", T0, LEASE)
    assert attempt.action is Action.TAKE_OVER
    assert attempt.token == 5


def test_of_two_replicas_that_read_the_same_expired_row_only_the_first_write_wins() -> None:
    row = LeaseRow("a", T0, 4)
    b = decide(row, "b", T0 + timedelta(seconds=1), LEASE)
    c = decide(row, "c", T0 + timedelta(seconds=1), LEASE)
    assert cas_applies(row, b)
    assert not cas_applies(b.written(), c)  # the token moved on


def test_a_takeover_read_before_a_renewal_fails_after_it() -> None:
    row = LeaseRow("a", T0 + LEASE, 4)
    late = T0 + LEASE + timedelta(seconds=1)
    renewal = Attempt(Action.RENEW, row, "a", T0 + timedelta(seconds=29), T0 + timedelta(59))
    takeover = decide(row, "b", late, LEASE)
    assert cas_applies(row, renewal)
    renewed = LeaseRow("a", T0 + timedelta(seconds=59), 4)
    assert not cas_applies(renewed, takeover)  # same token, but live again at its clock


def test_a_renewal_after_a_takeover_fails() -> None:
    row = LeaseRow("a", T0 + LEASE, 4)
    renewal = decide(row, "a", T0 + timedelta(seconds=29), LEASE)
    assert not cas_applies(LeaseRow("b", T0 + 2 * LEASE, 5), renewal)


# --- the property ---------------------------------------------------------------------------


@dataclass
class _Replica:
    """A replica as ``JobLease`` is: its pending read (and its monotonic time when sent),
    and its belief: the token it last wrote, until when on its own monotonic clock."""

    name: str
    offset: float  # its monotonic clock: seconds since T0 plus this
    alive: bool = True
    pending: Attempt | None = None
    sent: float = 0.0
    belief: tuple[int, float] | None = None

    def monotonic(self, now: datetime) -> float:
        return (now - T0).total_seconds() + self.offset


@dataclass
class _Fleet:
    replicas: list[_Replica]
    now: datetime = T0
    row: LeaseRow | None = None
    tokens: list[int] = field(default_factory=list)

    def read(self, r: _Replica) -> None:  # the database's clock, the SELECT, the decision
        r.sent = r.monotonic(self.now)
        r.pending = decide(self.row, r.name, self.now, LEASE)

    def write(self, r: _Replica) -> None:  # the compare-and-set UPDATE, later
        attempt, r.pending = r.pending, None
        if attempt is None:
            return
        if cas_applies(self.row, attempt):
            self.row = attempt.written()
            r.belief = (self.row.token, r.sent + LEASE.total_seconds())
            self.tokens.append(self.row.token)
        else:
            r.belief = None

    def release(self, r: _Replica) -> None:
        mine, r.belief = r.belief, None
        row = self.row
        if mine is not None and row is not None and (row.holder, row.token) == (r.name, mine[0]):
            self.row = LeaseRow(None, None, mine[0])

    def jump(self, r: _Replica) -> None:  # its clock jumps a minute ahead
        r.offset += 60.0

    def believers(self) -> list[str]:
        return [
            r.name
            for r in self.replicas
            if r.alive and r.belief is not None and r.monotonic(self.now) < r.belief[1]
        ]


_REPLICA_STEP = st.tuples(  # reads and writes mostly; deaths, releases, clock jumps now and then
    st.sampled_from(["read", "write"] * 4 + ["release", "kill", "jump"]), st.integers(0, 2)
)
_WAIT = st.tuples(  # waits near the lease's duration find the races sooner
    st.just("wait"),
    st.sampled_from([1, 5_000, 10_000, 25_000, 29_999, 30_000, 31_000]) | st.integers(0, 45_000),
)
_RACE = [  # a renewal read before expiry, written after a takeover was read
    ("read", 0), ("write", 0), ("wait", 10_000), ("read", 0), ("wait", 25_000),
    ("read", 1), ("write", 0), ("write", 1),
]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(_REPLICA_STEP | _WAIT, max_size=60),
    st.tuples(*[st.floats(-1e6, 1e6, allow_nan=False)] * 3),
)
@example(_RACE, (0.0, 0.0, 0.0))
@example(_RACE, (0.0, 60.0, -60.0))  # clocks a minute apart
def test_never_two_replicas_believe_they_hold_the_lease(
    steps: list[tuple[str, int]], offsets: tuple[float, float, float]
) -> None:
    fleet = _Fleet([_Replica(name, offset) for name, offset in zip("abc", offsets, strict=True)])
    for op, arg in steps:
        if op == "wait":
            fleet.now += timedelta(milliseconds=arg)
        else:
            r = fleet.replicas[arg]
            if not r.alive:
                continue
            if op == "kill":
                r.alive = False
            else:
                getattr(fleet, op)(r)
        assert len(fleet.believers()) <= 1, (fleet.believers(), fleet.row)
        assert fleet.tokens == sorted(fleet.tokens)  # the fencing token never goes back
        if fleet.believers():  # the believer's lease is the row
            assert fleet.row is not None
            assert fleet.row.holder == fleet.believers()[0]

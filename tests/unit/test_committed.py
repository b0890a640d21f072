"""``kf.committed``: one encoding, and every malformed shape refused with a typed error."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.commands import route_commands
from protocol.committed import MAX_BYTES, MAX_MISSING_RANGES, decode_committed, encode_committed
from protocol.errors import (
    REJECT_REASONS,
    InvalidMessageError,
    MalformedJSONError,
    OversizeError,
    ProtocolError,
    UnknownSchemaError,
)

BOOT = "9f0c2a1e-boot"


def _raw(**fields: object) -> bytes:
    base: dict[str, object] = {"schema": "kf.committed", "version": 1, "boot_id": BOOT, "seq": 7}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@given(seq=st.integers(min_value=0, max_value=2**53))
def test_an_encoded_confirmation_decodes_to_the_same_stream_and_seq(seq: int) -> None:
    decoded = decode_committed(encode_committed(BOOT, seq))
    assert (decoded.boot_id, decoded.seq, decoded.ranges) == (BOOT, seq, ())
    assert decoded.version == 1  # nothing missing: what an agent reading only v1 takes


@st.composite
def _missing(draw: st.DrawFn) -> tuple[int, tuple[tuple[int, int], ...]]:
    """A seq and up to MAX_MISSING_RANGES ascending, disjoint ranges below it."""
    cuts = sorted(draw(st.sets(st.integers(1, 2**53 - 1), max_size=2 * MAX_MISSING_RANGES)))
    if len(cuts) % 2:
        cuts.append(cuts[-1])
    ranges = tuple(zip(cuts[::2], cuts[1::2], strict=True))
    seq = draw(st.integers((cuts[-1] + 1) if cuts else 0, 2**53))
    return seq, ranges


@given(_missing())
def test_a_confirmation_with_missing_ranges_is_version_2_and_fits_the_size_bound(
    case: tuple[int, tuple[tuple[int, int], ...]],
) -> None:
    seq, ranges = case
    payload = encode_committed(BOOT + "-" + "x" * 50, seq, ranges)
    decoded = decode_committed(payload)
    assert (decoded.seq, decoded.ranges) == (seq, ranges)
    assert decoded.version == (2 if ranges else 1)
    assert len(payload) <= MAX_BYTES


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", MalformedJSONError),
        (b"[1, 2]", UnknownSchemaError),
        (_raw(schema="kf.directive"), UnknownSchemaError),
        (_raw(version=3), InvalidMessageError),
        (_raw(missing=[[1, 2]]), InvalidMessageError),  # version 1 lists nothing missing
        (_raw(version=2, missing=[[3, 2]]), InvalidMessageError),
        (_raw(version=2, missing=[[0, 2]]), InvalidMessageError),
        (_raw(version=2, missing=[[3, 7]]), InvalidMessageError),  # 7 is committed
        (_raw(version=2, missing=[[4, 5], [1, 2]]), InvalidMessageError),
        (_raw(version=2, missing=[[1, 3], [3, 5]]), InvalidMessageError),
        (_raw(version=2, missing=[[1, 2, 3]]), InvalidMessageError),
        (_raw(version=2, missing=[[1, "2"]]), InvalidMessageError),
        (_raw(version=2, seq=100, missing=[[i, i] for i in range(1, 40, 2)]), InvalidMessageError),
        (_raw(seq=-1), InvalidMessageError),
        (_raw(seq=2**53 + 1), InvalidMessageError),
        (_raw(seq="7"), InvalidMessageError),
        (_raw(seq=7.0), InvalidMessageError),
        (_raw(seq=True), InvalidMessageError),
        (_raw(seq=...), InvalidMessageError),
        (_raw(boot_id="short"), InvalidMessageError),
        (_raw(boot_id="has space in it"), InvalidMessageError),
        (_raw(boot_id=...), InvalidMessageError),
        (_raw(extra=1), InvalidMessageError),
        (b'{"schema": "kf.committed", "schema": "kf.committed"}', MalformedJSONError),
        (b" " * (MAX_BYTES + 1), OversizeError),
    ],
)
def test_a_malformed_confirmation_is_refused_with_its_reason(
    payload: bytes, error: type[ProtocolError]
) -> None:
    with pytest.raises(error):
        decode_committed(payload)


@given(st.binary(max_size=300))
def test_decoding_any_bytes_raises_only_protocol_errors(payload: bytes) -> None:
    reason = None
    try:
        decode_committed(payload)
    except ProtocolError as exc:
        reason = exc.reason
    assert reason is None or reason in REJECT_REASONS


def test_encoding_refuses_a_value_the_decoder_would_refuse() -> None:
    with pytest.raises(InvalidMessageError):
        encode_committed("short", 1)


def test_the_cmd_router_hands_confirmations_to_the_sender_and_the_rest_to_updates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    committed: list[tuple[str, int, tuple[tuple[int, int], ...]]] = []
    directives: list[bytes] = []
    route = route_commands(
        lambda boot, seq, missing: committed.append((boot, seq, missing)),
        directives.append,
        terminal_id="T-1",
    )
    route(encode_committed(BOOT, 5))
    route(encode_committed(BOOT, 9, [(6, 7)]))
    route(b'{"schema": "kf.directive"}')
    with caplog.at_level(logging.WARNING):
        route(_raw(seq=-1))
        route(_raw(seq=-2))
    assert committed == [(BOOT, 5, ()), (BOOT, 9, ((6, 7),))]
    assert directives == [b'{"schema": "kf.directive"}']
    assert len([r for r in caplog.records if "kf.committed" in r.getMessage()]) == 1


def test_without_updates_only_confirmations_are_acted_on() -> None:
    committed: list[tuple[str, int]] = []
    route = route_commands(lambda b, s, _m: committed.append((b, s)), None, terminal_id="T-1")
    route(b'{"schema": "kf.directive"}')
    route(encode_committed(BOOT, 1))
    assert committed == [(BOOT, 1)]

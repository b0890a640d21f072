"""Signed withdrawals (``kf.withdraw`` v1) and the directive's optional ``attempt``.

A withdrawal is verified like a directive (size, envelope, key, signature, canonical body,
terminal, expiry) under its own PAE type, so neither signature passes as the other. The
wire format is rebuilt here from docs/protocol.md, as in tests/unit/test_directives.py.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import cmd_schema
from protocol.directives import (
    DIRECTIVE_REJECT_REASONS,
    PAYLOAD_TYPE,
    WITHDRAW_PAYLOAD_TYPE,
    DirectiveRejected,
    PinnedKey,
    Withdrawal,
    canonical_bytes,
    key_id_of,
    sign_directive,
    sign_withdrawal,
    verify_directive,
    verify_withdrawal,
)
from tests.unit.test_directives import TUF_TARGET, a_directive, tuf_lookup

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
PINNED = PinnedKey.from_public_key(KEY.public_key())


def a_withdrawal(**changes: Any) -> Withdrawal:
    fields: dict[str, Any] = {
        "terminal_id": "T-0001",
        "rollout_id": "R-7",
        "seq": 13,
        "target": "acme/kiosk-app/2.1.0.tar",
        "issued_at": NOW - timedelta(minutes=1),
        "expires_at": NOW + timedelta(hours=1),
    }
    fields.update(changes)
    return Withdrawal(**fields)


def reason_of(payload: bytes, *, terminal_id: str = "T-0001", now: datetime = NOW) -> str:
    with pytest.raises(DirectiveRejected) as caught:
        verify_withdrawal(payload, pinned_key=PINNED, terminal_id=terminal_id, now=now)
    assert caught.value.reason in DIRECTIVE_REJECT_REASONS
    return caught.value.reason


def pae(body: bytes) -> bytes:
    kind = WITHDRAW_PAYLOAD_TYPE.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def signed_body(body: bytes, key: Ed25519PrivateKey = KEY, **changes: Any) -> bytes:
    """An envelope as docs/protocol.md describes it around ``body``."""
    env: dict[str, Any] = {
        "schema": "kf.withdraw",
        "version": 1,
        "key_id": key_id_of(key.public_key()),
        "payload": base64.b64encode(body).decode(),
        "signature": base64.b64encode(key.sign(pae(body))).decode(),
        **changes,
    }
    return json.dumps(env).encode()


def test_a_signed_withdrawal_verifies_and_names_its_rollout_and_seq() -> None:
    withdrawal = a_withdrawal()
    payload = sign_withdrawal(withdrawal, KEY)
    assert cmd_schema(payload) == "kf.withdraw"
    assert verify_withdrawal(payload, pinned_key=PINNED, terminal_id="T-0001", now=NOW) == (
        withdrawal
    )
    # the documented encoding is the signed one
    assert verify_withdrawal(
        signed_body(canonical_bytes(withdrawal)), pinned_key=PINNED, terminal_id="T-0001", now=NOW
    ) == (withdrawal)


def test_a_withdrawal_for_another_terminal_or_expired_or_too_long_lived_is_refused() -> None:
    assert reason_of(sign_withdrawal(a_withdrawal(), KEY), terminal_id="T-0002") == (
        "wrong_terminal"
    )
    assert reason_of(sign_withdrawal(a_withdrawal(), KEY), now=NOW + timedelta(hours=1)) == (
        "expired"
    )
    long_lived = a_withdrawal(expires_at=NOW + timedelta(hours=25))
    assert reason_of(sign_withdrawal(long_lived, KEY)) == "window_invalid"
    reversed_times = a_withdrawal(issued_at=NOW + timedelta(hours=2))
    assert reason_of(sign_withdrawal(reversed_times, KEY)) == "window_invalid"


def test_a_withdrawal_signed_by_another_key_or_changed_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    assert reason_of(sign_withdrawal(a_withdrawal(), other)) == "unknown_key"
    body = canonical_bytes(a_withdrawal())
    forged = signed_body(body, signature=base64.b64encode(other.sign(pae(body))).decode())
    assert reason_of(forged) == "bad_signature"
    changed = signed_body(body)
    env = json.loads(changed)
    env["payload"] = base64.b64encode(body.replace(b'"R-7"', b'"R-8"')).decode()
    assert reason_of(json.dumps(env).encode()) == "bad_signature"


def test_a_directive_signature_never_passes_as_a_withdrawal_nor_the_reverse() -> None:
    """Distinct PAE types: the same key's signature over the same bytes does not carry over."""
    body = canonical_bytes(a_withdrawal())
    as_directive = json.loads(signed_body(body))
    kind = PAYLOAD_TYPE.encode()
    as_directive["signature"] = base64.b64encode(
        KEY.sign(b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body))
    ).decode()
    assert reason_of(json.dumps(as_directive).encode()) == "bad_signature"
    directive = sign_directive(a_directive(), KEY)
    assert reason_of(directive) == "malformed"  # schema kf.directive is not kf.withdraw
    with pytest.raises(DirectiveRejected) as caught:
        verify_directive(
            sign_withdrawal(a_withdrawal(), KEY),
            pinned_key=PINNED,
            terminal_id="T-0001",
            last_seq=0,
            now=NOW,
            target_info=tuf_lookup(TUF_TARGET),
        )
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 0},
        {"seq": "13"},
        {"rollout_id": "../R"},
        {"terminal_id": "T/1"},
        {"target": "/etc/passwd"},
        {"target": "acme/../x"},
        {"issued_at": "2026-12-03T12:00:00"},  # no offset
        {"extra": True},
        {"install_while_open": True},  # a directive's field, not a withdrawal's
    ],
)
def test_a_correctly_signed_but_malformed_withdrawal_is_refused(change: dict[str, Any]) -> None:
    data = json.loads(canonical_bytes(a_withdrawal()))
    data.update(change)
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert reason_of(signed_body(body)) == "malformed"


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b"{", b'{"schema": "kf.withdraw"}', b"x" * 5000],
)
def test_a_malformed_or_oversize_withdrawal_envelope_is_refused(payload: bytes) -> None:
    assert reason_of(payload) in {"malformed", "too_large"}


def test_a_not_canonically_encoded_withdrawal_is_refused() -> None:
    data = json.loads(canonical_bytes(a_withdrawal()))
    body = json.dumps(data, indent=1).encode()
    assert reason_of(signed_body(body)) == "malformed"


def test_cmd_schema_routes_by_the_claimed_schema_and_never_raises() -> None:
    assert cmd_schema(sign_directive(a_directive(), KEY)) == "kf.directive"
    for junk in (b"", b"\xff", b"[1]", b'{"schema": 1}', b"{"):
        assert cmd_schema(junk) is None


def test_a_directive_attempt_is_signed_and_one_without_encodes_as_before() -> None:
    with_attempt = a_directive(attempt=2)
    assert json.loads(canonical_bytes(with_attempt))["attempt"] == 2
    assert "attempt" not in json.loads(canonical_bytes(a_directive()))
    got = verify_directive(
        sign_directive(with_attempt, KEY),
        pinned_key=PINNED,
        terminal_id="T-0001",
        last_seq=0,
        now=NOW,
        target_info=tuf_lookup(TUF_TARGET),
    )
    assert got.attempt == 2


@pytest.mark.parametrize("attempt", [0, -1, "2", None])
def test_a_signed_directive_with_a_bad_or_explicit_null_attempt_is_malformed(
    attempt: object,
) -> None:
    """``null`` is refused too: a directive has one encoding, without the key."""
    data = json.loads(canonical_bytes(a_directive()))
    data["attempt"] = attempt
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    kind = PAYLOAD_TYPE.encode()
    env = {
        "schema": "kf.directive",
        "version": 1,
        "key_id": key_id_of(KEY.public_key()),
        "payload": base64.b64encode(body).decode(),
        "signature": base64.b64encode(
            KEY.sign(b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body))
        ).decode(),
    }
    with pytest.raises(DirectiveRejected) as caught:
        verify_directive(
            json.dumps(env).encode(),
            pinned_key=PINNED,
            terminal_id="T-0001",
            last_seq=0,
            now=NOW,
            target_info=tuf_lookup(TUF_TARGET),
        )
    assert caught.value.reason == "malformed"


def _outcome(payload: bytes) -> Withdrawal | str:
    """The withdrawal, or the refusal's reason (any other exception fails the test)."""
    try:
        return verify_withdrawal(payload, pinned_key=PINNED, terminal_id="T-0001", now=NOW)
    except DirectiveRejected as exc:
        return exc.reason


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_a_withdrawal_or_a_refusal(payload: bytes) -> None:
    outcome = _outcome(payload)
    assert isinstance(outcome, Withdrawal) or outcome in DIRECTIVE_REJECT_REASONS


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from([*sorted(a_withdrawal().model_dump()), "attempt", "x"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=40),
        max_size=8,
    )
)
def test_any_signed_body_is_a_withdrawal_or_a_refusal(fields: dict[str, Any]) -> None:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    outcome = _outcome(signed_body(body))
    assert isinstance(outcome, Withdrawal) or outcome in DIRECTIVE_REJECT_REASONS

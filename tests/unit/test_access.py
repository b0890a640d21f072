"""The pure role model and token rules (server.access): who may what, secrets, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.access import (
    Role,
    TokenRecord,
    allows,
    hash_secret,
    looks_like_secret,
    new_secret,
    parse_expiry,
    token_problem,
    validate_token_fields,
)
from server.errors import AccessError

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

LADDER = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]


@pytest.mark.parametrize("required", LADDER)
@pytest.mark.parametrize("granted", LADDER)
def test_admin_operator_viewer_is_a_ladder(granted: Role, required: Role) -> None:
    assert allows(granted, required) is (LADDER.index(granted) >= LADDER.index(required))


@pytest.mark.parametrize("role", LADDER)
def test_vendor_reaches_only_vendor_routes_and_nobody_else_does(role: Role) -> None:
    assert not allows(Role.VENDOR, role)
    assert not allows(role, Role.VENDOR)
    assert allows(Role.VENDOR, Role.VENDOR)


def test_secrets_are_prefixed_random_and_stored_as_their_sha256() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert a.startswith("kf_")
    assert len(a) == 3 + 43
    assert looks_like_secret(a)
    assert not looks_like_secret("Bearer " + a)
    assert not looks_like_secret("kf_short")
    assert hash_secret(a) != hash_secret(b)
    assert len(hash_secret(a)) == 64
    assert a not in hash_secret(a)


def _record(**kw: object) -> TokenRecord:
    values: dict[str, object] = {
        "name": "ops",
        "role": Role.OPERATOR,
        "vendor": None,
        "secret_hash": "0" * 64,
        "created_at": NOW,
        "created_by": "test",
    }
    values.update(kw)
    return TokenRecord(**values)  # type: ignore[arg-type]  # the test's own field mapping


def test_token_problem_names_unknown_revoked_and_expired_tokens() -> None:
    assert token_problem(None, NOW) == "unknown"
    assert token_problem(_record(), NOW) is None
    assert token_problem(_record(revoked_at=NOW), NOW) == "revoked"
    assert token_problem(_record(expires_at=NOW), NOW) == "expired"
    assert token_problem(_record(expires_at=NOW + timedelta(seconds=1)), NOW) is None


def test_a_vendor_name_is_required_for_and_only_for_a_vendor_token() -> None:
    validate_token_fields("acme-release", Role.VENDOR, "acme")
    validate_token_fields("ops", Role.OPERATOR, None)
    with pytest.raises(AccessError, match="needs --vendor") as missing:
        validate_token_fields("acme-release", Role.VENDOR, None)
    assert missing.value.code == "invalid_token"
    with pytest.raises(AccessError, match="only a vendor token"):
        validate_token_fields("ops", Role.OPERATOR, "acme")
    with pytest.raises(AccessError, match="token name"):
        validate_token_fields("bad name!", Role.VIEWER, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", NOW + timedelta(days=30)),
        ("12h", NOW + timedelta(hours=12)),
        ("90m", NOW + timedelta(minutes=90)),
        ("2w", NOW + timedelta(weeks=2)),
        ("2027-01-01T00:00:00+08:00", datetime(2026, 12, 31, 16, 0, tzinfo=UTC)),
        ("2027-01-01", datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_expiry_is_a_duration_from_now_or_an_iso_time(text: str, expected: datetime) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "30y", "soon", "2026-01-01", "0d", "9999-12-31T23:59:59-01:00"]
)
def test_an_expiry_that_is_not_a_future_time_is_refused(text: str) -> None:
    with pytest.raises(AccessError) as err:
        parse_expiry(text, NOW)
    assert err.value.code == "invalid_expiry"


@given(amount=st.integers(min_value=1, max_value=99_999), unit=st.sampled_from("mhdw"))
def test_every_duration_is_that_long_from_now(amount: int, unit: str) -> None:
    unit_name = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]
    assert parse_expiry(f"{amount}{unit}", NOW) == NOW + timedelta(**{unit_name: amount})


@given(st.text(max_size=40))
def test_any_text_is_a_future_utc_time_or_an_access_error(text: str) -> None:
    code: str | None
    try:
        at = parse_expiry(text, NOW)
    except AccessError as exc:
        code = exc.code
    else:
        code = None
        assert at > NOW
        assert at.utcoffset() == timedelta(0)
    assert code in (None, "invalid_expiry")

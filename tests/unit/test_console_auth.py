"""The console's pure decisions: password hashes, session expiry, the login budget, the
choice of language."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from server.access import Role
from server.console.i18n import choose_language
from server.console.login_limit import LoginLimiter, LoginRefusal
from server.console_auth import (
    TOUCH_EVERY,
    SessionRecord,
    UserRecord,
    csrf_matches,
    hash_password,
    hash_session_secret,
    new_session_secret,
    password_matches,
    session_problem,
    touch_due,
    validate_username,
)
from server.errors import AccessError

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)


def _user(**changes: object) -> UserRecord:
    values: dict[str, object] = {
        "username": "alice",
        "role": Role.VIEWER,
        "password_hash": "x",
        "created_at": T0,
        "created_by": "test",
    }
    values.update(changes)
    return UserRecord(**values)  # type: ignore[arg-type]


def _session(created: datetime = T0, seen: datetime = T0) -> SessionRecord:
    return SessionRecord("h", "alice", "csrf", created_at=created, last_seen_at=seen)


def test_a_password_is_stored_as_argon2id_and_only_the_right_one_matches() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert password_matches(stored, "correct horse battery")
    assert not password_matches(stored, "correct horse batterz")
    assert not password_matches(None, "correct horse battery")  # no such user
    assert not password_matches("not a hash", "correct horse battery")


def test_short_passwords_and_odd_usernames_are_refused() -> None:
    with pytest.raises(AccessError) as weak:
        hash_password("short")
    assert weak.value.code == "weak_password"
    with pytest.raises(AccessError) as odd:
        validate_username("Alice Smith")
    assert odd.value.code == "invalid_user"


def test_a_session_secret_is_random_and_only_its_hash_is_kept() -> None:
    first, second = new_session_secret(), new_session_secret()
    assert first != second
    assert len(first) >= 43
    assert hash_session_secret(first) != first
    assert len(hash_session_secret(first)) == 64


def test_a_session_ends_when_idle_too_old_or_its_user_is_disabled() -> None:
    def problem(session: SessionRecord | None, user: UserRecord | None, now: datetime) -> object:
        return session_problem(session, user, now, idle=IDLE, absolute=ABSOLUTE)

    used = T0 + timedelta(hours=11, minutes=50)
    assert problem(_session(), _user(), T0 + timedelta(minutes=29)) is None
    assert problem(_session(), _user(), T0 + IDLE) == "idle"
    assert problem(_session(seen=used), _user(), used + timedelta(minutes=5)) is None
    assert problem(_session(seen=used), _user(), T0 + ABSOLUTE) == "expired"
    assert problem(_session(), _user(disabled_at=T0), T0) == "disabled"
    assert problem(None, _user(), T0) == "unknown"
    assert problem(_session(), None, T0) == "unknown"


def test_a_tab_refreshing_itself_every_3_s_lets_the_session_end_when_idle() -> None:
    """The rollout page's automatic refresh is passive: replayed on the session's clock for
    the idle limit, it never moves the last use, so the session ends idle on time; a
    person's request in between moves it (at most once per ``TOUCH_EVERY``)."""
    session, now = _session(), T0
    while now < T0 + IDLE:
        assert session_problem(session, _user(), now, idle=IDLE, absolute=ABSOLUTE) is None
        if touch_due(session, now, passive=True):
            session = replace(session, last_seen_at=now)
        now += timedelta(seconds=3)
    assert session.last_seen_at == T0
    assert session_problem(session, _user(), now, idle=IDLE, absolute=ABSOLUTE) == "idle"
    assert not touch_due(_session(), T0 + TOUCH_EVERY - timedelta(seconds=1), passive=False)
    assert touch_due(_session(), T0 + TOUCH_EVERY, passive=False)
    assert not touch_due(_session(), T0 + IDLE, passive=True)


def test_the_csrf_token_must_be_sent_and_equal() -> None:
    assert csrf_matches("abc", "abc")
    assert not csrf_matches("abc", "abd")
    assert not csrf_matches("abc", None)


def test_the_login_budget_counts_per_username_and_per_source() -> None:
    now = [0.0]
    limiter = LoginLimiter(rate_per_s=0.5, burst=2, clock=lambda: now[0])
    assert limiter.admit("alice", "10.0.0.1") is None
    assert limiter.admit("ALICE", "10.0.0.2") is None
    assert limiter.admit("alice", "10.0.0.3") is LoginRefusal.USERNAME
    assert limiter.admit("bob", "10.0.0.1") is None
    assert limiter.admit("carol", "10.0.0.1") is LoginRefusal.SOURCE
    now[0] = 2.0  # one token back in every bucket
    assert limiter.admit("alice", "10.0.0.4") is None


@pytest.mark.parametrize(
    ("user", "cookie", "header", "expected"),
    [
        (None, None, "zh-CN,zh;q=0.9,en;q=0.8", "zh_CN"),
        (None, None, "zh", "zh_CN"),
        (None, None, "en-US,en;q=0.9", "en"),
        (None, None, "fr-FR, de;q=0.5", "en"),
        (None, None, "fr;q=1, zh-CN;q=0.4, en;q=0.3", "zh_CN"),
        (None, None, None, "en"),
        (None, "en", "zh-CN", "en"),
        ("zh_CN", "en", "en-US", "zh_CN"),
        ("xx", "yy", "zh-CN", "zh_CN"),
    ],
)
def test_the_language_is_the_users_then_the_cookies_then_the_browsers(
    user: str | None, cookie: str | None, header: str | None, expected: str
) -> None:
    assert choose_language(user, cookie, header) == expected

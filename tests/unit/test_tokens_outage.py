"""Through a database outage, a token the database confirmed shortly before is still accepted
(the fleet stays readable, as before tokens existed); nothing else is."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from server.access import Role, TokenRecord
from server.access_store import AccessStore
from server.errors import AccessError, StorageError
from server.tokens import OUTAGE_GRACE, Tokens
from tests.support.clocks import WallClock


class FlakyStore:
    """The three calls ``Tokens`` makes to authenticate and revoke; ``down`` fails reads."""

    def __init__(self) -> None:
        self.records: dict[str, TokenRecord] = {}
        self.down = False

    def create_token(self, record: TokenRecord) -> None:
        self.records[record.secret_hash] = record

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None:
        if self.down:
            raise StorageError("read token", "connection refused")
        return self.records.get(secret_hash)

    def touch_token(self, name: str, now: datetime) -> None:
        for h, r in self.records.items():
            if r.name == name:
                self.records[h] = replace(r, last_used_at=now)

    def revoke_token(self, name: str, now: datetime) -> TokenRecord:
        for h, r in self.records.items():
            if r.name == name:
                self.records[h] = replace(r, revoked_at=now)
                return self.records[h]
        raise AccessError("no_such_token", name)


@pytest.fixture
def setup() -> tuple[Tokens, FlakyStore, WallClock]:
    store, clock = FlakyStore(), WallClock(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
    return Tokens(cast(AccessStore, store), clock=clock), store, clock


def test_a_token_verified_before_the_outage_is_accepted_within_the_grace(
    setup: tuple[Tokens, FlakyStore, WallClock],
) -> None:
    tokens, store, clock = setup
    _, secret = tokens.create(name="ops", role=Role.OPERATOR, created_by="t")
    assert tokens.authenticate(secret).role is Role.OPERATOR  # confirmed by the database
    store.down = True
    clock.now += OUTAGE_GRACE - timedelta(seconds=1)
    assert tokens.authenticate(secret).name == "ops"
    clock.now += timedelta(seconds=2)
    with pytest.raises(StorageError):
        tokens.authenticate(secret)


def test_during_an_outage_an_unseen_or_revoked_token_is_not_accepted(
    setup: tuple[Tokens, FlakyStore, WallClock],
) -> None:
    tokens, store, _clock = setup
    _, unseen = tokens.create(name="unseen", role=Role.ADMIN, created_by="t")
    _, revoked = tokens.create(name="gone", role=Role.ADMIN, created_by="t")
    tokens.authenticate(revoked)
    tokens.revoke("gone")
    store.down = True
    with pytest.raises(StorageError):
        tokens.authenticate(unseen)
    with pytest.raises(StorageError):
        tokens.authenticate(revoked)


def test_during_an_outage_a_remembered_token_still_expires(
    setup: tuple[Tokens, FlakyStore, WallClock],
) -> None:
    tokens, store, clock = setup
    _, secret = tokens.create(
        name="short", role=Role.VIEWER, created_by="t", expires_at=clock.now + timedelta(minutes=1)
    )
    tokens.authenticate(secret)
    store.down = True
    clock.now += timedelta(minutes=2)
    with pytest.raises(AccessError, match="expired"):
        tokens.authenticate(secret)

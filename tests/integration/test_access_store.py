"""Tokens and audit entries on SQLite and PostgreSQL (server.access_store, server.tokens):
hashed secrets, unique names, revocation, last use at most once a minute, the audit log's
filters, cursor and retention, and a durable sink that never fails the action."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from server.access import Role, hash_secret
from server.access_store import AccessStore, AuditFilter, DatabaseAudit
from server.audit import AuditEntry, AuditResult, MemoryAudit
from server.errors import AccessError, InvalidCursorError
from server.storage import Storage
from server.tokens import Tokens
from tests.support.clocks import T0, WallClock

pytestmark = pytest.mark.integration


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    s = Storage(database_url, sqlite_busy_timeout_s=0.5)
    s.open()
    try:
        yield s
    finally:
        s.close()


def test_a_token_is_stored_by_the_hash_of_its_secret_only(storage: Storage) -> None:
    store = AccessStore(storage)
    record, secret = Tokens(store).create(name="ops", role=Role.OPERATOR, created_by="cli:root")
    with storage.engine.connect() as conn:
        stored = [str(v) for row in conn.execute(sa.text("SELECT * FROM api_token")) for v in row]
    assert secret not in " ".join(stored)
    assert hash_secret(secret) in stored
    assert store.token_by_hash(hash_secret(secret)) == record
    assert store.token("ops") == record


def test_names_are_unique_and_a_vendor_token_keeps_its_vendor(storage: Storage) -> None:
    tokens = Tokens(AccessStore(storage))
    tokens.create(name="acme-ci", role=Role.VENDOR, vendor="acme", created_by="test")
    with pytest.raises(AccessError) as taken:
        tokens.create(name="acme-ci", role=Role.VIEWER, created_by="test")
    assert taken.value.code == "token_exists"
    [record] = tokens.every()
    assert (record.role, record.vendor) == (Role.VENDOR, "acme")


def test_authentication_refuses_revoked_and_expired_tokens_and_notes_last_use_once_a_minute(
    storage: Storage,
) -> None:
    clock = WallClock()
    tokens = Tokens(AccessStore(storage), clock=clock)
    _r, secret = tokens.create(name="ops", role=Role.OPERATOR, created_by="test")
    _r, short = tokens.create(
        name="short", role=Role.VIEWER, created_by="test", expires_at=T0 + timedelta(hours=1)
    )
    assert tokens.authenticate(secret).role is Role.OPERATOR
    assert tokens.every()[0].last_used_at == T0
    clock.now = T0 + timedelta(seconds=30)
    tokens.authenticate(secret)
    assert tokens.every()[0].last_used_at == T0  # not rewritten within the minute
    clock.now = T0 + timedelta(seconds=61)
    tokens.authenticate(secret)
    assert tokens.every()[0].last_used_at == clock.now

    clock.now = T0 + timedelta(hours=1)
    with pytest.raises(AccessError) as expired:
        tokens.authenticate(short)
    assert expired.value.code == "expired"
    revoked = tokens.revoke("ops")
    assert revoked.revoked_at == clock.now
    clock.now += timedelta(days=1)
    assert tokens.revoke("ops").revoked_at == revoked.revoked_at  # the first revocation stays
    with pytest.raises(AccessError) as refused:
        tokens.authenticate(secret)
    assert refused.value.code == "revoked"
    with pytest.raises(AccessError) as unknown:
        tokens.revoke("nobody")
    assert unknown.value.code == "no_such_token"


def _entry(at: datetime, actor: str, action: str, result: AuditResult, target: str) -> AuditEntry:
    return AuditEntry(
        at=at, actor=actor, action=action, result=result, target=target, source="10.0.0.7"
    )


def test_audit_entries_are_filtered_paged_newest_first_and_pruned_by_age(
    storage: Storage,
) -> None:
    store = AccessStore(storage)
    for n in range(6):
        store.add_audit(
            _entry(
                T0 + timedelta(days=n),
                "token:admin" if n % 2 else "cli:root",
                "token.create" if n < 4 else "token.revoke",
                AuditResult.DENIED if n == 5 else AuditResult.OK,
                f"t{n}",
            )
        )
    first = store.audit(AuditFilter(), limit=4)
    assert [e.target for e in first.items] == ["t5", "t4", "t3", "t2"]
    assert first.next_cursor is not None
    rest = store.audit(AuditFilter(), limit=4, cursor=first.next_cursor)
    assert ([e.target for e in rest.items], rest.next_cursor) == (["t1", "t0"], None)
    assert rest.items[0] == _entry(
        T0 + timedelta(days=1), "token:admin", "token.create", AuditResult.OK, "t1"
    )

    def targets(**kw: object) -> list[str | None]:
        return [e.target for e in store.audit(AuditFilter(**kw), limit=100).items]  # type: ignore[arg-type]

    assert targets(actor="cli:root") == ["t4", "t2", "t0"]
    assert targets(action="token.revoke") == ["t5", "t4"]
    assert targets(result=AuditResult.DENIED) == ["t5"]
    assert targets(target="t3") == ["t3"]
    assert targets(since=T0 + timedelta(days=2), until=T0 + timedelta(days=4)) == ["t3", "t2"]
    with pytest.raises(InvalidCursorError):
        store.audit(AuditFilter(), limit=4, cursor="bm90LWFuLWlk")  # "not-an-id"

    pruned = store.prune_audit(older_than=timedelta(days=3), now=T0 + timedelta(days=5), chunk=2)
    assert pruned == 2
    assert targets() == ["t5", "t4", "t3", "t2"]


def test_long_audit_fields_are_cut_not_refused(storage: Storage) -> None:
    store = AccessStore(storage)
    store.add_audit(_entry(T0, "token:" + "a" * 300, "x.y", AuditResult.FAILED, "b" * 300))
    [entry] = store.audit(AuditFilter(), limit=1).items
    assert len(entry.actor) == 128
    assert entry.target is not None
    assert entry.target.endswith("\u2026")


def test_the_durable_sink_counts_and_logs_a_storage_failure_instead_of_raising(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    sink = DatabaseAudit(AccessStore(storage), registry)
    sink.record(_entry(T0, "cli:root", "token.create", AuditResult.OK, "ok-before"))
    with storage.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE audit_entry"))
    sink.record(_entry(T0, "cli:root", "token.revoke", AuditResult.OK, "lost"))
    assert registry.get_sample_value("kioskfleet_audit_write_failures_total") == 1.0
    assert "audit entry not stored" in caplog.text
    assert "token.revoke by cli:root on lost" in caplog.text


def test_revoked_and_expired_tokens_are_pruned_after_the_retention_live_ones_stay(
    storage: Storage,
) -> None:
    clock = WallClock()
    store = AccessStore(storage)
    tokens = Tokens(store, clock=clock)

    def viewer(name: str, *, revoked: bool = False, expires_in_days: float | None = None) -> None:
        expires = None if expires_in_days is None else clock.now + timedelta(days=expires_in_days)
        tokens.create(name=name, role=Role.VIEWER, created_by="test", expires_at=expires)
        if revoked:
            tokens.revoke(name)

    viewer("revoked-long-ago", revoked=True)  # at T0; the first token: never pruned
    viewer("expired-long-ago", expires_in_days=1)  # expired at T0 + 1 day
    clock.now = T0 + timedelta(days=20)
    viewer("revoked-lately", revoked=True)  # at T0 + 20 days
    viewer("expires-later", expires_in_days=40)
    viewer("never-expires")

    assert store.prune_tokens(older_than=timedelta(days=10), now=T0 + timedelta(days=21)) == 1
    assert sorted(t.name for t in store.tokens()) == [
        "expires-later",
        "never-expires",
        "revoked-lately",
        "revoked-long-ago",  # the first token ever made stays (see the next test)
    ]
    assert store.prune_tokens(older_than=timedelta(days=10), now=T0 + timedelta(days=21)) == 0


def test_pruning_never_empties_the_token_table_so_no_new_bootstrap_token_appears(
    storage: Storage,
) -> None:
    store = AccessStore(storage)
    tokens = Tokens(store)
    assert tokens.bootstrap(MemoryAudit(), stderr=io.StringIO(), token_file=None)
    tokens.revoke("bootstrap")
    later = datetime.now(UTC) + timedelta(days=365)

    assert store.prune_tokens(older_than=timedelta(days=1), now=later) == 0
    assert store.count_tokens() == 1
    printed = io.StringIO()
    assert not tokens.bootstrap(MemoryAudit(), stderr=printed, token_file=None)
    assert printed.getvalue() == ""

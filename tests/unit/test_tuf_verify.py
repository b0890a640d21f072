"""The pure trust decisions on uploaded metadata (server/tuf_verify.py) and the re-signing
schedule, without HTTP: the cases the end-to-end tests do not reach."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuf.api.metadata import Delegations, Metadata, Root, Targets

from firmware_manifests.keys import generate_key
from server.errors import ReleaseRejectedError
from server.tuf_verify import verify_root, verify_targets, verify_vendor_role
from tests.support.tuf_world import TufWorld, online_repository, release_manifest

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TufWorld:
    return TufWorld.create(tmp_path_factory.mktemp("world"))


def _root(world: TufWorld, n: int = 0) -> Metadata[Root]:
    return Metadata.from_bytes(world.roots()[n])


def _online(world: TufWorld) -> dict[str, str]:
    return {
        "snapshot": world.online_snapshot.public_key.keyid,
        "timestamp": world.online_timestamp.public_key.keyid,
    }


def _code(exc: pytest.ExceptionInfo[ReleaseRejectedError]) -> str:
    return exc.value.code


def test_the_first_root_is_accepted_when_it_lists_the_servers_online_keys(world: TufWorld) -> None:
    md = verify_root(None, world.roots()[0], NOW, online_keyids=_online(world))
    assert md.signed.version == 1
    with pytest.raises(ReleaseRejectedError) as caught:
        verify_root(None, world.roots()[0], NOW, online_keyids={"snapshot": "f" * 64})
    assert _code(caught) == "online_keys_mismatch"


def test_a_root_that_skips_a_version_is_refused(tmp_path: Path) -> None:
    world = TufWorld.create(tmp_path)
    world.operator.resign("root")
    world.operator.resign("root")
    with pytest.raises(ReleaseRejectedError) as caught:
        verify_root(_root(world), world.roots()[2], NOW, online_keyids=_online(world))
    assert _code(caught) == "version_not_higher"
    assert "version 2" in caught.value.message


def test_targets_signed_by_a_key_root_does_not_list_are_refused(world: TufWorld) -> None:
    md: Metadata[Targets] = Metadata.from_bytes(world.targets_bytes())
    md.signed.version += 1
    md.signatures.clear()
    md.sign(generate_key())
    with pytest.raises(ReleaseRejectedError) as caught:
        verify_targets(_root(world).signed, None, md.to_bytes(), NOW)
    assert _code(caught) == "foreign_key"


def test_a_role_of_a_vendor_not_delegated_is_refused(world: TufWorld) -> None:
    top: Metadata[Targets] = Metadata.from_bytes(world.targets_bytes())
    role = Metadata(Targets(expires=NOW + timedelta(days=1)))
    role.sign(generate_key())
    with pytest.raises(ReleaseRejectedError) as caught:
        verify_vendor_role(
            top.signed, "ghost", None, role.to_bytes(), NOW,
            token_vendor=None, counters={}, uploaded=lambda _p: None,
        )  # fmt: skip
    assert _code(caught) == "unknown_vendor"


def test_a_vendor_role_that_delegates_further_is_refused(world: TufWorld) -> None:
    top: Metadata[Targets] = Metadata.from_bytes(world.targets_bytes())
    role = Metadata(Targets(expires=NOW + timedelta(days=1)))
    role.signed.delegations = Delegations(keys={}, roles={})
    for key in world.vendor_keys["acme"]:
        role.sign(key, append=True)
    with pytest.raises(ReleaseRejectedError) as caught:
        verify_vendor_role(
            top.signed, "acme", None, role.to_bytes(), NOW,
            token_vendor=None, counters={}, uploaded=lambda _p: None,
        )  # fmt: skip
    assert _code(caught) == "delegations_not_allowed"


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_malformed_never_a_crash(data: bytes) -> None:
    with pytest.raises(ReleaseRejectedError) as caught:
        verify_targets(Root(), None, data, NOW)
    assert _code(caught) == "malformed"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.anyio
async def test_the_timestamp_is_re_signed_once_half_its_lifetime_is_gone(tmp_path: Path) -> None:
    world = TufWorld.create(tmp_path / "world")
    now = [NOW]
    repo = online_repository(world, tmp_path / "server", lambda: now[0])
    first = repo.expiries()["timestamp"]
    now[0] = NOW + timedelta(hours=11)
    assert repo.refresh_online() == []
    now[0] = NOW + timedelta(hours=13)
    assert repo.refresh_online() == ["timestamp"]
    assert repo.expiries()["timestamp"] == (now[0] + timedelta(hours=24)).replace(microsecond=0)
    assert repo.expiries()["timestamp"] > first
    now[0] = NOW + timedelta(days=4)
    assert repo.refresh_online() == ["snapshot", "timestamp"]
    artifact = world.artifact("a.bin")
    world.sign("acme", artifact, release_manifest(1), now=now[0])
    await repo.store.append("acme", "a.bin", 0, _chunks(artifact.read_bytes()))
    repo.publish_vendor_role(
        "acme", world.role_file("acme").read_bytes(), token_vendor=None, actor="t"
    )
    assert set(repo.expiries()) == {"root", "targets", "snapshot", "timestamp", "vendors"}

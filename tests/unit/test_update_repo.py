"""The operator's offline repository tool: each command writes metadata that verifies
against the root it must, and refuses what it cannot sign."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Targets

from firmware_manifests.keys import generate_key, load_signer
from kioskfleet.update_repo import DIRECTIVE_KEY_TARGET, OperatorRepo, RepoToolError


def _root(repo: OperatorRepo, version: int) -> Metadata[Root]:
    return Metadata.from_file(str(repo.metadata_dir / f"{version}.root.json"))


def _verify_chain(repo: OperatorRepo) -> None:
    versions = repo.root_versions()
    for old, new in itertools.pairwise(versions):
        md = _root(repo, new)
        _root(repo, old).signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    targets = repo.targets()
    repo.root().signed.verify_delegate(Targets.type, targets.signed_bytes, targets.signatures)


def test_init_writes_a_self_signed_root_with_thresholds_and_consistent_snapshots(
    tmp_path: Path,
) -> None:
    repo = OperatorRepo.init(tmp_path, root_keys=3, root_threshold=2)
    root = repo.root().signed
    assert root.consistent_snapshot is True
    assert (len(root.roles["root"].keyids), root.roles["root"].threshold) == (3, 2)
    assert (tmp_path / "online" / "timestamp.key").stat().st_mode & 0o777 == 0o600
    _verify_chain(repo)
    with pytest.raises(RepoToolError, match="already holds"):
        OperatorRepo.init(tmp_path)
    with pytest.raises(RepoToolError, match="threshold"):
        OperatorRepo.init(tmp_path / "other", root_keys=1, root_threshold=2)


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_rotating_a_roles_keys_is_signed_by_the_old_and_new_root(tmp_path: Path, role: str) -> None:
    repo = OperatorRepo.init(tmp_path)
    old = set(repo.root().signed.roles[role].keyids)
    repo.rotate_key(role)
    assert repo.root_versions() == [1, 2]
    new = set(repo.root().signed.roles[role].keyids)
    assert new
    assert not new & old
    _verify_chain(repo)
    if role in ("snapshot", "timestamp"):
        assert load_signer(tmp_path / "online" / f"{role}.key").public_key.keyid in new
    assert any((tmp_path / "keys" / "retired").iterdir())


def test_a_root_change_without_enough_root_keys_writes_nothing(tmp_path: Path) -> None:
    repo = OperatorRepo.init(tmp_path, root_keys=2, root_threshold=2)
    next(iter((tmp_path / "keys" / "root").glob("*.key"))).unlink()  # one key holder absent
    with pytest.raises(RepoToolError, match="threshold"):
        repo.resign("root")
    assert repo.root_versions() == [1]


def test_vendors_are_added_replaced_and_revoked(tmp_path: Path) -> None:
    repo = OperatorRepo.init(tmp_path)
    first, second = generate_key().public_key, generate_key().public_key
    repo.add_vendor("acme", [first], threshold=1, paths=["acme/*"])
    repo.add_vendor("acme", [second], threshold=1, paths=["acme/*"])
    delegations = repo.targets().signed.delegations
    assert delegations is not None
    assert delegations.roles is not None
    assert delegations.roles["acme"].keyids == [second.keyid]
    assert set(delegations.keys) == {second.keyid}  # the replaced key is gone
    repo.revoke_vendor("acme")
    after = repo.targets().signed.delegations
    assert after is not None
    assert not after.roles
    assert repo.targets().signed.version == 4
    with pytest.raises(RepoToolError, match="must start with"):
        repo.add_vendor("acme", [first], threshold=1, paths=["other/*"])
    with pytest.raises(RepoToolError, match="vendor name"):
        repo.add_vendor("_pins", [first], threshold=1, paths=["_pins/*"])
    with pytest.raises(RepoToolError, match="no vendor"):
        repo.revoke_vendor("acme")
    _verify_chain(repo)


def test_the_directive_key_is_pinned_as_a_target_holding_the_key(tmp_path: Path) -> None:
    repo = OperatorRepo.init(tmp_path)
    key = generate_key().public_key
    repo.pin_directive_key(key)
    pinned = repo.targets().signed.targets[DIRECTIVE_KEY_TARGET]
    assert pinned.custom["key"]["keyid"] == key.keyid
    assert pinned.custom["key"]["keyval"] == key.keyval

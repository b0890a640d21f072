"""agent.tuf_reasons: python-tuf's refusals named precisely, from real signed metadata."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import (
    BadVersionNumberError,
    DownloadLengthMismatchError,
    EqualVersionNumberError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    RepositoryError,
    UnsignedMetadataError,
)
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Targets
from tuf.api.serialization.json import JSONSerializer

from agent.tuf_reasons import metadata_reason, role_of_url, signer_reason
from firmware_manifests.keys import generate_key

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


def _delegator(vendor_key: CryptoSigner) -> bytes:
    top = Metadata(Targets(expires=EXPIRES))
    top.signed.delegations = Delegations(keys={}, roles={})
    role = DelegatedRole("acme", [], 1, False, paths=["acme/*"])
    assert top.signed.delegations.roles is not None
    top.signed.delegations.roles["acme"] = role
    top.signed.add_key(vendor_key.public_key, "acme")
    top.sign(generate_key())
    return top.to_bytes(JSONSerializer())


def _role(signer: CryptoSigner) -> bytes:
    role = Metadata(Targets(version=2, expires=EXPIRES + timedelta(days=1)))
    role.sign(signer)
    return role.to_bytes(JSONSerializer())


def test_a_role_signed_by_its_delegated_key_but_edited_is_tampered() -> None:
    vendor = generate_key()
    edited = _role(vendor).replace(b'"version": 2', b'"version": 3')
    assert signer_reason(edited, _delegator(vendor), "acme") == "metadata_tampered"


def test_a_role_signed_only_by_a_key_nobody_delegated_is_an_unknown_key() -> None:
    delegator = _delegator(generate_key())
    assert signer_reason(_role(generate_key()), delegator, "acme") == "metadata_unknown_key"


def test_unreadable_bytes_name_no_signer() -> None:
    assert signer_reason(b"{", b"{}", "acme") == "tuf_error"


@pytest.mark.parametrize(
    ("url", "role"),
    [
        ("http://h/tuf/metadata/timestamp.json", "timestamp"),
        ("http://h/tuf/metadata/12.snapshot.json", "snapshot"),
        ("http://h/tuf/metadata/3.acme.json", "acme"),
        ("http://h/tuf/metadata/4.a%2Fb.json", "a/b"),
    ],
)
def test_the_role_is_read_from_the_metadata_url(url: str, role: str) -> None:
    assert role_of_url(url) == role


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ExpiredMetadataError("x"), "metadata_expired"),
        (BadVersionNumberError("x"), "metadata_rollback"),
        (EqualVersionNumberError("x"), "metadata_rollback"),
        (LengthOrHashMismatchError("x"), "metadata_mismatch"),
        (DownloadLengthMismatchError("x"), "metadata_mismatch"),
        (UnsignedMetadataError("x"), "tuf_error"),  # without the bytes nothing tells which
        (RepositoryError("x"), "tuf_error"),
    ],
)
def test_each_tuf_refusal_has_its_reason(exc: Exception, reason: str) -> None:
    assert metadata_reason(exc, role=None, role_bytes=None, delegator_bytes=None) == reason

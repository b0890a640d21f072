"""Which precise reason a python-tuf refusal is: exception and metadata bytes in, a code out.

Pure (no files, no network): the updater hands it the exception python-tuf raised, the
bytes of the metadata file fetched last (the one python-tuf was verifying, see
``agent.tuf_fetcher.ResumingFetcher.last_metadata``) and the delegator's verified bytes
from its cache. python-tuf raises one ``UnsignedMetadataError`` both for a role whose
content was edited after signing and for a role signed by a key nobody delegated; the
signatures' key ids tell them apart: a signature by a listed key that does not verify
means the bytes changed (``metadata_tampered``), signatures only by keys the delegator
does not list mean a foreign signer (``metadata_unknown_key``).

Never: decide trust. python-tuf already refused; this only names why.
"""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import unquote

from tuf.api.exceptions import (
    BadVersionNumberError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)

__all__ = ["TOP_LEVEL_ROLES", "metadata_reason", "role_of_url", "signer_reason"]

TOP_LEVEL_ROLES: Final = frozenset({"root", "timestamp", "snapshot", "targets"})


def role_of_url(url: str) -> str:
    """The role a metadata URL names: ``.../3.acme.json`` and ``.../timestamp.json``."""
    name = unquote(url.rsplit("/", 1)[-1]).removesuffix(".json")
    version, dot, rest = name.partition(".")
    return rest if dot and version.isdigit() else name


def _keyids(role_bytes: bytes) -> set[str]:
    signatures = json.loads(role_bytes).get("signatures", [])
    return {s["keyid"] for s in signatures if isinstance(s, dict) and "keyid" in s}


def _listed_keyids(delegator_bytes: bytes, role: str) -> set[str]:
    signed = json.loads(delegator_bytes)["signed"]
    if role in TOP_LEVEL_ROLES:
        return set(signed["roles"][role]["keyids"])
    for delegated in signed.get("delegations", {}).get("roles", []):
        if delegated.get("name") == role:
            return set(delegated["keyids"])
    return set()


def signer_reason(role_bytes: bytes, delegator_bytes: bytes, role: str) -> str:
    """``metadata_unknown_key`` if no signature is by a key the delegator lists for
    ``role``, else ``metadata_tampered``; ``tuf_error`` when the bytes cannot be read."""
    try:
        signers, listed = _keyids(role_bytes), _listed_keyids(delegator_bytes, role)
    except (ValueError, KeyError, TypeError, AttributeError):
        return "tuf_error"
    return "metadata_tampered" if signers & listed else "metadata_unknown_key"


def metadata_reason(
    exc: Exception, *, role: str | None, role_bytes: bytes | None, delegator_bytes: bytes | None
) -> str:
    """The reason code for python-tuf's refusal ``exc`` while refreshing or looking up."""
    if isinstance(exc, UnsignedMetadataError):
        if role is None or role_bytes is None or delegator_bytes is None:
            return "tuf_error"
        return signer_reason(role_bytes, delegator_bytes, role)
    if isinstance(exc, ExpiredMetadataError):
        return "metadata_expired"
    if isinstance(exc, BadVersionNumberError):
        return "metadata_rollback"
    if isinstance(exc, LengthOrHashMismatchError | DownloadLengthMismatchError):
        return "metadata_mismatch"
    return "tuf_error"

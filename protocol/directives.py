"""Signed per-terminal update directives on the ``cmd`` channel: model, signing, verification.

A directive tells one terminal "install this TUF target, in this window". It is signed
by the server's online directive key (Ed25519); the operator pins that key in the
offline-signed top-level targets (target ``_pins/directive-key.pub``, ``custom.key``).
A directive only *selects* among targets TUF already verifies: the agent refuses it
unless its target path, length and sha256 equal what TUF verified for that path, so a
directive can never make a terminal install bytes no vendor signed.

Wire format (``kf.directive`` v1, at most ``DirectiveLimits.max_bytes``)::

    {"schema": "kf.directive", "version": 1,
     "key_id": "<64 hex: TUF key id of the directive key>",
     "payload": "<base64 of the directive's canonical JSON bytes>",
     "signature": "<base64 of Ed25519 over PAE(PAYLOAD_TYPE, payload bytes)>"}

PAE is DSSE's pre-authentication encoding (``DSSEv1 <len> <type> <len> <body>``), so a
signature made by this key for anything else can never pass as a directive.

``kf.withdraw`` v1 (same envelope, ``"schema": "kf.withdraw"``, PAE type
``WITHDRAW_PAYLOAD_TYPE``): a ``Withdrawal`` asks one terminal to drop the directives of a
rollout with a lower seq that have not started installing (docs/protocol.md, seq semantics).

Public interface (pure: no I/O, no clock, no logging; ``now`` is an argument):

- ``Directive``, ``DirectiveTarget``: the signed content (pydantic, strict, frozen); its
  optional ``attempt`` is left out of the encoding when None.
- ``Withdrawal``, ``SignedWithdrawal``, ``sign_withdrawal``, ``verify_withdrawal`` (the
  directive's checks and reasons without seq and target).
- ``protocol.codec.cmd_schema(payload)``: the schema a ``cmd`` payload claims, unverified,
  for routing (there, so an agent that routes only ``kf.committed`` needs no cryptography).
- ``SignedDirective``: the envelope above.
- ``canonical_bytes(directive) -> bytes``: the one encoding that is signed.
- ``sign_directive(directive, private_key) -> bytes``: the envelope's wire bytes.
- ``verify_directive(payload, *, pinned_key, terminal_id, last_seq, now, target_info)``
  -> ``Directive``; raises ``DirectiveRejected`` (``.reason`` in ``DIRECTIVE_REJECT_REASONS``)
  and never any other exception for any ``payload``. ``target_info`` is a lookup
  ``path -> TargetInfo | None``; the agent passes ``tuf.ngclient.Updater.get_targetinfo``
  after ``refresh()`` (exceptions of the lookup itself propagate).
- ``PinnedKey``, ``pinned_key_from_custom(custom) -> PinnedKey`` (raises
  ``DirectiveKeyPinError``): the key read from the pin target's ``custom``.
- ``DirectiveLimits``: size and time limits (defaults are the documented ones).

Check order (the first failing check names the reason): size (``too_large``), envelope
shape (``malformed``), key id (``unknown_key``), signature (``bad_signature``), directive
shape and canonical encoding (``malformed``), terminal (``wrong_terminal``), ``seq``
(``replayed``), expiry (``expired``), times (``window_invalid``), target
(``target_unknown`` when TUF lists no such path, ``target_mismatch`` when its length or
sha256 differ). Nothing inside the payload is parsed before its signature is checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import AfterValidator, AwareDatetime, Field, ValidationError

from protocol.codec import loads_strict
from protocol.directive_reasons import DIRECTIVE_REJECT_REASONS, RejectReason
from protocol.errors import MalformedJSONError
from protocol.messages import _EARLIEST, _LATEST, _Strict
from protocol.topics import TERMINAL_ID_PATTERN

__all__ = [
    "DIRECTIVE_REJECT_REASONS",
    "PAYLOAD_TYPE",
    "WITHDRAW_PAYLOAD_TYPE",
    "Directive",
    "DirectiveKeyPinError",
    "DirectiveLimits",
    "DirectiveRejected",
    "DirectiveTarget",
    "PinnedKey",
    "SignedDirective",
    "SignedWithdrawal",
    "TargetInfo",
    "Withdrawal",
    "canonical_bytes",
    "key_id_of",
    "pinned_key_from_custom",
    "sign_directive",
    "sign_withdrawal",
    "verify_directive",
    "verify_withdrawal",
]

PAYLOAD_TYPE: Final = "application/vnd.kioskfleet.directive+json;version=1"
WITHDRAW_PAYLOAD_TYPE: Final = "application/vnd.kioskfleet.withdraw+json;version=1"


class DirectiveRejected(Exception):  # noqa: N818 -- the name the issue and callers use
    """A directive the agent must refuse. ``reason`` is one of ``DIRECTIVE_REJECT_REASONS``."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class DirectiveKeyPinError(ValueError):
    """The pin target's ``custom`` does not hold a well-formed Ed25519 key dict."""


@dataclass(frozen=True, slots=True)
class DirectiveLimits:
    """What the agent accepts. ``max_lifetime`` keeps directives short-lived."""

    max_bytes: int = 4096
    max_lifetime: timedelta = timedelta(hours=24)  # expires_at - issued_at, and - now
    max_window: timedelta = timedelta(days=31)  # not_after - not_before


# --- the signed content ---------------------------------------------------------------------

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A TUF target path as vendors publish them (``<vendor>/...``): no leading '/', no '_'
# first (``_pins/`` is never installable); every segment starts with a letter or digit, so
# none is empty, '.' or '..'.
_TARGET_PATH = r"^[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*$"
_HEX64 = r"^[0-9a-f]{64}$"


def _plausible(value: datetime) -> datetime:
    if not _EARLIEST <= value <= _LATEST:
        raise ValueError("outside 2000..2200")
    return value


# Strict JSON mode takes only RFC 3339 strings with an offset; 2000..2200 keeps every
# conversion to UTC in range.
Timestamp = Annotated[AwareDatetime, AfterValidator(_plausible)]


class DirectiveTarget(_Strict):
    """The TUF target to install, as TUF must have verified it."""

    path: Annotated[str, Field(max_length=255, pattern=_TARGET_PATH)]
    length: Annotated[int, Field(ge=1, le=2**53)]
    sha256: Annotated[str, Field(pattern=_HEX64)]


class Directive(_Strict):
    """One signed instruction to one terminal. Times are RFC 3339 with an offset."""

    terminal_id: Annotated[str, Field(pattern=TERMINAL_ID_PATTERN)]
    rollout_id: Annotated[str, Field(pattern=_ID)]
    seq: Annotated[int, Field(ge=1, le=2**53)]
    target: DirectiveTarget
    issued_at: Timestamp
    expires_at: Timestamp
    not_before: Timestamp
    not_after: Timestamp
    install_while_open: bool = False
    # The planner's attempt number for this terminal (``Notify.attempt``); the agent echoes
    # it in every ``kf.update``. Optional: a directive without it encodes as before.
    attempt: Annotated[int, Field(ge=1, le=2**53)] | None = None


class Withdrawal(_Strict):
    """A signed request to one terminal: drop every directive of ``rollout_id`` with a seq
    below ``seq`` that has not started installing (after a cancel or abort).

    ``seq`` comes from the same per-terminal counter as directives, so it is above the seq
    of every directive the server sent that terminal before; a withdrawal never touches a
    directive signed after it. It does not move the terminal's accepted seq."""

    terminal_id: Annotated[str, Field(pattern=TERMINAL_ID_PATTERN)]
    rollout_id: Annotated[str, Field(pattern=_ID)]
    seq: Annotated[int, Field(ge=1, le=2**53)]
    target: Annotated[str, Field(max_length=255, pattern=_TARGET_PATH)]
    issued_at: Timestamp
    expires_at: Timestamp


class SignedDirective(_Strict):
    """The envelope on the ``cmd`` channel."""

    schema_: Literal["kf.directive"] = Field(alias="schema")
    version: Literal[1]
    key_id: Annotated[str, Field(pattern=_HEX64)]
    payload: Annotated[str, Field(min_length=4, max_length=4096)]
    signature: Annotated[str, Field(min_length=88, max_length=88)]  # base64 of 64 bytes


class SignedWithdrawal(_Strict):
    """The envelope of a ``Withdrawal`` on the ``cmd`` channel (``kf.withdraw`` v1)."""

    schema_: Literal["kf.withdraw"] = Field(alias="schema")
    version: Literal[1]
    key_id: Annotated[str, Field(pattern=_HEX64)]
    payload: Annotated[str, Field(min_length=4, max_length=4096)]
    signature: Annotated[str, Field(min_length=88, max_length=88)]


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def canonical_bytes(directive: Directive | Withdrawal) -> bytes:
    """The one signed encoding: sorted keys, no spaces, ASCII, UTC ``Z`` times; a directive's
    ``attempt`` is left out when None (so directives signed before it existed still verify)."""
    data: dict[str, Any] = directive.model_dump(mode="python", by_alias=True)
    for key in ("issued_at", "expires_at", "not_before", "not_after"):
        if key in data:
            data[key] = _utc(data[key])
    if data.get("attempt", 0) is None:
        del data["attempt"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _pae(body: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict standard base64; only the canonical spelling is accepted. Raises ValueError."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64 ({exc})") from None
    if _b64(data) != text:
        raise ValueError("not canonical base64")
    return data


# --- keys ------------------------------------------------------------------------------------


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The TUF key id (securesystemslib's default) of an Ed25519 public key."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    return _key_id(raw)


def _key_id(public_hex: str) -> str:
    # encode_canonical of this ASCII-only dict equals sorted compact json.dumps.
    key = {"keytype": "ed25519", "keyval": {"public": public_hex}, "scheme": "ed25519"}
    return hashlib.sha256(
        json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """The directive key the operator's signed targets pin."""

    key_id: str
    public_key: Ed25519PublicKey

    @classmethod
    def from_public_key(cls, public_key: Ed25519PublicKey) -> PinnedKey:
        return cls(key_id_of(public_key), public_key)


def pinned_key_from_custom(custom: Mapping[str, Any]) -> PinnedKey:
    """The key in a pin target's ``custom`` (``{"key": {keyid, keytype, scheme, keyval}}``).

    The caller takes ``custom`` from TUF (``get_targetinfo("_pins/directive-key.pub")``
    after ``refresh()``), so the operator's signature already vouches for it. Raises
    DirectiveKeyPinError if it is not one Ed25519 key whose key id matches its value.
    """
    key = custom.get("key") if isinstance(custom, Mapping) else None
    if not isinstance(key, Mapping):
        raise DirectiveKeyPinError("custom has no key object")
    if key.get("keytype") != "ed25519" or key.get("scheme") != "ed25519":
        raise DirectiveKeyPinError("the pinned key is not an ed25519 key")
    keyval = key.get("keyval")
    public_hex = keyval.get("public") if isinstance(keyval, Mapping) else None
    if not isinstance(public_hex, str) or len(public_hex) != 64:
        raise DirectiveKeyPinError("keyval.public is not 32 bytes of hex")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError:
        raise DirectiveKeyPinError("keyval.public is not an Ed25519 public key") from None
    pinned = PinnedKey.from_public_key(public_key)
    if key.get("keyid") != pinned.key_id:
        raise DirectiveKeyPinError("keyid does not match the key")
    return pinned


# --- sign and verify -------------------------------------------------------------------------


def sign_directive(directive: Directive, private_key: Ed25519PrivateKey) -> bytes:
    """The wire bytes of ``directive`` signed with ``private_key``.

    Signs what it is given: the caller (the rollout engine) chooses times and seq.
    """
    return _sign("kf.directive", PAYLOAD_TYPE, canonical_bytes(directive), private_key)


def sign_withdrawal(withdrawal: Withdrawal, private_key: Ed25519PrivateKey) -> bytes:
    """The wire bytes (``kf.withdraw``) of ``withdrawal`` signed with ``private_key``."""
    return _sign("kf.withdraw", WITHDRAW_PAYLOAD_TYPE, canonical_bytes(withdrawal), private_key)


def _sign(schema: str, payload_type: str, body: bytes, private_key: Ed25519PrivateKey) -> bytes:
    envelope = {
        "schema": schema,
        "version": 1,
        "key_id": key_id_of(private_key.public_key()),
        "payload": _b64(body),
        "signature": _b64(private_key.sign(_pae(body, payload_type))),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


class TargetInfo(Protocol):
    """What TUF verified for a target (``tuf.api.metadata.TargetFile`` has this shape)."""

    @property
    def path(self) -> str: ...

    @property
    def length(self) -> int: ...

    @property
    def hashes(self) -> Mapping[str, str]: ...


def _short(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{loc}: {err['msg']}"[:200]


_E = TypeVar("_E", SignedDirective, SignedWithdrawal)
_B = TypeVar("_B", Directive, Withdrawal)


def _open_envelope(payload: bytes, limits: DirectiveLimits, model: type[_E]) -> _E:
    if len(payload) > limits.max_bytes:
        raise DirectiveRejected("too_large", f"{len(payload)} bytes exceed {limits.max_bytes}")
    try:
        raw = loads_strict(payload)
    except MalformedJSONError as exc:
        raise DirectiveRejected("malformed", exc.message) from None
    if not isinstance(raw, dict):
        raise DirectiveRejected("malformed", "not a JSON object")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise DirectiveRejected("malformed", _short(exc)) from None


def _authentic_body(
    envelope: SignedDirective | SignedWithdrawal, pinned_key: PinnedKey, payload_type: str
) -> bytes:
    if envelope.key_id != pinned_key.key_id:
        raise DirectiveRejected("unknown_key", f"key {envelope.key_id[:16]}... is not pinned")
    try:
        body, signature = _unb64(envelope.payload), _unb64(envelope.signature)
    except ValueError as exc:
        raise DirectiveRejected("malformed", str(exc)) from None
    try:
        pinned_key.public_key.verify(signature, _pae(body, payload_type))
    except InvalidSignature:
        raise DirectiveRejected("bad_signature", "the signature does not verify") from None
    return body


def _parse_body(body: bytes, model: type[_B]) -> _B:
    try:
        loads_strict(body)
        directive = model.model_validate_json(body)
    except MalformedJSONError as exc:
        raise DirectiveRejected("malformed", exc.message) from None
    except ValidationError as exc:
        raise DirectiveRejected("malformed", _short(exc)) from None
    if canonical_bytes(directive) != body:
        raise DirectiveRejected("malformed", "the directive is not canonically encoded")
    return directive


def _check_times(directive: Directive, now: datetime, limits: DirectiveLimits) -> None:
    d = directive
    if now >= d.expires_at:
        raise DirectiveRejected("expired", f"expired at {_utc(d.expires_at)}")
    if not d.issued_at < d.expires_at:
        raise DirectiveRejected("window_invalid", "expires_at is not after issued_at")
    lifetime = max(d.expires_at - d.issued_at, d.expires_at - now)
    if lifetime > limits.max_lifetime:
        raise DirectiveRejected("window_invalid", f"valid for longer than {limits.max_lifetime}")
    if not d.not_before < d.not_after:
        raise DirectiveRejected("window_invalid", "not_after is not after not_before")
    if d.not_after - d.not_before > limits.max_window:
        raise DirectiveRejected("window_invalid", f"window longer than {limits.max_window}")
    if now >= d.not_after:
        raise DirectiveRejected("window_invalid", "the install window is over")


def _check_target(directive: Directive, target_info: Callable[[str], TargetInfo | None]) -> None:
    wanted = directive.target
    verified = target_info(wanted.path)
    if verified is None:
        raise DirectiveRejected("target_unknown", f"TUF knows no target {wanted.path!r}")
    if verified.path != wanted.path:
        raise DirectiveRejected("target_mismatch", "TUF returned another target path")
    if verified.length != wanted.length:
        raise DirectiveRejected("target_mismatch", "length differs from TUF's")
    if verified.hashes.get("sha256") != wanted.sha256:
        raise DirectiveRejected("target_mismatch", "sha256 differs from TUF's")


def verify_directive(
    payload: bytes,
    *,
    pinned_key: PinnedKey,
    terminal_id: str,
    last_seq: int,
    now: datetime,
    target_info: Callable[[str], TargetInfo | None],
    limits: DirectiveLimits | None = None,
) -> Directive:
    """The directive in ``payload`` if this terminal may act on it now.

    ``last_seq`` is the highest seq this terminal accepted (0 if none); ``now`` must be
    timezone-aware (ValueError otherwise). Raises DirectiveRejected (its ``reason`` says
    which check failed), never another exception for any ``payload``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    limits = limits or DirectiveLimits()
    envelope = _open_envelope(payload, limits, SignedDirective)
    directive = _parse_body(_authentic_body(envelope, pinned_key, PAYLOAD_TYPE), Directive)
    if directive.terminal_id != terminal_id:
        raise DirectiveRejected("wrong_terminal", f"for {directive.terminal_id!r}")
    if directive.seq <= last_seq:
        raise DirectiveRejected("replayed", f"seq {directive.seq} <= accepted {last_seq}")
    _check_times(directive, now, limits)
    _check_target(directive, target_info)
    return directive


def verify_withdrawal(
    payload: bytes,
    *,
    pinned_key: PinnedKey,
    terminal_id: str,
    now: datetime,
    limits: DirectiveLimits | None = None,
) -> Withdrawal:
    """The withdrawal in ``payload`` if it is signed by ``pinned_key``, for ``terminal_id``
    and not expired. Same checks and reasons as ``verify_directive``, in the same order,
    without ``seq`` (a withdrawal is idempotent) and target (it installs nothing). Raises
    DirectiveRejected, never another exception for any ``payload``; ValueError for a naive
    ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    limits = limits or DirectiveLimits()
    envelope = _open_envelope(payload, limits, SignedWithdrawal)
    withdrawal = _parse_body(
        _authentic_body(envelope, pinned_key, WITHDRAW_PAYLOAD_TYPE), Withdrawal
    )
    if withdrawal.terminal_id != terminal_id:
        raise DirectiveRejected("wrong_terminal", f"for {withdrawal.terminal_id!r}")
    w = withdrawal
    if now >= w.expires_at:
        raise DirectiveRejected("expired", f"expired at {_utc(w.expires_at)}")
    if not w.issued_at < w.expires_at:
        raise DirectiveRejected("window_invalid", "expires_at is not after issued_at")
    if max(w.expires_at - w.issued_at, w.expires_at - now) > limits.max_lifetime:
        raise DirectiveRejected("window_invalid", f"valid for longer than {limits.max_lifetime}")
    return withdrawal

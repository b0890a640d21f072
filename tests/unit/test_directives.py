"""Signed directives: a good one round-trips, every bad one is refused with its reason.

Refusals come out as DirectiveRejected with a reason from DIRECTIVE_REJECT_REASONS and
never as another exception, whatever the bytes. The wire format is rebuilt here from
its documentation (PAE, base64, canonical JSON) rather than from the module's helpers,
so these tests also prove docs/protocol.md.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import TargetFile

from firmware_manifests.keys import public_key_dict
from kioskfleet.update_repo import DIRECTIVE_KEY_TARGET, OperatorRepo
from protocol.directives import (
    DIRECTIVE_REJECT_REASONS,
    PAYLOAD_TYPE,
    Directive,
    DirectiveKeyPinError,
    DirectiveLimits,
    DirectiveRejected,
    DirectiveTarget,
    PinnedKey,
    TargetInfo,
    canonical_bytes,
    key_id_of,
    pinned_key_from_custom,
    sign_directive,
    verify_directive,
)
from protocol.update_status import (
    FINAL_STATES,
    UpdateBody,
    UpdateMessage,
    UpdateReason,
    UpdateState,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ARTIFACT = b"the vendor's signed bundle"
PATH = "acme/kiosk-app/2.1.0.tar"
SERVER_KEY = Ed25519PrivateKey.generate()
PINNED = PinnedKey.from_public_key(SERVER_KEY.public_key())
TUF_TARGET = TargetFile.from_data(PATH, ARTIFACT, ["sha256"])


def tuf_lookup(*targets: TargetInfo) -> Callable[[str], TargetInfo | None]:
    """What ``Updater.get_targetinfo`` answers after a refresh, for these targets."""
    return {t.path: t for t in targets}.get


def a_directive(**changes: Any) -> Directive:
    fields: dict[str, Any] = {
        "terminal_id": "T-0001",
        "rollout_id": "R-7",
        "seq": 12,
        "target": DirectiveTarget(
            path=PATH, length=len(ARTIFACT), sha256=TUF_TARGET.hashes["sha256"]
        ),
        "issued_at": NOW - timedelta(minutes=5),
        "expires_at": NOW + timedelta(hours=2),
        "not_before": NOW,
        "not_after": NOW + timedelta(days=2),
        "install_while_open": False,
    }
    fields.update(changes)
    return Directive(**fields)


def verify(payload: bytes, **changes: Any) -> Directive:
    args: dict[str, Any] = {
        "pinned_key": PINNED,
        "terminal_id": "T-0001",
        "last_seq": 11,
        "now": NOW,
        "target_info": tuf_lookup(TUF_TARGET),
    }
    args.update(changes)
    return verify_directive(payload, **args)


def reason_of(payload: bytes, **changes: Any) -> str:
    with pytest.raises(DirectiveRejected) as caught:
        verify(payload, **changes)
    assert caught.value.reason in DIRECTIVE_REJECT_REASONS
    return caught.value.reason


# --- the wire format, rebuilt from its documentation ------------------------------------------


def pae(body: bytes) -> bytes:
    kind = PAYLOAD_TYPE.encode()
    return b"DSSEv1 " + b" ".join([str(len(kind)).encode(), kind, str(len(body)).encode(), body])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def envelope(body: bytes, key: Ed25519PrivateKey = SERVER_KEY, **changes: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "schema": "kf.directive",
        "version": 1,
        "key_id": key_id_of(key.public_key()),
        "payload": b64(body),
        "signature": b64(key.sign(pae(body))),
    }
    env.update(changes)
    return env


def wire(env: dict[str, Any]) -> bytes:
    return json.dumps(env).encode()


def signed_body(body: dict[str, Any] | bytes) -> bytes:
    """A correctly signed envelope around any body (to reach the checks after the signature)."""
    raw = body if isinstance(body, bytes) else canonical_json(body)
    return wire(envelope(raw))


def canonical_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def body_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(canonical_bytes(a_directive()))
    data.update(changes)
    return data


# --- what goes through ------------------------------------------------------------------------


def test_a_signed_directive_round_trips() -> None:
    directive = a_directive(install_while_open=True)
    assert verify(sign_directive(directive, SERVER_KEY)) == directive


def test_the_canonical_encoding_is_sorted_compact_json_with_utc_z_times() -> None:
    body = canonical_bytes(a_directive())
    assert body == canonical_json(json.loads(body))
    assert b'"expires_at":"2026-12-03T14:00:00Z"' in body


def test_the_envelope_is_the_documented_wire_format() -> None:
    directive = a_directive()
    env = json.loads(sign_directive(directive, SERVER_KEY))
    assert set(env) == {"schema", "version", "key_id", "payload", "signature"}
    body = base64.b64decode(env["payload"])
    assert body == canonical_bytes(directive)
    SERVER_KEY.public_key().verify(base64.b64decode(env["signature"]), pae(body))
    assert verify(wire(envelope(body))) == directive


def test_a_tuf_targetfile_is_what_the_target_check_compares_against() -> None:
    assert verify(sign_directive(a_directive(), SERVER_KEY), target_info=tuf_lookup(TUF_TARGET))


def test_the_key_id_is_tufs_key_id_of_the_same_key() -> None:
    assert PINNED.key_id == SSlibKey.from_crypto(SERVER_KEY.public_key()).keyid


# --- the pinned key ---------------------------------------------------------------------------


def test_the_key_pinned_by_the_operators_targets_is_read_from_its_custom(tmp_path: Path) -> None:
    repo = OperatorRepo.init(tmp_path, root_keys=1, root_threshold=1)
    repo.pin_directive_key(SSlibKey.from_crypto(SERVER_KEY.public_key()))
    pin = repo.targets().signed.targets[DIRECTIVE_KEY_TARGET]
    pinned = pinned_key_from_custom(pin.custom)
    assert pinned.key_id == PINNED.key_id
    assert verify(sign_directive(a_directive(), SERVER_KEY), pinned_key=pinned)


def _custom(**changes: Any) -> dict[str, Any]:
    key = public_key_dict(SSlibKey.from_crypto(SERVER_KEY.public_key()))
    key.update(changes)
    return {"key": key}


@pytest.mark.parametrize(
    "custom",
    [
        {},
        {"key": "not a dict"},
        _custom(keytype="rsa"),
        _custom(scheme="ed25519-ph"),
        _custom(keyval={}),
        _custom(keyval={"public": "zz" * 32}),
        _custom(keyval={"public": "ab" * 31}),
        _custom(keyid="0" * 64),
    ],
    ids=["no-key", "key-not-object", "rsa", "scheme", "no-public", "not-hex", "short", "keyid"],
)
def test_a_malformed_pin_is_refused(custom: dict[str, Any]) -> None:
    with pytest.raises(DirectiveKeyPinError):
        pinned_key_from_custom(custom)


# --- one test per reason ----------------------------------------------------------------------


def test_a_directive_signed_by_another_key_is_refused_as_unknown_key() -> None:
    other = Ed25519PrivateKey.generate()
    assert reason_of(sign_directive(a_directive(), other)) == "unknown_key"


def test_another_keys_signature_under_the_pinned_key_id_is_a_bad_signature() -> None:
    body = canonical_bytes(a_directive())
    forged = envelope(body, Ed25519PrivateKey.generate(), key_id=PINNED.key_id)
    assert reason_of(wire(forged)) == "bad_signature"


def test_a_changed_payload_is_a_bad_signature() -> None:
    env = json.loads(sign_directive(a_directive(), SERVER_KEY))
    tampered = base64.b64decode(env["payload"]).replace(b'"seq":12', b'"seq":99')
    env["payload"] = b64(tampered)
    assert reason_of(wire(env)) == "bad_signature"


def test_a_signature_over_the_bare_payload_without_pae_is_a_bad_signature() -> None:
    body = canonical_bytes(a_directive())
    assert reason_of(wire(envelope(body, signature=b64(SERVER_KEY.sign(body))))) == (
        "bad_signature"
    )


def test_a_directive_for_another_terminal_is_refused() -> None:
    assert reason_of(sign_directive(a_directive(terminal_id="T-0002"), SERVER_KEY)) == (
        "wrong_terminal"
    )


@pytest.mark.parametrize("seq", [1, 11])
def test_an_old_or_repeated_seq_is_refused_as_replayed(seq: int) -> None:
    assert reason_of(sign_directive(a_directive(seq=seq), SERVER_KEY)) == "replayed"


def test_the_same_directive_twice_is_replayed_the_second_time() -> None:
    payload = sign_directive(a_directive(), SERVER_KEY)
    accepted = verify(payload)
    assert reason_of(payload, last_seq=accepted.seq) == "replayed"


@pytest.mark.parametrize("after", [timedelta(0), timedelta(hours=3)])
def test_an_expired_directive_is_refused(after: timedelta) -> None:
    payload = sign_directive(a_directive(), SERVER_KEY)
    assert reason_of(payload, now=NOW + timedelta(hours=2) + after) == "expired"


@pytest.mark.parametrize(
    "changes",
    [
        {"not_after": NOW},  # window empty
        {"not_before": NOW + timedelta(days=3)},  # window reversed
        {"not_before": NOW - timedelta(days=2), "not_after": NOW},  # window over
        {"not_after": NOW + timedelta(days=40)},  # window too long
        {"issued_at": NOW + timedelta(hours=3)},  # issued after it expires
        {"issued_at": NOW - timedelta(days=2)},  # lifetime longer than 24 h
        {"issued_at": NOW, "expires_at": NOW + timedelta(hours=25)},  # expiry far ahead
    ],
    ids=["empty", "reversed", "over", "too-long", "issued-late", "long-lived", "far-expiry"],
)
def test_inconsistent_times_are_refused_as_window_invalid(changes: dict[str, Any]) -> None:
    assert reason_of(sign_directive(a_directive(**changes), SERVER_KEY)) == "window_invalid"


def test_an_issue_time_in_the_future_is_refused_by_the_lifetime_bound() -> None:
    directive = a_directive(
        issued_at=NOW + timedelta(hours=23), expires_at=NOW + timedelta(hours=25)
    )
    assert reason_of(sign_directive(directive, SERVER_KEY)) == "window_invalid"


def test_the_limits_are_a_config_object() -> None:
    payload = sign_directive(a_directive(), SERVER_KEY)
    limits = DirectiveLimits(max_lifetime=timedelta(hours=1))
    assert reason_of(payload, limits=limits) == "window_invalid"
    assert reason_of(payload, limits=DirectiveLimits(max_bytes=100)) == "too_large"


class _Target:
    """Any object shaped like TUF's TargetFile will do as what TUF verified."""

    def __init__(self, path: str, length: int, hashes: dict[str, str]) -> None:
        self.path, self.length, self.hashes = path, length, hashes


@pytest.mark.parametrize(
    "lookup",
    [
        tuf_lookup(TargetFile.from_data(PATH, ARTIFACT + b"!", ["sha256"])),  # length
        tuf_lookup(TargetFile.from_data(PATH, b"X" * len(ARTIFACT), ["sha256"])),  # hash
        tuf_lookup(TargetFile.from_data(PATH, ARTIFACT, ["sha512"])),  # no sha256
        lambda _path: TargetFile.from_data("acme/other.tar", ARTIFACT, ["sha256"]),
    ],
    ids=["length", "sha256", "no-sha256", "other-path"],
)
def test_a_target_that_differs_from_what_tuf_verified_is_refused(
    lookup: Callable[[str], TargetInfo | None],
) -> None:
    payload = sign_directive(a_directive(), SERVER_KEY)
    assert reason_of(payload, target_info=lookup) == "target_mismatch"


def test_a_target_tuf_does_not_know_is_refused_as_unknown() -> None:
    payload = sign_directive(a_directive(), SERVER_KEY)
    assert reason_of(payload, target_info=tuf_lookup()) == "target_unknown"


def test_the_largest_valid_directive_fits_the_size_limit() -> None:
    longest = a_directive(
        terminal_id="T" * 64,
        rollout_id="R" * 64,
        seq=2**53,
        target=DirectiveTarget(path="a" * 255, length=2**53, sha256="f" * 64),
        not_before=NOW + timedelta(microseconds=123456),
        not_after=NOW + timedelta(days=1, microseconds=654321),
    )
    payload = sign_directive(longest, SERVER_KEY)
    assert len(payload) <= DirectiveLimits().max_bytes
    tuf = _Target("a" * 255, 2**53, {"sha256": "f" * 64})
    assert verify(payload, terminal_id="T" * 64, target_info=tuf_lookup(tuf)) == longest


def test_an_oversize_payload_is_refused_before_parsing() -> None:
    assert reason_of(b"{" * 5000) == "too_large"


# --- every malformed shape --------------------------------------------------------------------

GOOD = json.loads(sign_directive(a_directive(), SERVER_KEY))


def _env(**changes: Any) -> bytes:
    env = dict(GOOD)
    env.update(changes)
    return wire({k: v for k, v in env.items() if v is not _DROP})


_DROP = object()

MALFORMED_ENVELOPES: dict[str, bytes] = {
    "empty": b"",
    "not-utf8": b"\xff\xfe{}",
    "not-json": b"directive",
    "array": b"[]",
    "string": b'"kf.directive"',
    "nan": b'{"schema": NaN}',
    "duplicate-key": b'{"schema":"kf.directive","schema":"kf.directive"}',
    "too-deep": b"[" * 40 + b"]" * 40,
    "no-schema": _env(schema=_DROP),
    "other-schema": _env(schema="kf.report"),
    "version-2": _env(version=2),
    "version-string": _env(version="1"),
    "extra-field": _env(extra=1),
    "no-signature": _env(signature=_DROP),
    "no-payload": _env(payload=_DROP),
    "no-key-id": _env(key_id=_DROP),
    "key-id-upper": _env(key_id=GOOD["key_id"].upper()),
    "key-id-short": _env(key_id="ab" * 16),
    "signature-not-b64": _env(signature="!" * 88),
    "signature-short": _env(signature=b64(b"x" * 32)),
    "payload-not-b64": _env(payload="@@@@"),
    "payload-unpadded": _env(payload=GOOD["payload"].rstrip("=") + "A"),
    "payload-number": _env(payload=12),
    "payload-object": _env(payload={"seq": 1}),
}


@pytest.mark.parametrize("payload", MALFORMED_ENVELOPES.values(), ids=MALFORMED_ENVELOPES.keys())
def test_a_malformed_envelope_is_refused(payload: bytes) -> None:
    assert reason_of(payload) == "malformed"


def _without(key: str) -> dict[str, Any]:
    data = body_dict()
    del data[key]
    return data


SIGNED_BUT_MALFORMED: dict[str, bytes] = {
    "not-json": signed_body(b"not json"),
    "array": signed_body(b"[]"),
    "duplicate-key": signed_body(b'{"seq":12,"seq":13}'),
    "non-canonical-spacing": signed_body(json.dumps(body_dict()).encode()),
    "non-canonical-offset": signed_body(body_dict(not_before="2026-12-03T13:00:00+01:00")),
    "non-canonical-fraction": signed_body(body_dict(not_before="2026-12-03T12:00:00.1Z")),
    "extra-field": signed_body(body_dict(command="rm -rf /")),
    "no-terminal": signed_body(_without("terminal_id")),
    "no-target": signed_body(_without("target")),
    "no-expiry": signed_body(_without("expires_at")),
    "seq-zero": signed_body(body_dict(seq=0)),
    "seq-negative": signed_body(body_dict(seq=-1)),
    "seq-string": signed_body(body_dict(seq="13")),
    "seq-float": signed_body(body_dict(seq=13.0)),
    "seq-huge": signed_body(body_dict(seq=2**64)),
    "bool-as-int": signed_body(body_dict(install_while_open=1)),
    "naive-time": signed_body(body_dict(expires_at="2026-12-03T14:00:00")),
    "number-time": signed_body(body_dict(expires_at=1796306400)),
    "year-1": signed_body(body_dict(not_before="0001-01-01T00:00:00+01:00")),
    "year-2300": signed_body(body_dict(not_after="2300-01-01T00:00:00Z")),
    "terminal-slash": signed_body(body_dict(terminal_id="T-0001/cmd")),
    "terminal-wildcard": signed_body(body_dict(terminal_id="+")),
    "rollout-long": signed_body(body_dict(rollout_id="R" * 65)),
    "rollout-control": signed_body(body_dict(rollout_id="R\n7")),
}
BAD_TARGETS: dict[str, dict[str, Any]] = {
    "path-traversal": {"path": "acme/../../etc/passwd"},
    "path-absolute": {"path": "/etc/passwd"},
    "path-pins": {"path": "_pins/directive-key.pub"},
    "path-empty-segment": {"path": "acme//app.tar"},
    "path-trailing-slash": {"path": "acme/app/"},
    "path-too-long": {"path": "a" * 256},
    "length-zero": {"length": 0},
    "length-string": {"length": "26"},
    "sha256-upper": {"sha256": "A" * 64},
    "sha256-short": {"sha256": "a" * 63},
    "target-extra": {"sha512": "a" * 128},
}
for _name, _target in BAD_TARGETS.items():
    SIGNED_BUT_MALFORMED[_name] = signed_body(
        body_dict(target={**body_dict()["target"], **_target})
    )


@pytest.mark.parametrize("payload", SIGNED_BUT_MALFORMED.values(), ids=SIGNED_BUT_MALFORMED.keys())
def test_a_correctly_signed_but_malformed_directive_is_refused(payload: bytes) -> None:
    assert reason_of(payload) == "malformed"


def test_a_naive_clock_is_a_programming_error_not_a_refusal() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(sign_directive(a_directive(), SERVER_KEY), now=NOW.replace(tzinfo=None))


# --- properties -------------------------------------------------------------------------------


def _outcome(payload: bytes) -> Directive | str:
    try:
        return verify(payload)
    except DirectiveRejected as exc:
        reason: str = exc.reason
    assert reason in DIRECTIVE_REJECT_REASONS
    return reason


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_any_bytes_are_a_directive_or_a_refusal(payload: bytes) -> None:
    assert isinstance(_outcome(payload), Directive | str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(GOOD), "x"]), json_values, max_size=6))
def test_any_envelope_shaped_object_is_a_directive_or_a_refusal(env: dict[str, Any]) -> None:
    assert isinstance(_outcome(wire({**GOOD, **env})), Directive | str)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(body_dict()), "x"]), json_values, max_size=6))
def test_any_signed_body_is_a_directive_or_a_refusal(changes: dict[str, Any]) -> None:
    outcome = _outcome(signed_body(body_dict(**changes)))
    assert outcome != "bad_signature"  # signed correctly: refused, if at all, for its content


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.integers(min_value=12, max_value=2**53),
    rollout=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"),
    terminal=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"),
    lifetime=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(hours=20)),
    window=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=30)),
    open_=st.booleans(),
)
def test_every_valid_directive_round_trips_through_sign_and_verify(
    seq: int, rollout: str, terminal: str, lifetime: timedelta, window: timedelta, open_: bool
) -> None:
    directive = a_directive(
        seq=seq,
        rollout_id=rollout,
        terminal_id=terminal,
        issued_at=NOW,
        expires_at=NOW + lifetime,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW - timedelta(hours=1) + window + timedelta(hours=1),
        install_while_open=open_,
    )
    assert verify(sign_directive(directive, SERVER_KEY), terminal_id=terminal) == directive


# --- the update channel's status message ------------------------------------------------------

ISSUE_STATES = [
    "pending",
    "notified",
    "downloading",
    "downloaded",
    "waiting_window",
    "installing",
    "health_check",
    "succeeded",
    "failed",
    "rolled_back",
    "rejected",
    "timed_out",
    "canceled",
    "already_installed",
]


def test_the_update_states_are_exactly_the_issues_per_terminal_states() -> None:
    assert [s.value for s in UpdateState] == ISSUE_STATES
    assert set(UpdateState) >= FINAL_STATES


def test_every_directive_refusal_is_an_update_reason() -> None:
    assert set(DIRECTIVE_REJECT_REASONS) <= {r.value for r in UpdateReason}


def _update(**body: Any) -> bytes:
    message = {
        "schema": "kf.update",
        "version": 1,
        "terminal_id": "T-0001",
        "boot_id": "3f2b8c1e-aaaa",
        "seq": 43,
        "sent_at": "2026-12-03T12:00:00Z",
        "body": {"rollout_id": "R-7", "directive_seq": 12, "target": PATH, **body},
    }
    return json.dumps(message).encode()


@pytest.mark.parametrize("state", [s for s in UpdateState])
def test_an_update_status_round_trips_in_every_state(state: UpdateState) -> None:
    reason = {"reason": "health_check_failed"}
    message = UpdateMessage.model_validate_json(_update(state=state.value, **reason))
    assert message.body.state is state
    again = message.model_dump_json(by_alias=True, exclude_none=True).encode()
    assert UpdateMessage.model_validate_json(again) == message


def test_a_refusal_of_an_unreadable_directive_reports_no_rollout_or_target() -> None:
    body = UpdateBody(directive_seq=0, state=UpdateState.REJECTED, reason=UpdateReason("malformed"))
    assert body.rollout_id is None
    assert body.target is None


@pytest.mark.parametrize(
    "body",
    [
        {"state": "rejected"},  # a refusal without a reason
        {"state": "failed"},
        {"state": "rolled_back"},
        {"state": "exploded"},
        {"state": "failed", "reason": "because"},
        {"state": "succeeded", "directive_seq": -1},
        {"state": "succeeded", "directive_seq": "12"},
        {"state": "succeeded", "target": "a\nb"},
        {"state": "succeeded", "detail": "x" * 257},
        {"state": "succeeded", "extra": 1},
    ],
    ids=[
        "rejected-no-reason",
        "failed-no-reason",
        "rolled-back-no-reason",
        "unknown-state",
        "unknown-reason",
        "negative-seq",
        "string-seq",
        "control-in-target",
        "long-detail",
        "extra-field",
    ],
)
def test_a_malformed_update_status_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        UpdateMessage.model_validate_json(_update(**body))

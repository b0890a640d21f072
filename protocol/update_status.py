"""The ``update`` channel: one terminal's progress on one directive (``kf.update`` v1).

The agent sends it through its outbox, in the common envelope (``terminal_id``,
``boot_id``, ``seq``, ``sent_at``; see ``protocol.messages``), each time its state for a
directive changes::

    {"schema": "kf.update", "version": 1, "terminal_id": "T-0001", "boot_id": "...",
     "seq": 43, "sent_at": "...",
     "body": {"rollout_id": "R-7", "directive_seq": 12, "attempt": 2,
              "target": "acme/app-2.1.tar",
              "state": "rejected", "reason": "replayed", "detail": "seq 12 <= accepted 12"}}

Public interface: ``UpdateState`` (the per-terminal states of a rollout), ``UpdateReason``
(a closed set of reason codes, the directive refusals among them), ``UpdateBody``,
``UpdateMessage``, and ``UPDATE_SCHEMAS`` / ``UPDATE_SCHEMA_CHANNEL``, which ``protocol.messages`` merges into
``SCHEMAS`` / ``SCHEMA_CHANNEL`` (importing this module at its end, once the envelope is
defined), so that ``protocol.codec.decode`` accepts it. Pure: no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from protocol.directive_reasons import DIRECTIVE_REJECT_REASONS
from protocol.messages import _PRINTABLE, Text, _Envelope, _Strict
from protocol.topics import Channel

__all__ = [
    "FINAL_STATES",
    "UPDATE_SCHEMAS",
    "UPDATE_SCHEMA_CHANNEL",
    "UpdateBody",
    "UpdateMessage",
    "UpdateReason",
    "UpdateState",
]


class UpdateState(StrEnum):
    PENDING = "pending"
    NOTIFIED = "notified"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    WAITING_WINDOW = "waiting_window"
    INSTALLING = "installing"
    HEALTH_CHECK = "health_check"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    ALREADY_INSTALLED = "already_installed"


FINAL_STATES: Final = frozenset(
    {
        UpdateState.SUCCEEDED,
        UpdateState.FAILED,
        UpdateState.ROLLED_BACK,
        UpdateState.REJECTED,
        UpdateState.TIMED_OUT,
        UpdateState.CANCELED,
        UpdateState.ALREADY_INSTALLED,
    }
)
"""States a terminal never leaves for the same directive."""

# Reasons beyond the directive refusals: what the updater can find after verifying it.
_UPDATER_REASONS: Final = (
    # python-tuf refused the repository's metadata (agent/tuf_reasons.py maps its errors):
    "metadata_tampered",  # a listed key's signature does not verify: bytes changed after signing
    "metadata_unknown_key",  # signed only by keys its delegator does not list
    "metadata_rollback",  # a version lower than one this terminal already trusted
    "metadata_expired",  # past its expiry (a frozen or replaying server)
    "metadata_mismatch",  # length or hashes differ from what snapshot or timestamp declare
    "tuf_error",  # any other TUF refusal (a malformed role, a missing delegation)
    "downgrade",  # release_counter lower than the highest installed for the package
    "wrong_model",  # the release manifest does not list this terminal's model
    "download_failed",
    "artifact_mismatch",  # downloaded bytes differ from TUF's hashes (or are shorter)
    "artifact_too_long",  # the server sent more bytes than TUF's length (cut off there)
    "unsafe_archive",  # traversal, absolute path, link escape, device file, size cap
    "install_failed",
    "health_check_failed",
    "interrupted",  # the agent restarted mid-install and rolled back
    "session_active",  # a citizen session kept the install from starting
)
UpdateReason = StrEnum(  # type: ignore[misc]  # functional API: one list, no retyping
    "UpdateReason", [(r.upper(), r) for r in (*DIRECTIVE_REJECT_REASONS, *_UPDATER_REASONS)]
)

_NEEDS_REASON: Final = frozenset(
    {UpdateState.FAILED, UpdateState.ROLLED_BACK, UpdateState.REJECTED}
)


class UpdateBody(_Strict):
    """Where one terminal is with one directive.

    A directive refused before its content could be trusted (``malformed``,
    ``bad_signature``, ...) has no rollout id or target to report and ``directive_seq`` 0.
    """

    rollout_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] | None = None
    directive_seq: Annotated[int, Field(ge=0, le=2**53)]
    # The directive's ``attempt`` echoed back; None from an agent that predates it (or for a
    # directive that carried none), and the server then falls back to receive times.
    attempt: Annotated[int, Field(ge=1, le=2**53)] | None = None
    target: Annotated[str, Field(min_length=1, max_length=255, pattern=_PRINTABLE)] | None = None
    state: UpdateState
    reason: UpdateReason | None = None
    detail: Text | None = None

    @model_validator(mode="after")
    def _reason_when_it_went_wrong(self) -> UpdateBody:
        if self.state in _NEEDS_REASON and self.reason is None:
            raise ValueError(f"state {self.state.value!r} needs a reason")
        return self


class UpdateMessage(_Envelope):
    schema_: Literal["kf.update"] = Field(alias="schema")
    body: UpdateBody


UPDATE_SCHEMAS: Final = {("kf.update", 1): UpdateMessage}
UPDATE_SCHEMA_CHANNEL: Final = {"kf.update": Channel.UPDATE}

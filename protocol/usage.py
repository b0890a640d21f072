"""The ``usage`` channel: one citizen transaction at one terminal (``kf.usage`` v1).

The kiosk application tells the agent over its local socket (``agent.kiosk_interface``,
request ``transaction``); the agent wraps it in the common envelope (``terminal_id``,
``boot_id``, ``seq``, ``sent_at``; see ``protocol.messages``) and sends it through its
outbox, never dropped (unlike periodic reports)::

    {"schema": "kf.usage", "version": 1, "terminal_id": "T-0001", "boot_id": "...",
     "seq": 44, "sent_at": "...",
     "body": {"service": "tax.invoice.print", "outcome": "failed", "cause": "printer",
              "duration_s": 74.5, "pages": 0}}

No personal data, by construction: every string field is an enum or a short dotted code
of ``[a-z0-9_]`` (``SERVICE_CODE_PATTERN``), numbers are bounded, unknown fields are
refused. There is no free text anywhere, so nothing a citizen typed, no name, no document
number can travel here (``tests/unit/test_usage_protocol.py::test_the_usage_schema_has_no_free_text_field``).
The time of the transaction is the envelope's ``sent_at``, which the agent stamps when the
application reports it: the application gives no time of its own.

Public interface: ``ServiceCode``, ``SERVICE_CODE_PATTERN``, ``Outcome``, ``FailureCause``,
``UsageBody``, ``UsageMessage``, ``MAX_DURATION_S``, ``MAX_PAGES`` and
``USAGE_SCHEMAS`` / ``USAGE_SCHEMA_CHANNEL`` (merged into ``protocol.messages.SCHEMAS``).
Pure: no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints, model_validator

from protocol.messages import _Envelope, _Strict
from protocol.topics import Channel

__all__ = [
    "MAX_DURATION_S",
    "MAX_PAGES",
    "SERVICE_CODE_PATTERN",
    "USAGE_SCHEMAS",
    "USAGE_SCHEMA_CHANNEL",
    "FailureCause",
    "Outcome",
    "ServiceCode",
    "UsageBody",
    "UsageMessage",
]

SERVICE_CODE_PATTERN: Final = r"^[a-z][a-z0-9_]{0,23}(\.[a-z][a-z0-9_]{0,23}){1,3}$"
"""Two to four dot-separated parts of lower-case letters, digits and ``_``, each starting
with a letter (``tax.invoice.print``): an identifier, never a sentence."""

MAX_SERVICE_CODE_CHARS: Final = 64
MAX_DURATION_S: Final = 4 * 3600.0
"""A transaction longer than four hours is not one (the install gate's session bound is 1 h)."""
MAX_PAGES: Final = 500

ServiceCode = Annotated[
    str,
    StringConstraints(
        min_length=3, max_length=MAX_SERVICE_CODE_CHARS, pattern=SERVICE_CODE_PATTERN
    ),
]


class Outcome(StrEnum):
    COMPLETED = "completed"
    ABANDONED = "abandoned"  # the citizen walked away or cancelled
    FAILED = "failed"  # the terminal could not finish: ``cause`` says which part


class FailureCause(StrEnum):
    PRINTER = "printer"
    READER = "reader"
    NETWORK = "network"
    APPLICATION = "application"
    BACKEND = "backend"  # the government service behind the application


class UsageBody(_Strict):
    """One finished transaction: which service, how it ended, how long, how many pages."""

    service: ServiceCode
    outcome: Outcome
    cause: FailureCause | None = None
    duration_s: Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]
    pages: Annotated[int, Field(ge=0, le=MAX_PAGES)] = 0

    @model_validator(mode="after")
    def _cause_only_for_failures(self) -> UsageBody:
        if (self.outcome is Outcome.FAILED) != (self.cause is not None):
            raise ValueError("a cause is given exactly when the outcome is 'failed'")
        return self


class UsageMessage(_Envelope):
    schema_: Literal["kf.usage"] = Field(alias="schema")
    body: UsageBody


USAGE_SCHEMAS: Final = {("kf.usage", 1): UsageMessage}
USAGE_SCHEMA_CHANNEL: Final = {"kf.usage": Channel.USAGE}

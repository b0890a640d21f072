"""Why an agent refuses a directive: the closed set of reason codes. Pure data, no imports
beyond typing.

Its own module so that ``protocol.update_status`` (the ``kf.update`` message, which the
wire registry imports) can name these reasons without importing ``protocol.directives``
and with it ``cryptography``: the wire package needs nothing but pydantic
(``tests/unit/test_import_hygiene.py``). ``protocol.directives`` re-exports both names.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["DIRECTIVE_REJECT_REASONS", "RejectReason"]

RejectReason = Literal[
    "bad_signature",
    "unknown_key",
    "wrong_terminal",
    "replayed",
    "expired",
    "window_invalid",
    "target_unknown",  # no verified vendor role lists the path (or only one not delegated it)
    "target_mismatch",  # TUF lists the path with another length or sha256
    "malformed",
    "too_large",
]
DIRECTIVE_REJECT_REASONS: Final[tuple[str, ...]] = get_args(RejectReason)

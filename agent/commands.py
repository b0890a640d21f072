"""Where a payload on this terminal's ``cmd`` topic goes: confirmations or the update service.

``route_commands`` returns the one callback ``MqttConnection.receive_commands``
takes (only this terminal's own ``cmd`` topic reaches it, and the broker ACL lets
only the server identity publish there). A ``kf.committed`` is decoded
(``protocol.committed``) and handed to the outbox sender's ``on_committed`` (its
stream, seq and the ranges the server still misses); a
malformed one is logged (once per reason) and dropped; anything else goes to
the update service (which verifies directives itself), or is dropped when
updates are off. Never raises for any payload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from protocol.codec import cmd_schema
from protocol.committed import COMMITTED_SCHEMA, SeqRange, decode_committed
from protocol.errors import ProtocolError

__all__ = ["route_commands"]

log = logging.getLogger(__name__)


def route_commands(
    on_committed: Callable[[str, int, tuple[SeqRange, ...]], None],
    directives: Callable[[bytes], None] | None,
    *,
    terminal_id: str,
) -> Callable[[bytes], None]:
    """The ``cmd`` callback for one terminal (see the module docstring)."""
    logged: set[str] = set()

    def route(payload: bytes) -> None:
        if cmd_schema(payload) == COMMITTED_SCHEMA:
            try:
                committed = decode_committed(payload)
            except ProtocolError as exc:
                if exc.reason not in logged:
                    logged.add(exc.reason)
                    log.warning("%s: dropped a malformed kf.committed: %s", terminal_id, exc)
                return
            on_committed(committed.boot_id, committed.seq, committed.ranges)
        elif directives is not None:
            directives(payload)

    return route

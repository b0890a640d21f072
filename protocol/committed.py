"""``kf.committed``: the server's end-to-end confirmation on a terminal's ``cmd`` channel.

After the server COMMITTED a batch to its database it tells each terminal that had
messages in the batch how far its stream is durable, so the agent may delete those
messages from its outbox (a broker's PUBACK is not the server's commit; see
docs/reliability.md). Wire format (at most ``MAX_BYTES``)::

    {"schema": "kf.committed", "version": 1, "boot_id": "<stream id>", "seq": 42}

``seq`` is the highest seq of that ``boot_id`` whose effects are committed: the
server applies a stream strictly in seq order, so everything at or below it is
either committed or was deliberately dropped by the agent (counted as a gap).
Not signed: it can only make an agent delete what the server already holds, and
only the server identity may publish on ``cmd`` topics (broker ACL,
docs/security.md). Pure: no I/O, no clock.

- ``Committed``: the model (strict, frozen).
- ``encode_committed(boot_id, seq) -> bytes``.
- ``decode_committed(payload) -> Committed``: raises ``OversizeError``,
  ``MalformedJSONError``, ``UnknownSchemaError`` or ``InvalidMessageError``
  (``ProtocolError``), never anything else.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, ValidationError

from protocol.codec import loads_strict
from protocol.errors import InvalidMessageError, OversizeError, UnknownSchemaError
from protocol.messages import _Strict

__all__ = ["COMMITTED_SCHEMA", "MAX_BYTES", "Committed", "decode_committed", "encode_committed"]

COMMITTED_SCHEMA: Final = "kf.committed"
MAX_BYTES: Final = 256


class Committed(_Strict):
    schema_: Literal["kf.committed"] = Field(alias="schema")
    version: Literal[1]
    boot_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
    seq: Annotated[int, Field(ge=0, le=2**53)]


def encode_committed(boot_id: str, seq: int) -> bytes:
    """The wire bytes of one confirmation. Raises InvalidMessageError for a bad value."""
    try:
        message = Committed.model_validate(
            {"schema": COMMITTED_SCHEMA, "version": 1, "boot_id": boot_id, "seq": seq}
        )
    except ValidationError as exc:
        raise InvalidMessageError(str(exc.errors(include_url=False)[0]["msg"])) from None
    return message.model_dump_json(by_alias=True).encode()


def decode_committed(payload: bytes) -> Committed:
    """Parse and check one ``kf.committed`` payload; raises ProtocolError (see the docstring)."""
    if len(payload) > MAX_BYTES:
        raise OversizeError(len(payload), MAX_BYTES)
    raw = loads_strict(payload)
    if not isinstance(raw, dict) or raw.get("schema") != COMMITTED_SCHEMA:
        raise UnknownSchemaError("not a kf.committed message")
    try:
        return Committed.model_validate(raw, strict=True)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "message"
        raise InvalidMessageError(f"{where}: {err['msg']}") from None

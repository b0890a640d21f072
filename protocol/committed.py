"""``kf.committed``: the server's end-to-end confirmation on a terminal's ``cmd`` channel.

After the server COMMITTED a batch to its database it tells each terminal that had
messages in the batch how far its stream is durable, so the agent may delete those
messages from its outbox (a broker's PUBACK is not the server's commit; see
docs/reliability.md). Wire format (at most ``MAX_BYTES``)::

    {"schema": "kf.committed", "version": 1, "boot_id": "<stream id>", "seq": 42}
    {"schema": "kf.committed", "version": 2, "boot_id": "<stream id>", "seq": 42,
     "missing": [[30, 35], [40, 40]]}

``seq`` is the highest seq of that ``boot_id`` whose effects are committed: the
server applies a stream strictly in seq order, so everything at or below it is
either committed, was deliberately dropped by the agent (counted as a gap), or
lies in one of the ``missing`` ranges: seqs the server never received and would
still accept as a gap fill (version 2 only; at most ``MAX_MISSING_RANGES``
ranges ``[first, last]``, ascending, disjoint, ``1 <= first <= last < seq``).
The agent keeps and re-sends the rows it still has in ``missing``. Version 1 is
exactly version 2 with nothing missing: the encoder writes it whenever
``missing`` is empty, so an agent that reads only version 1 keeps working.
Not signed: it can only make an agent delete what the server already holds (or
keep what it would delete), and only the server identity may publish on ``cmd``
topics (broker ACL, docs/security.md). Pure: no I/O, no clock.

- ``Committed``: the model (strict, frozen).
- ``encode_committed(boot_id, seq, missing=()) -> bytes``.
- ``decode_committed(payload) -> Committed``: raises ``OversizeError``,
  ``MalformedJSONError``, ``UnknownSchemaError`` or ``InvalidMessageError``
  (``ProtocolError``), never anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, Literal

from pydantic import Field, ValidationError, model_validator

from protocol.codec import loads_strict
from protocol.errors import InvalidMessageError, OversizeError, UnknownSchemaError
from protocol.messages import _Strict

__all__ = [
    "COMMITTED_SCHEMA",
    "MAX_BYTES",
    "MAX_MISSING_RANGES",
    "Committed",
    "SeqRange",
    "decode_committed",
    "encode_committed",
]

COMMITTED_SCHEMA: Final = "kf.committed"
MAX_MISSING_RANGES: Final = 16
MAX_BYTES: Final = 1024  # 16 ranges of two 16-digit seqs, and the rest, fit
_MAX_SEQ: Final = 2**53

SeqRange = tuple[int, int]
"""``(first, last)``: the seqs ``first..last`` of one stream, both included."""

_Seq = Annotated[int, Field(ge=0, le=_MAX_SEQ)]


class Committed(_Strict):
    schema_: Literal["kf.committed"] = Field(alias="schema")
    version: Literal[1, 2]
    boot_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
    seq: _Seq
    # JSON arrays of two seqs; a list (strict mode takes no tuple from JSON): ``ranges``
    # gives them as ``SeqRange`` tuples.
    missing: Annotated[
        list[Annotated[list[_Seq], Field(min_length=2, max_length=2)]],
        Field(max_length=MAX_MISSING_RANGES),
    ] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ranges_inside_the_stream(self) -> Committed:
        if self.version == 1 and self.missing:
            raise ValueError("version 1 has no missing ranges")
        below = 0
        for first, last in self.missing:
            if not below < first <= last < self.seq:
                raise ValueError("missing ranges must ascend, be disjoint and lie in 1..seq-1")
            below = last
        return self

    @property
    def ranges(self) -> tuple[SeqRange, ...]:
        """``missing`` as ``(first, last)`` tuples."""
        return tuple((first, last) for first, last in self.missing)


def encode_committed(boot_id: str, seq: int, missing: Sequence[SeqRange] = ()) -> bytes:
    """The wire bytes of one confirmation: version 1 when nothing is missing, else 2.

    Raises InvalidMessageError for a bad value (ranges out of order or out of bounds)."""
    fields: dict[str, object] = {"schema": COMMITTED_SCHEMA, "boot_id": boot_id, "seq": seq}
    if missing:
        fields |= {"version": 2, "missing": [[first, last] for first, last in missing]}
    else:
        fields["version"] = 1
    try:
        message = Committed.model_validate(fields)
    except ValidationError as exc:
        raise InvalidMessageError(str(exc.errors(include_url=False)[0]["msg"])) from None
    return message.model_dump_json(by_alias=True, exclude_defaults=True).encode()


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

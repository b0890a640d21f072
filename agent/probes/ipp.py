"""The IPP printer probe: asks CUPS (or an IPP printer) for its state over IPP/1.1.

Three layers, each usable on its own:

* ``encode_get_printer_attributes`` / ``decode_ipp_response``: a small, pure
  RFC 8010 codec (bytes in, bytes or a typed response out; no sockets).
  ``decode_ipp_response`` raises ``IppDecodeError`` for truncated or garbage
  input and never anything else.
* ``printer_condition``: the pure mapping from RFC 8011 ``printer-state`` and
  PWG 5100.x ``printer-state-reasons`` keywords onto the normalised printer
  conditions (table and precedence in ``docs/probes.md``).
* ``IppProbe``: POSTs the request to ``http://host:port/<path>`` with
  ``http.client`` and turns every network or protocol problem into a
  condition (``offline`` when the printer cannot be reached, ``unknown`` when
  it answers nonsense).

It must never raise for a device problem, never block longer than its timeout
(one deadline covers connect, request and the whole response), and never read
more than ``max_response_bytes``. Only ``ipp://`` URIs are supported (CUPS on
the kiosk itself, loopback); ``ipps://`` is not.
"""

from __future__ import annotations

import http.client
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from agent.errors import ProbeError
from agent.probes.base import DETAIL_MAX, Verdict, VerdictProbe, clip
from protocol.messages import PeripheralCondition, PeripheralKind
from protocol.taxonomy import FAMILIES, Family

__all__ = [
    "DEFAULT_IPP_PORT",
    "REQUESTED_ATTRIBUTES",
    "IppAttribute",
    "IppCollection",
    "IppDecodeError",
    "IppGroup",
    "IppOutOfBand",
    "IppProbe",
    "IppResponse",
    "IppValue",
    "decode_ipp_response",
    "encode_get_printer_attributes",
    "printer_condition",
    "response_condition",
    "split_reason",
]

DEFAULT_IPP_PORT: Final = 631
OPERATION_GET_PRINTER_ATTRIBUTES: Final = 0x000B

# Delimiter tags (RFC 8010 §3.5.1).
TAG_OPERATION: Final = 0x01
TAG_JOB: Final = 0x02
TAG_END: Final = 0x03
TAG_PRINTER: Final = 0x04
TAG_UNSUPPORTED_GROUP: Final = 0x05

# Value tags (RFC 8010 §3.5.2).
_INTEGER: Final = 0x21
_BOOLEAN: Final = 0x22
_ENUM: Final = 0x23
_DATETIME: Final = 0x31
_RESOLUTION: Final = 0x32
_RANGE: Final = 0x33
_BEGIN_COLLECTION: Final = 0x34
_TEXT_WITH_LANGUAGE: Final = 0x35
_NAME_WITH_LANGUAGE: Final = 0x36
_END_COLLECTION: Final = 0x37
_KEYWORD: Final = 0x44
_URI: Final = 0x45
_CHARSET: Final = 0x47
_NATURAL_LANGUAGE: Final = 0x48
_MEMBER_NAME: Final = 0x4A

_MAX_COLLECTION_DEPTH: Final = 8
_FAULT_CODE_MAX: Final = 64

REQUESTED_ATTRIBUTES: Final = (
    "printer-state",
    "printer-state-reasons",
    "printer-state-message",
    "marker-levels",
    "marker-names",
    "printer-is-accepting-jobs",
)

# printer-state enum values (RFC 8011 §5.4.11).
_IDLE: Final = 3
_PROCESSING: Final = 4
_STOPPED: Final = 5


class IppDecodeError(ProbeError, ValueError):
    """The bytes are not a well-formed IPP response. ``offset`` is where decoding stopped."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class IppOutOfBand:
    """An out-of-band value such as ``unknown`` (0x12) or ``no-value`` (0x13)."""

    tag: int


@dataclass(frozen=True, slots=True)
class IppCollection:
    """A ``collection`` value: its member attributes in wire order."""

    members: tuple[IppAttribute, ...]


IppValue = int | bool | str | bytes | tuple[int, ...] | IppCollection | IppOutOfBand
"""Decoded values: integer/enum → int, boolean → bool, text-like → str,
rangeOfInteger/resolution → tuple, octetString/dateTime/unknown tags → bytes."""


@dataclass(frozen=True, slots=True)
class IppAttribute:
    """One attribute; ``values`` holds the 1setOf values in order."""

    name: str
    value_tag: int
    values: tuple[IppValue, ...]


@dataclass(frozen=True, slots=True)
class IppGroup:
    """One attribute group, e.g. operation (0x01) or printer (0x04) attributes."""

    tag: int
    attributes: tuple[IppAttribute, ...]

    def get(self, name: str) -> IppAttribute | None:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        return None


@dataclass(frozen=True, slots=True)
class IppResponse:
    """A decoded IPP response. Document data after the end tag is ignored."""

    version: tuple[int, int]
    status_code: int
    request_id: int
    groups: tuple[IppGroup, ...]

    @property
    def successful(self) -> bool:
        """True for the ``successful-ok*`` status codes 0x0000..0x00FF."""
        return 0 <= self.status_code <= 0x00FF

    def values(self, name: str, group_tag: int = TAG_PRINTER) -> tuple[IppValue, ...]:
        """The values of the first attribute ``name`` in a group tagged ``group_tag``."""
        for group in self.groups:
            if group.tag == group_tag:
                attribute = group.get(name)
                if attribute is not None:
                    return attribute.values
        return ()


# ---------------------------------------------------------------- encoding


def _attribute(tag: int, name: str, value: bytes) -> bytes:
    encoded_name = name.encode("ascii")
    return (
        struct.pack(">BH", tag, len(encoded_name))
        + encoded_name
        + struct.pack(">H", len(value))
        + value
    )


def _additional_value(tag: int, value: bytes) -> bytes:
    return struct.pack(">BHH", tag, 0, len(value)) + value


def encode_get_printer_attributes(
    printer_uri: str,
    request_id: int,
    requested: Sequence[str] = REQUESTED_ATTRIBUTES,
) -> bytes:
    """An IPP/1.1 Get-Printer-Attributes request (RFC 8011 §4.2.5) with no document data.

    Raises ``ValueError`` if ``request_id`` is not in 1..2**31-1, ``requested``
    is empty, or the URI does not fit an IPP value (32 767 bytes).
    """
    if not 1 <= request_id <= 0x7FFFFFFF:
        raise ValueError(f"request_id {request_id} is outside 1..2**31-1")
    if not requested:
        raise ValueError("requested attributes must not be empty")
    uri = printer_uri.encode("utf-8")
    if not uri or len(uri) > 0x7FFF:
        raise ValueError("printer_uri must be 1..32767 bytes")
    parts = [
        struct.pack(">BBHI", 1, 1, OPERATION_GET_PRINTER_ATTRIBUTES, request_id),
        bytes([TAG_OPERATION]),
        _attribute(_CHARSET, "attributes-charset", b"utf-8"),
        _attribute(_NATURAL_LANGUAGE, "attributes-natural-language", b"en"),
        _attribute(_URI, "printer-uri", uri),
        _attribute(_KEYWORD, "requested-attributes", requested[0].encode("ascii")),
    ]
    parts.extend(_additional_value(_KEYWORD, name.encode("ascii")) for name in requested[1:])
    parts.append(bytes([TAG_END]))
    return b"".join(parts)


# ---------------------------------------------------------------- decoding


class _Reader:
    """A cursor over the response that turns every overrun into IppDecodeError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise IppDecodeError(f"truncated {what}", self.pos)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def fail(self, message: str) -> IppDecodeError:
        return IppDecodeError(message, self.pos)


def _fixed(value: bytes, size: int, tag: int, reader: _Reader) -> bytes:
    if len(value) != size:
        raise reader.fail(f"value tag 0x{tag:02x} needs {size} bytes, got {len(value)}")
    return value


def _with_language(value: bytes, reader: _Reader) -> str:
    inner = _Reader(value)
    try:
        inner.take(inner.u16("language length"), "language")
        text = inner.take(inner.u16("text length"), "text")
    except IppDecodeError as exc:
        raise reader.fail(f"malformed text/name-with-language: {exc}") from None
    if inner.pos != len(value):
        raise reader.fail("trailing bytes in text/name-with-language")
    return text.decode("utf-8", errors="replace")


def _scalar(tag: int, value: bytes, reader: _Reader) -> IppValue:
    """Decode one non-collection value according to its tag."""
    if 0x10 <= tag <= 0x1F:
        return IppOutOfBand(tag)
    if tag in (_INTEGER, _ENUM):
        signed: int = struct.unpack(">i", _fixed(value, 4, tag, reader))[0]
        return signed
    if tag == _BOOLEAN:
        return _fixed(value, 1, tag, reader)[0] != 0
    if tag == _RANGE:
        low, high = struct.unpack(">ii", _fixed(value, 8, tag, reader))
        return (low, high)
    if tag == _RESOLUTION:
        x, y, units = struct.unpack(">iib", _fixed(value, 9, tag, reader))
        return (x, y, units)
    if tag == _DATETIME:
        return _fixed(value, 11, tag, reader)
    if tag in (_TEXT_WITH_LANGUAGE, _NAME_WITH_LANGUAGE):
        return _with_language(value, reader)
    if 0x40 <= tag <= 0x5F:
        # Character-string types. Printers do send non-UTF-8 state messages;
        # a bad byte must not blind the probe, so it is replaced, not fatal.
        return value.decode("utf-8", errors="replace")
    return value  # octetString and tags this decoder does not interpret


def _name(raw: bytes, reader: _Reader) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise reader.fail("attribute name is not US-ASCII") from None


def _collection(reader: _Reader, depth: int) -> IppCollection:
    """Members after a begCollection value, up to and including its endCollection."""
    if depth > _MAX_COLLECTION_DEPTH:
        raise reader.fail("collections nested too deeply")
    members: list[IppAttribute] = []
    current_name: str | None = None
    current_tag = 0
    current_values: list[IppValue] = []
    while True:
        tag = reader.u8("collection value tag")
        if tag <= 0x0F:
            raise reader.fail("delimiter tag inside a collection")
        reader.take(reader.u16("name length"), "member name")  # always empty inside
        value = reader.take(reader.u16("value length"), "member value")
        if tag == _END_COLLECTION:
            if current_name is not None:
                members.append(IppAttribute(current_name, current_tag, tuple(current_values)))
            return IppCollection(tuple(members))
        if tag == _MEMBER_NAME:
            if current_name is not None:
                members.append(IppAttribute(current_name, current_tag, tuple(current_values)))
            current_name = _name(value, reader)
            current_tag = 0
            current_values = []
            continue
        if current_name is None:
            raise reader.fail("collection value before any memberAttrName")
        item = _collection(reader, depth + 1) if tag == _BEGIN_COLLECTION else None
        if not current_values:
            current_tag = tag
        current_values.append(item if item is not None else _scalar(tag, value, reader))


def decode_ipp_response(data: bytes) -> IppResponse:
    """Decode an IPP response (RFC 8010 §3.1).

    1setOf values (additional values with an empty name) are gathered into
    one ``IppAttribute``; collections are decoded recursively. Raises
    ``IppDecodeError`` on truncated input, a missing end-of-attributes tag, a
    value before any group, malformed fixed-size values, or a reserved tag;
    it never raises anything else.
    """
    reader = _Reader(bytes(data))
    major, minor = reader.u8("version"), reader.u8("version")
    status_code = reader.u16("status-code")
    request_id: int = struct.unpack(">I", reader.take(4, "request-id"))[0]

    groups: list[IppGroup] = []
    group_tag: int | None = None
    attributes: list[IppAttribute] = []
    name: str | None = None
    first_tag = 0
    values: list[IppValue] = []

    def close_attribute() -> None:
        nonlocal name, values
        if name is not None:
            attributes.append(IppAttribute(name, first_tag, tuple(values)))
        name, values = None, []

    def close_group() -> None:
        nonlocal attributes
        close_attribute()
        if group_tag is not None:
            groups.append(IppGroup(group_tag, tuple(attributes)))
        attributes = []

    while True:
        tag = reader.u8("tag")
        if tag == TAG_END:
            close_group()
            break
        if tag == 0x00:
            raise reader.fail("reserved delimiter tag 0x00")
        if tag <= 0x0F:
            close_group()
            group_tag = tag
            continue
        if group_tag is None:
            raise reader.fail("attribute value before any attribute group")
        raw_name = reader.take(reader.u16("name length"), "attribute name")
        value = reader.take(reader.u16("value length"), "attribute value")
        if tag in (_END_COLLECTION, _MEMBER_NAME):
            raise reader.fail(f"value tag 0x{tag:02x} outside a collection")
        if raw_name:
            close_attribute()
            name = _name(raw_name, reader)
            first_tag = tag
        elif name is None:
            raise reader.fail("additional value without a preceding attribute")
        if tag == _BEGIN_COLLECTION:
            values.append(_collection(reader, 1))
        else:
            values.append(_scalar(tag, value, reader))

    return IppResponse(
        version=(major, minor),
        status_code=status_code,
        request_id=request_id,
        groups=tuple(groups),
    )


# ---------------------------------------------------------------- mapping

_SUFFIXES: Final = ("-report", "-warning", "-error")

_PAPER_OUT: Final = frozenset({"media-empty", "media-needed", "input-tray-missing"})
_PAPER_LOW: Final = frozenset({"media-low"})
_OFFLINE: Final = frozenset({"offline", "shutdown", "paused", "timed-out"})
# Errors that stop printing but have no state of their own: the printer is
# reachable yet cannot print, which is what "offline" means to the kiosk.
_CANNOT_PRINT: Final = frozenset(
    {
        "toner-empty",
        "marker-supply-empty",
        "marker-waste-full",
        "developer-empty",
        "opc-life-over",
        "fuser-over-temp",
        "fuser-under-temp",
        "output-area-full",
        "output-tray-missing",
        "interpreter-resource-unavailable",
    }
)
_COVER_SUFFIXES: Final = ("cover-open", "door-open", "interlock-open")
# PWG 5100.9 "cutter-<event>" events that stop the cutter (besides *-failure/-jam).
_CUTTER_FAULTS: Final = frozenset(
    {"missing", "offline", "life-over", "over-temperature", "under-temperature", "full"}
)
# Reasons that are news, not faults, even without a -report suffix.
_INFORMATIONAL: Final = frozenset(
    {
        "none",
        "connecting-to-device",
        "moving-to-paused",
        "spool-area-full",
        "stopping",
        "cups-waiting-for-job-completed",
    }
)


def split_reason(keyword: str) -> tuple[str, str]:
    """Split a ``printer-state-reasons`` keyword into (base, severity).

    Severity is ``report``, ``warning`` or ``error``; a keyword without a
    suffix is an error (RFC 8011 §5.4.12).
    """
    for suffix in _SUFFIXES:
        if keyword.endswith(suffix) and len(keyword) > len(suffix):
            return keyword[: -len(suffix)], suffix[1:]
    return keyword, "error"


def _classify(keyword: str) -> PeripheralCondition | None:
    """The condition one reason keyword implies, or None when it is informational."""
    base, severity = split_reason(keyword.strip().lower())
    if base in _OFFLINE:
        # CUPS backends report an unreachable device only as "offline-report",
        # so offline counts whatever its suffix says.
        return PeripheralCondition.OFFLINE
    if severity == "report" or base in _INFORMATIONAL:
        return None
    if base.endswith(_COVER_SUFFIXES):
        return PeripheralCondition.COVER_OPEN
    if base.startswith("cutter-") and (
        base.endswith(("-failure", "-error", "-jam")) or base[7:] in _CUTTER_FAULTS
    ):
        return PeripheralCondition.CUTTER_ERROR
    if base == "media-jam" or base.endswith("-jam"):
        return PeripheralCondition.JAM
    if base in _PAPER_OUT:
        return PeripheralCondition.PAPER_OUT
    if base in _PAPER_LOW:
        return PeripheralCondition.PAPER_LOW
    if base in _CANNOT_PRINT and severity == "error":
        return PeripheralCondition.OFFLINE
    if severity == "warning":
        # marker-supply-low, toner-low, ... the printer still prints.
        return None
    return PeripheralCondition.UNKNOWN


_NOT_A_STOP: Final = frozenset(
    {PeripheralCondition.OK, PeripheralCondition.PAPER_LOW, PeripheralCondition.UNKNOWN}
)
_SUPPLY_PREFIXES: Final = ("marker-", "toner-", "developer-")


def _marker_note(markers: Sequence[tuple[str, int]]) -> str | None:
    levels = [f"{name} {level}%" for name, level in markers if 0 <= level <= 100]
    return "markers: " + ", ".join(levels) if levels else None


def printer_condition(
    state: int | None,
    reasons: Sequence[str],
    *,
    message: str | None = None,
    accepting_jobs: bool | None = None,
    markers: Sequence[tuple[str, int]] = (),
) -> Verdict:
    """Map ``printer-state`` and ``printer-state-reasons`` onto a printer condition.

    Each reason is classified after stripping its ``-report``/``-warning``/
    ``-error`` suffix; ``-report`` reasons and warnings without a state of
    their own are informational (``ok``, listed in the detail). The most
    severe condition wins, in the printer family's precedence (``protocol.taxonomy``), and its keyword
    becomes the fault code. A ``stopped`` printer (state 5) whose reasons
    name nothing more specific, or a queue that refuses jobs, is ``offline``.
    A stopped printer that only reports paper low is ``offline`` too, with
    the paper-low reason in the detail. A state that is not 3, 4 or 5 with no
    usable reason is ``unknown``.
    Pure; never raises.
    """
    rank = FAMILIES[Family.PRINTER].rank
    worst: tuple[PeripheralCondition, str] | None = None
    notes: list[str] = []
    for keyword in reasons:
        condition = _classify(keyword)
        if condition is None:
            if split_reason(keyword)[0] != "none":
                notes.append(keyword)
            continue
        if worst is None or rank(condition) < rank(worst[0]):
            worst = (condition, keyword)

    detail_parts = [message.strip()] if message and message.strip() else []
    stopped_because = (
        "printer-stopped"
        if state == _STOPPED
        else "not-accepting-jobs"
        if accepting_jobs is False
        else None
    )
    if worst is not None:
        condition, fault = worst
    elif state in (_IDLE, _PROCESSING, _STOPPED):
        condition, fault = PeripheralCondition.OK, ""
    else:
        condition, fault = PeripheralCondition.UNKNOWN, "no-printer-state"
    # A printer that cannot print is offline unless a reason says why more exactly;
    # an unclassified error keeps its keyword, a mere paper-low warning does not explain it.
    if stopped_because is not None and condition in _NOT_A_STOP:
        if condition is PeripheralCondition.PAPER_LOW:
            notes.append(fault)
        if condition is not PeripheralCondition.UNKNOWN or fault == "no-printer-state":
            fault = stopped_because
        condition = PeripheralCondition.OFFLINE

    if notes:
        detail_parts.append("reasons: " + ", ".join(notes))
    if any(split_reason(k)[0].startswith(_SUPPLY_PREFIXES) for k in [*notes, fault]):
        marker_note = _marker_note(markers)
        if marker_note:
            detail_parts.append(marker_note)
    detail = clip("; ".join(detail_parts), DETAIL_MAX) if detail_parts else None
    fault_code = clip(fault, _FAULT_CODE_MAX) if fault else None
    return condition, fault_code, detail


# ---------------------------------------------------------------- the probe


def _texts(values: tuple[IppValue, ...]) -> list[str]:
    return [v for v in values if isinstance(v, str)]


def _first_int(values: tuple[IppValue, ...]) -> int | None:
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _first_bool(values: tuple[IppValue, ...]) -> bool | None:
    for v in values:
        if isinstance(v, bool):
            return v
    return None


def response_condition(response: IppResponse) -> Verdict:
    """Map a decoded Get-Printer-Attributes response onto a condition. Pure."""
    if not response.successful:
        code = f"ipp-status-0x{response.status_code:04x}"
        if response.status_code == 0x0406:  # client-error-not-found
            return PeripheralCondition.OFFLINE, code, "the printer queue does not exist"
        return PeripheralCondition.UNKNOWN, code, "the printer refused Get-Printer-Attributes"
    names = _texts(response.values("marker-names"))
    levels = [
        v
        for v in response.values("marker-levels")
        if isinstance(v, int) and not isinstance(v, bool)
    ]
    messages = _texts(response.values("printer-state-message"))
    return printer_condition(
        _first_int(response.values("printer-state")),
        _texts(response.values("printer-state-reasons")),
        message=messages[0] if messages else None,
        accepting_jobs=_first_bool(response.values("printer-is-accepting-jobs")),
        markers=list(zip(names, levels, strict=False)),
    )


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left


class IppProbe(VerdictProbe):
    """Reads one printer with Get-Printer-Attributes over ``ipp://host[:port]/path``.

    Raises ``ValueError`` at construction for a URI that is not ``ipp://``
    with a host and a path; ``read`` never raises for device problems.
    """

    def __init__(
        self,
        name: str,
        uri: str,
        *,
        kind: PeripheralKind = PeripheralKind.A4_PRINTER,
        timeout_s: float = 3.0,
        max_response_bytes: int = 256 * 1024,
    ) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "ipp" or not parts.hostname or not parts.path.strip("/"):
            raise ValueError(f"not an ipp://host[:port]/path URI: {uri!r}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        super().__init__(name, kind)
        self._uri = uri
        self._host = parts.hostname
        self._port = parts.port or DEFAULT_IPP_PORT
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._request_id = 0

    def _next_request_id(self) -> int:
        self._request_id = self._request_id % 0x7FFFFFFF + 1
        return self._request_id

    def _verdict(self) -> Verdict:
        where = f"{self._host}:{self._port}"
        request_id = self._next_request_id()
        try:
            status, body = self._post(encode_get_printer_attributes(self._uri, request_id))
        except ConnectionRefusedError:
            return PeripheralCondition.OFFLINE, "connection-refused", f"{where} refused"
        except TimeoutError:
            return (
                PeripheralCondition.OFFLINE,
                "timeout",
                f"no answer from {where} within {self._timeout_s:g} s",
            )
        except _ResponseTooLargeError:
            return (
                PeripheralCondition.UNKNOWN,
                "response-too-large",
                f"response exceeds {self._max_response_bytes} bytes",
            )
        except http.client.HTTPException as exc:
            return PeripheralCondition.UNKNOWN, "bad-http-response", f"{where}: {exc!r}"
        except OSError as exc:
            return PeripheralCondition.OFFLINE, "connection-error", f"{where}: {exc}"
        if status == 404:
            return PeripheralCondition.OFFLINE, "http-404", f"no queue at {self._path}"
        if status != 200:
            return PeripheralCondition.UNKNOWN, f"http-{status}", f"{where} answered HTTP {status}"
        try:
            response = decode_ipp_response(body)
        except IppDecodeError as exc:
            return PeripheralCondition.UNKNOWN, "bad-ipp-response", str(exc)
        if response.request_id != request_id:
            return (
                PeripheralCondition.UNKNOWN,
                "bad-ipp-response",
                f"request-id {response.request_id} answers none of ours ({request_id})",
            )
        return response_condition(response)

    def _post(self, payload: bytes) -> tuple[int, bytes]:
        """POST the request; returns (HTTP status, body). Raises OSError/HTTPException."""
        deadline = _Deadline(self._timeout_s)
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        try:
            connection.connect()
            sock: socket.socket | None = connection.sock

            def tighten() -> None:
                # http.client closes its socket object once a non-keep-alive response
                # is read (the response keeps the fd); then the last timeout stays.
                left = deadline.remaining()
                if sock is not None and sock.fileno() != -1:
                    sock.settimeout(left)

            tighten()
            connection.request(
                "POST",
                self._path,
                body=payload,
                headers={"Content-Type": "application/ipp", "Accept": "application/ipp"},
            )
            tighten()
            response = connection.getresponse()
            chunks: list[bytes] = []
            size = 0
            while True:
                tighten()
                chunk = response.read(16 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > self._max_response_bytes:
                    raise _ResponseTooLargeError
                chunks.append(chunk)
            return response.status, b"".join(chunks)
        finally:
            connection.close()


class _ResponseTooLargeError(Exception):
    """Internal: the response passed max_response_bytes."""

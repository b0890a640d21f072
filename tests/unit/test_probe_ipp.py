"""The IPP probe: RFC 8010 codec, printer-state-reasons mapping, and a real loopback server."""

from __future__ import annotations

import http.server
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.probes.base import Probe
from agent.probes.ipp import (
    REQUESTED_ATTRIBUTES,
    IppCollection,
    IppDecodeError,
    IppOutOfBand,
    IppProbe,
    decode_ipp_response,
    encode_get_printer_attributes,
    printer_condition,
    split_reason,
)
from protocol.messages import PeripheralCondition, PeripheralKind

C = PeripheralCondition

# ------------------------------------------------------------ a tiny test-side encoder

Value = int | bool | str | bytes


def _value_bytes(tag: int, value: Value) -> bytes:
    if isinstance(value, bool):
        return bytes([1 if value else 0])
    if isinstance(value, int):
        return struct.pack(">i", value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def attr(tag: int, name: str, *values: Value) -> bytes:
    """One attribute with its 1setOf values, as RFC 8010 §3.1.4-3.1.5 lays them out."""
    out = b""
    for index, value in enumerate(values):
        raw_name = name.encode("ascii") if index == 0 else b""
        raw = _value_bytes(tag, value)
        out += struct.pack(">BH", tag, len(raw_name)) + raw_name
        out += struct.pack(">H", len(raw)) + raw
    return out


def response(
    *printer_attrs: bytes, status: int = 0x0000, request_id: int = 1, version: bytes = b"\x01\x01"
) -> bytes:
    return (
        version
        + struct.pack(">HI", status, request_id)
        + b"\x01"
        + attr(0x47, "attributes-charset", "utf-8")
        + attr(0x48, "attributes-natural-language", "en")
        + b"\x04"
        + b"".join(printer_attrs)
        + b"\x03"
    )


def printer_response(
    state: int,
    reasons: list[str],
    *,
    message: str = "",
    accepting: bool = True,
    request_id: int = 1,
) -> bytes:
    return response(
        attr(0x23, "printer-state", state),
        attr(0x44, "printer-state-reasons", *reasons),
        attr(0x41, "printer-state-message", message),
        attr(0x42, "marker-names", "Black Toner", "Cyan Toner"),
        attr(0x21, "marker-levels", 4, 80),
        attr(0x22, "printer-is-accepting-jobs", accepting),
        request_id=request_id,
    )


# ------------------------------------------------------------ encoding


def wire(*parts: str | bytes) -> bytes:
    """Bytes written as in RFC 8010's tables: hex strings (spaces allowed) and raw names."""
    return b"".join(bytes.fromhex(p) if isinstance(p, str) else p for p in parts)


def test_get_printer_attributes_request_is_byte_exact_rfc8010() -> None:
    data = encode_get_printer_attributes(
        "ipp://localhost/printers/HP", 7, requested=("printer-state", "printer-state-reasons")
    )
    expected = wire(
        "0101 000b 00000007",  # version 1.1, Get-Printer-Attributes, request-id 7
        "01",  # operation-attributes-tag
        "47 0012", b"attributes-charset", "0005", b"utf-8",
        "48 001b", b"attributes-natural-language", "0002", b"en",
        "45 000b", b"printer-uri", "001b", b"ipp://localhost/printers/HP",
        "44 0014", b"requested-attributes", "000d", b"printer-state",
        "44 0000", "0015", b"printer-state-reasons",  # additional value: empty name
        "03",  # end-of-attributes-tag
    )  # fmt: skip
    assert data == expected


def test_request_decodes_back_with_all_requested_attributes_as_one_set() -> None:
    decoded = decode_ipp_response(encode_get_printer_attributes("ipp://h/printers/q", 99))
    assert decoded.status_code == 0x000B  # the operation-id sits where a status would
    assert decoded.request_id == 99
    assert decoded.values("requested-attributes", group_tag=0x01) == REQUESTED_ATTRIBUTES
    assert decoded.values("printer-uri", group_tag=0x01) == ("ipp://h/printers/q",)


@pytest.mark.parametrize("request_id", [0, -1, 2**31])
def test_request_id_outside_rfc_range_is_refused(request_id: int) -> None:
    with pytest.raises(ValueError, match="request_id"):
        encode_get_printer_attributes("ipp://h/printers/q", request_id)


# ------------------------------------------------------------ decoding


HAND_BUILT = wire(
    "0101 0000 0000002a",  # IPP/1.1, successful-ok, request-id 42
    "01",  # operation attributes
    "47 0012", b"attributes-charset", "0005", b"utf-8",
    "48 001b", b"attributes-natural-language", "0005", b"en-us",
    "04",  # printer attributes
    "23 000d", b"printer-state", "0004 00000005",  # enum: stopped
    "44 0015", b"printer-state-reasons", "0011", b"media-empty-error",
    "44 0000", "0010", b"cover-open-error",  # second value of the same 1setOf
    # textWithLanguage: value = lang length, lang, text length, text
    "35 0015", b"printer-state-message", "000f", "0002", b"en", "0009", b"Paper out",
    "21 000d", b"marker-levels", "0004 ffffffff",  # -1: level unknown
    "21 0000", "0004 00000032",  # 50
    "22 0019", b"printer-is-accepting-jobs", "0001 00",
    "13 000b", b"marker-type", "0000",  # out-of-band no-value
    "03",
)  # fmt: skip


def test_decodes_hand_built_response_with_enum_keywords_text_integers_boolean() -> None:
    decoded = decode_ipp_response(HAND_BUILT)
    assert decoded.version == (1, 1)
    assert decoded.status_code == 0
    assert decoded.successful
    assert decoded.request_id == 42
    assert [g.tag for g in decoded.groups] == [0x01, 0x04]
    assert decoded.values("attributes-natural-language", group_tag=0x01) == ("en-us",)
    assert decoded.values("printer-state") == (5,)
    assert decoded.values("printer-state-reasons") == ("media-empty-error", "cover-open-error")
    assert decoded.values("printer-state-message") == ("Paper out",)
    assert decoded.values("marker-levels") == (-1, 50)
    assert decoded.values("printer-is-accepting-jobs") == (False,)
    assert decoded.values("marker-type") == (IppOutOfBand(0x13),)
    attribute = decoded.groups[1].get("printer-state-reasons")
    assert attribute is not None
    assert attribute.value_tag == 0x44


def test_decodes_collections_range_and_resolution() -> None:
    collection = (
        struct.pack(">BH", 0x34, 9)
        + b"media-col"
        + struct.pack(">H", 0)
        + struct.pack(">BHH", 0x4A, 0, 10)
        + b"media-size"
        + struct.pack(">BHH", 0x34, 0, 0)  # nested collection value
        + struct.pack(">BHH", 0x4A, 0, 11)
        + b"x-dimension"
        + struct.pack(">BHHi", 0x21, 0, 4, 21000)
        + struct.pack(">BHH", 0x37, 0, 0)
        + struct.pack(">BHH", 0x4A, 0, 10)
        + b"media-type"
        + struct.pack(">BHH", 0x44, 0, 10)
        + b"stationery"
        + struct.pack(">BHH", 0x37, 0, 0)
    )
    data = response(
        collection,
        attr(0x33, "copies-supported", struct.pack(">ii", 1, 99)),
        attr(0x32, "printer-resolution-default", struct.pack(">iib", 600, 600, 3)),
        attr(0x23, "printer-state", 3),
    )
    decoded = decode_ipp_response(data)
    (media_col,) = decoded.values("media-col")
    assert isinstance(media_col, IppCollection)
    size, media_type = media_col.members
    assert size.name == "media-size"
    assert media_type.values == ("stationery",)
    (inner,) = size.values
    assert isinstance(inner, IppCollection)
    assert inner.members[0].values == (21000,)
    assert decoded.values("copies-supported") == ((1, 99),)
    assert decoded.values("printer-resolution-default") == ((600, 600, 3),)
    assert decoded.values("printer-state") == (3,)


def test_every_truncation_of_a_valid_response_is_a_decode_error() -> None:
    for cut in range(len(HAND_BUILT)):
        with pytest.raises(IppDecodeError):
            decode_ipp_response(HAND_BUILT[:cut])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"<html>Not Found</html>", "before any attribute group"),
        (wire("0101 0000 00000001", "21 0001", b"a", "0004 00000001", "03"), "before any"),
        (wire("0101 0000 00000001 04", "21 0000 0004 00000001 03"), "without a preceding"),
        (wire("0101 0000 00000001 04", "21 0001", b"a", "0002 0001 03"), "needs 4 bytes"),
        (wire("0101 0000 00000001 00 03"), "reserved"),
        (wire("0101 0000 00000001 04", "37 0001", b"a", "0000 03"), "outside a collection"),
    ],
)
def test_garbage_is_a_typed_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(IppDecodeError, match=message):
        decode_ipp_response(data)


@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_returns_or_raises_only_ipp_decode_error(data: bytes) -> None:
    try:
        decoded = decode_ipp_response(data)
    except IppDecodeError:
        return
    assert decoded.version == (data[0], data[1])


@given(
    state=st.sampled_from([3, 4, 5]),
    reasons=st.lists(st.from_regex(r"[a-z][a-z-]{0,30}", fullmatch=True), min_size=1),
    levels=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=4),
    message=st.text(max_size=60),
    accepting=st.booleans(),
    request_id=st.integers(1, 2**31 - 1),
)
def test_round_trip_through_the_test_encoder_preserves_every_value(
    state: int,
    reasons: list[str],
    levels: list[int],
    message: str,
    accepting: bool,
    request_id: int,
) -> None:
    data = response(
        attr(0x23, "printer-state", state),
        attr(0x44, "printer-state-reasons", *reasons),
        attr(0x41, "printer-state-message", message),
        attr(0x21, "marker-levels", *levels),
        attr(0x22, "printer-is-accepting-jobs", accepting),
        request_id=request_id,
    )
    decoded = decode_ipp_response(data)
    assert decoded.request_id == request_id
    assert decoded.values("printer-state") == (state,)
    assert decoded.values("printer-state-reasons") == tuple(reasons)
    assert decoded.values("printer-state-message") == (message,)
    assert decoded.values("marker-levels") == tuple(levels)
    assert decoded.values("printer-is-accepting-jobs") == (accepting,)


# ------------------------------------------------------------ mapping


@pytest.mark.parametrize(
    ("keyword", "split"),
    [
        ("media-empty-error", ("media-empty", "error")),
        ("media-low-warning", ("media-low", "warning")),
        ("offline-report", ("offline", "report")),
        ("media-jam", ("media-jam", "error")),  # no suffix means error (RFC 8011 §5.4.12)
        ("none", ("none", "error")),
    ],
)
def test_reason_suffix_is_split_and_missing_suffix_means_error(
    keyword: str, split: tuple[str, str]
) -> None:
    assert split_reason(keyword) == split


@pytest.mark.parametrize(
    ("state", "reasons", "condition", "fault_code"),
    [
        (3, ["none"], C.OK, None),
        (3, [], C.OK, None),
        (5, ["media-empty-error"], C.PAPER_OUT, "media-empty-error"),
        (5, ["media-empty"], C.PAPER_OUT, "media-empty"),
        (5, ["media-needed-error"], C.PAPER_OUT, "media-needed-error"),
        (3, ["media-low-warning"], C.PAPER_LOW, "media-low-warning"),
        (4, ["media-low"], C.PAPER_LOW, "media-low"),
        (5, ["media-jam-error"], C.JAM, "media-jam-error"),
        (5, ["media-jam"], C.JAM, "media-jam"),
        (5, ["cover-open-error"], C.COVER_OPEN, "cover-open-error"),
        (5, ["door-open"], C.COVER_OPEN, "door-open"),
        (5, ["interlock-open-error"], C.COVER_OPEN, "interlock-open-error"),
        (5, ["cutter-jam-error"], C.CUTTER_ERROR, "cutter-jam-error"),
        (5, ["cutter-motor-failure"], C.CUTTER_ERROR, "cutter-motor-failure"),
        (3, ["cutter-warming-up-report"], C.OK, None),
        # CUPS backends mark an unreachable printer with offline-report only.
        (3, ["offline-report"], C.OFFLINE, "offline-report"),
        (4, ["offline"], C.OFFLINE, "offline"),
        (5, ["paused"], C.OFFLINE, "paused"),
        (5, ["shutdown"], C.OFFLINE, "shutdown"),
        (4, ["timed-out"], C.OFFLINE, "timed-out"),
        (5, ["toner-empty-error"], C.OFFLINE, "toner-empty-error"),
        (3, ["toner-low-warning"], C.OK, None),
        (3, ["marker-supply-low-warning"], C.OK, None),
        (3, ["marker-supply-low-report"], C.OK, None),
        (3, ["media-empty-report"], C.OK, None),  # -report is never a fault
        (4, ["connecting-to-device"], C.OK, None),
        (4, ["other-error"], C.UNKNOWN, "other-error"),
        (5, ["other-error"], C.OFFLINE, "other-error"),
        (5, [], C.OFFLINE, "printer-stopped"),
        (5, ["none"], C.OFFLINE, "printer-stopped"),
        (5, ["media-low-warning"], C.OFFLINE, "printer-stopped"),
        (None, [], C.UNKNOWN, "no-printer-state"),
        (9, [], C.UNKNOWN, "no-printer-state"),
    ],
)
def test_printer_state_reasons_map_to_normalised_conditions(
    state: int | None, reasons: list[str], condition: C, fault_code: str | None
) -> None:
    assert printer_condition(state, reasons)[:2] == (condition, fault_code)


def test_most_severe_reason_wins_and_others_are_not_lost() -> None:
    reasons = ["media-low-warning", "media-empty-error", "media-jam-error", "cover-open-error"]
    assert printer_condition(5, reasons)[:2] == (C.COVER_OPEN, "cover-open-error")
    assert printer_condition(5, reasons[:3])[:2] == (C.JAM, "media-jam-error")
    assert printer_condition(5, reasons[:2])[:2] == (C.PAPER_OUT, "media-empty-error")
    assert printer_condition(3, ["offline-report", "cover-open-error"])[0] is C.OFFLINE
    assert printer_condition(5, ["cutter-jam-error", "media-jam-error"])[0] is C.CUTTER_ERROR


def test_warnings_and_marker_levels_go_into_the_detail_of_an_ok_printer() -> None:
    condition, fault_code, detail = printer_condition(
        3,
        ["marker-supply-low-warning"],
        message="Toner low",
        markers=[("Black Toner", 4), ("Cyan Toner", 80), ("Waste", -3)],
    )
    assert (condition, fault_code) == (C.OK, None)
    assert detail == (
        "Toner low; reasons: marker-supply-low-warning; markers: Black Toner 4%, Cyan Toner 80%"
    )


def test_queue_that_rejects_jobs_is_offline_unless_a_reason_is_more_exact() -> None:
    assert printer_condition(3, ["none"], accepting_jobs=False)[:2] == (
        C.OFFLINE,
        "not-accepting-jobs",
    )
    assert printer_condition(3, ["media-low"], accepting_jobs=False) == (
        C.OFFLINE,
        "not-accepting-jobs",
        "reasons: media-low",
    )
    assert printer_condition(None, [], accepting_jobs=False)[:2] == (
        C.OFFLINE,
        "not-accepting-jobs",
    )
    assert printer_condition(5, ["media-jam"], accepting_jobs=False)[0] is C.JAM


def test_detail_and_fault_code_fit_the_wire_limits() -> None:
    keyword = "x" * 200 + "-error"
    condition, fault_code, detail = printer_condition(4, [keyword], message="m" * 400)
    assert condition is C.UNKNOWN
    assert fault_code is not None
    assert len(fault_code) == 64
    assert detail is not None
    assert len(detail) == 256


# ------------------------------------------------------------ the probe against real HTTP


@dataclass
class FakeCups:
    """A loopback HTTP server answering IPP like cupsd; ``reply`` decides each answer."""

    port: int
    reply: Callable[[bytes], tuple[int, bytes]]
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    def uri(self, queue: str = "HP") -> str:
        return f"ipp://127.0.0.1:{self.port}/printers/{queue}"


@pytest.fixture
def cups() -> Iterator[FakeCups]:
    state = FakeCups(port=0, reply=lambda body: (200, printer_response(3, ["none"])))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, self.headers["Content-Type"], body))
            status, payload = state.reply(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/ipp")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _echoing(payload: Callable[[int], bytes]) -> Callable[[bytes], tuple[int, bytes]]:
    """A reply that answers with the request's own request-id, like cupsd."""

    def reply(body: bytes) -> tuple[int, bytes]:
        return 200, payload(struct.unpack(">I", body[4:8])[0])

    return reply


def test_probe_posts_a_real_get_printer_attributes_and_reports_ok(cups: FakeCups) -> None:
    cups.reply = _echoing(lambda rid: printer_response(3, ["none"], request_id=rid))
    probe = IppProbe("a4_printer", cups.uri(), timeout_s=2)
    assert isinstance(probe, Probe)

    status = probe.read()

    assert status.name == "a4_printer"
    assert status.kind is PeripheralKind.A4_PRINTER
    assert status.condition is C.OK
    (path, content_type, body) = cups.requests[0]
    assert (path, content_type) == ("/printers/HP", "application/ipp")
    request = decode_ipp_response(body)
    assert request.status_code == 0x000B
    assert request.values("printer-uri", group_tag=0x01) == (cups.uri(),)


def test_probe_maps_paper_out_from_the_printer(cups: FakeCups) -> None:
    cups.reply = _echoing(
        lambda rid: printer_response(
            5, ["media-empty-error", "media-low-warning"], message="Load paper", request_id=rid
        )
    )
    status = IppProbe("receipt", cups.uri(), kind=PeripheralKind.RECEIPT_PRINTER).read()
    assert (status.condition, status.fault_code) == (C.PAPER_OUT, "media-empty-error")
    assert status.detail is not None
    assert status.detail.startswith("Load paper")


def test_probe_uses_a_new_request_id_each_read(cups: FakeCups) -> None:
    cups.reply = _echoing(lambda rid: printer_response(3, ["none"], request_id=rid))
    probe = IppProbe("p", cups.uri())
    probe.read()
    probe.read()
    ids = [decode_ipp_response(body).request_id for _, _, body in cups.requests]
    assert ids == [1, 2]


def test_probe_reports_a_missing_queue_http_404_as_offline(cups: FakeCups) -> None:
    cups.reply = lambda body: (404, b"")
    status = IppProbe("p", cups.uri("GONE")).read()
    assert (status.condition, status.fault_code) == (C.OFFLINE, "http-404")


def test_probe_reports_ipp_not_found_status_as_offline(cups: FakeCups) -> None:
    cups.reply = _echoing(lambda rid: response(status=0x0406, request_id=rid))
    status = IppProbe("p", cups.uri()).read()
    assert (status.condition, status.fault_code) == (C.OFFLINE, "ipp-status-0x0406")


def test_probe_reports_http_500_as_unknown(cups: FakeCups) -> None:
    cups.reply = lambda body: (500, b"Internal Server Error")
    status = IppProbe("p", cups.uri()).read()
    assert (status.condition, status.fault_code) == (C.UNKNOWN, "http-500")


def test_probe_reports_a_garbage_body_as_unknown_not_an_exception(cups: FakeCups) -> None:
    cups.reply = lambda body: (200, b"\x01\x01\x00\x00garbage")
    status = IppProbe("p", cups.uri()).read()
    assert (status.condition, status.fault_code) == (C.UNKNOWN, "bad-ipp-response")


def test_probe_rejects_an_answer_to_another_request(cups: FakeCups) -> None:
    cups.reply = lambda body: (200, printer_response(3, ["none"], request_id=12345))
    status = IppProbe("p", cups.uri()).read()
    assert (status.condition, status.fault_code) == (C.UNKNOWN, "bad-ipp-response")


def test_probe_refuses_a_response_larger_than_its_limit(cups: FakeCups) -> None:
    cups.reply = _echoing(
        lambda rid: response(attr(0x41, "printer-info", "x" * 30000), request_id=rid)
    )
    status = IppProbe("p", cups.uri(), max_response_bytes=4096).read()
    assert (status.condition, status.fault_code) == (C.UNKNOWN, "response-too-large")


def test_probe_reports_a_printer_that_never_answers_as_offline_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        status = IppProbe("p", f"ipp://127.0.0.1:{port}/printers/HP", timeout_s=0.5).read()
    assert (status.condition, status.fault_code) == (C.OFFLINE, "timeout")
    assert status.detail == f"no answer from 127.0.0.1:{port} within 0.5 s"


def test_probe_reports_connection_refused_as_offline() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    status = IppProbe("p", f"ipp://127.0.0.1:{port}/printers/HP", timeout_s=1).read()
    assert (status.condition, status.fault_code) == (C.OFFLINE, "connection-refused")


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1/printers/HP", "ipp://127.0.0.1", "ipps://h/printers/q", "HP"]
)
def test_probe_refuses_a_uri_that_is_not_ipp_host_path(uri: str) -> None:
    with pytest.raises(ValueError, match="ipp://"):
        IppProbe("p", uri)

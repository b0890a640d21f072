"""The EST request parsers never fail on hostile input with anything but a refusal: any body is a
CSR or ``bad_csr``, any Authorization header is credentials or ``bad_token`` (Hypothesis)."""

from __future__ import annotations

import base64
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from server.device_ca import generate_key
from server.errors import EnrollmentRefusedError
from server.est import _basic_credentials, _csr
from tests.support.device_identity import csr_for


def _outcome(parse: Callable[[], object]) -> str:
    """``parsed`` or ``reason/status`` of the refusal; any other exception propagates."""
    try:
        parse()
    except EnrollmentRefusedError as exc:
        return f"{exc.reason}/{exc.status}"
    return "parsed"


@given(st.binary(max_size=2048))
def test_any_body_is_a_csr_or_a_bad_csr_refusal(body: bytes) -> None:
    outcome = _outcome(lambda: _csr(body))
    assert outcome in {"parsed", "bad_csr/400"}


def test_a_csr_is_read_as_base64_der_with_line_breaks_and_as_pem() -> None:
    csr = csr_for(generate_key(), "T-1")
    der = csr.public_bytes(serialization.Encoding.DER)
    assert _csr(base64.encodebytes(der)) == csr
    assert _csr(csr.public_bytes(serialization.Encoding.PEM)) == csr


@given(st.text(max_size=300))
def test_any_authorization_header_is_credentials_or_a_bad_token_refusal(header: str) -> None:
    outcome = _outcome(lambda: _basic_credentials(header))
    assert outcome in {"parsed", "bad_token/401"}
    if outcome == "parsed":
        user, password = _basic_credentials(header)
        assert user
        assert password


def test_basic_credentials_split_at_the_first_colon() -> None:
    header = "Basic " + base64.b64encode(b"T-1:se:cret").decode()
    assert _basic_credentials(header) == ("T-1", "se:cret")
    assert _basic_credentials(None) == (None, None)

"""The one broker-URL parser: defaults, refusals, and agent and server agreeing on both."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.config import AgentConfig, AgentConfigError, load_agent_config
from protocol.broker_url import BrokerAddress, BrokerUrlError, parse_broker_url
from server.config import Settings

VALID = {
    "mqtt://10.0.0.5": BrokerAddress("10.0.0.5", 1883, tls=False),
    "mqtt://broker.example/": BrokerAddress("broker.example", 1883, tls=False),
    "mqtts://broker.example": BrokerAddress("broker.example", 8883, tls=True),
    "mqtts://b:9000": BrokerAddress("b", 9000, tls=True),
    "mqtt://[::1]:1884": BrokerAddress("::1", 1884, tls=False),
    "MQTT://Broker.Example:1883": BrokerAddress("broker.example", 1883, tls=False),
}

INVALID = {
    "http://x:1883": "mqtt:// or mqtts://",
    "broker.example:1883": "mqtt:// or mqtts://",
    "mqtt://": "needs a host",
    "mqtt://:1883": "needs a host",
    "mqtt://x:99999": "1 to 65535",
    "mqtt://x:0": "1 to 65535",
    "mqtt://x:port": "1 to 65535",
    "mqtt://x/kf": "without path",
    "mqtt://x?a=1": "without path",
    "mqtt://x#frag": "without path",
    "mqtt://user:pw@x": "credentials",
    "mqtt://user@x": "credentials",
    "mqtt://[::1": "not a URL",
}


@pytest.fixture(autouse=True)
def _no_kioskfleet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KIOSKFLEET_") and not name.startswith("KIOSKFLEET_TEST"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("url", "expected"), VALID.items())
def test_a_broker_url_gives_host_port_and_tls_with_the_scheme_default_port(
    url: str, expected: BrokerAddress
) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(("url", "problem"), INVALID.items())
def test_an_unworkable_broker_url_is_refused_with_a_value_error_naming_the_problem(
    url: str, problem: str
) -> None:
    with pytest.raises(BrokerUrlError, match=problem) as caught:
        parse_broker_url(url)
    assert isinstance(caught.value, ValueError)
    assert problem in caught.value.problem


def test_a_refused_url_never_repeats_its_password() -> None:
    for url in ("mqtt://kiosk:s3cret@x", "ftp://kiosk:s3cret@x", "mqtt://kiosk:s3cret@[::1"):
        with pytest.raises(BrokerUrlError) as caught:
            parse_broker_url(url)
        assert "s3cret" not in str(caught.value)
        assert "***@" in caught.value.url


@pytest.mark.parametrize("url", VALID)
def test_agent_and_server_read_a_broker_url_the_same_way(url: str) -> None:
    agent = AgentConfig(terminal_id="T-1", hall="h", region="r", model="m", broker_url=url)
    assert Settings(broker_url=url).broker == agent.broker == parse_broker_url(url)


@pytest.mark.parametrize("url", INVALID)
def test_agent_and_server_refuse_the_same_broker_urls(url: str) -> None:
    with pytest.raises(ValidationError, match="broker_url"):
        Settings(broker_url=url)
    with pytest.raises(AgentConfigError, match="broker_url"):
        load_agent_config(None, terminal_id="T-1", hall="h", region="r", model="m", broker_url=url)


_HOSTS = st.one_of(
    st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(host=_HOSTS, port=st.integers(1, 65535), tls=st.booleans())
def test_the_canonical_url_of_an_address_parses_back_to_it(host: str, port: int, tls: bool) -> None:
    address = BrokerAddress(host, port, tls)
    assert parse_broker_url(address.url) == address


@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused_with_a_broker_url_error(text: str) -> None:
    try:
        address = parse_broker_url(text)
    except BrokerUrlError:
        return
    assert address.host
    assert 1 <= address.port <= 65535

"""Where the broker listens: the one parser of ``mqtt://`` and ``mqtts://`` URLs.

The agent (``broker_url``, or each of ``broker_urls``, in agent.toml) and the server
(``KIOSKFLEET_BROKER_URL``) both name the broker this way, and both parse it
here, so the two sides cannot disagree on a default port or on what a valid
URL is. A broker URL is ``mqtt://host[:port]`` (plain TCP, port 1883 by default)
or ``mqtts://host[:port]`` (TLS, 8883); an IPv6 host goes in brackets
(``mqtt://[::1]:1883``). It has no path, query, fragment or credentials: the
TLS files are settings of their own, and a password must never sit in a URL
that ends up in logs.

Pure: standard library only, no socket, no DNS lookup. ``parse_broker_url``
raises ``BrokerUrlError`` (a ``ValueError``, so pydantic validators report it as
a field error) whose message never repeats the credentials of the URL it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final
from urllib.parse import SplitResult, urlsplit

__all__ = ["DEFAULT_PORTS", "BrokerAddress", "BrokerUrlError", "parse_broker_url"]

DEFAULT_PORTS: Final = MappingProxyType({"mqtt": 1883, "mqtts": 8883})
"""The port a scheme means when the URL names none."""


class BrokerUrlError(ValueError):
    """A broker URL that cannot work. ``problem`` says why; ``url`` is the URL as given, with
    any credentials replaced by ``***``."""

    def __init__(self, problem: str, url: str) -> None:
        super().__init__(f"{problem} (got {url!r})")
        self.problem = problem
        self.url = url


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed broker URL: ``tls`` is true for ``mqtts://``."""

    host: str
    port: int
    tls: bool

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def url(self) -> str:
        """The canonical URL (port always written); ``parse_broker_url(a.url) == a``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

    Raises BrokerUrlError naming what is wrong: another scheme, no host, a port
    outside 1..65535, a path, query or fragment, or credentials.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise BrokerUrlError(f"not a URL: {exc}", _redacted(url, None)) from None
    shown = _redacted(url, parts)
    if parts.scheme not in DEFAULT_PORTS:
        raise BrokerUrlError("a broker URL starts with mqtt:// or mqtts://", shown)
    if parts.username is not None or parts.password is not None:
        raise BrokerUrlError("credentials do not belong in a broker URL", shown)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerUrlError(
            "a broker URL is mqtt[s]://host[:port], without path, query or fragment", shown
        )
    if not parts.hostname:
        raise BrokerUrlError("a broker URL needs a host", shown)
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        raise BrokerUrlError("the port must be a number from 1 to 65535", shown) from None
    if port == 0:
        raise BrokerUrlError("the port must be a number from 1 to 65535", shown)
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
    )


def _redacted(url: str, parts: SplitResult | None) -> str:
    """``url`` with whatever stands before an ``@`` in its authority replaced by ``***``."""
    if parts is None:
        scheme, sep, rest = url.partition("://")
        authority, slash, tail = rest.partition("/")
        if sep and "@" in authority:
            return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{tail}"
        return url
    if "@" not in parts.netloc:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()

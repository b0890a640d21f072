"""A minimal client of the server's HTTP API for the operator's commands that act on a running
server (``kioskfleet terminal decommission``): only a running server can clear a terminal's
retained state at the broker and drop it from its fleet state, so these go through the API
with a bearer token, never to the database directly.

Standard library only (urllib, ssl). HTTPS is verified against ``ca_file`` (the fleet chain)
when given, else against the system's trust store.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ApiAnswer", "ApiClientError", "call", "get", "post"]


class ApiClientError(Exception):
    """The server could not be reached, or its answer was not JSON."""


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: dict[str, Any]

    @property
    def message(self) -> str:
        """The server's own sentence for an error answer (``{"error", "message"}``)."""
        return str(self.body.get("message") or self.body.get("error") or self.status)


def read_token(token_file: Path) -> str:
    """The token in ``token_file`` (surrounding whitespace removed). Raises OSError."""
    token = token_file.read_text(encoding="utf-8").strip()
    if not token:
        raise OSError(f"{token_file} is empty")
    return token


def post(
    base_url: str,
    path: str,
    *,
    token: str,
    ca_file: Path | None = None,
    timeout_s: float = 30,
    body: dict[str, Any] | None = None,
) -> ApiAnswer:
    """POST ``path`` (``body`` as JSON, or none) with the bearer ``token``; the answer
    whatever its status.

    Raises ApiClientError if the server cannot be reached or does not answer JSON.
    """
    return call(
        "POST", base_url, path, token=token, ca_file=ca_file, timeout_s=timeout_s, body=body
    )


def get(
    base_url: str, path: str, *, token: str, ca_file: Path | None = None, timeout_s: float = 30
) -> ApiAnswer:
    """GET ``path`` with the bearer ``token``. Raises ApiClientError (see ``post``)."""
    return call("GET", base_url, path, token=token, ca_file=ca_file, timeout_s=timeout_s)


def call(
    method: str,
    base_url: str,
    path: str,
    *,
    token: str,
    ca_file: Path | None = None,
    timeout_s: float = 30,
    body: dict[str, Any] | None = None,
) -> ApiAnswer:
    """``method`` on ``path``; the answer whatever its status. Raises ApiClientError."""
    url = base_url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise ApiClientError(f"not an http(s) URL: {base_url!r}")
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=data, method=method, headers=headers
    )
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:  # noqa: S310
            return ApiAnswer(response.status, _json(response.read()))
    except urllib.error.HTTPError as exc:
        return ApiAnswer(exc.code, _json(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        raise ApiClientError(f"cannot reach {base_url}: {exc}") from None


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        raise ApiClientError("the server's answer is not JSON") from None
    return value if isinstance(value, dict) else {"value": value}

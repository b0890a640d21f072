"""Talking to a kioskfleet server's release API: what ``kioskfleet repo upload`` and
``kioskfleet vendor publish`` do over HTTP(S) (httpx).

Artifacts go up in chunks at an offset: after a broken connection the next call asks
how much arrived (``GET .../uploads/<name>``) and continues from there, so a large
artifact is never sent twice nor held in memory whole. Raises ``UpdateClientError``
with the server's error code and message.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx

__all__ = ["DEFAULT_CHUNK", "UpdateClient", "UpdateClientError"]

DEFAULT_CHUNK: Final = 4 * 1024 * 1024


class UpdateClientError(Exception):
    """The server refused or could not be reached; ``code`` is its error code (or
    ``unreachable``), ``status`` the HTTP status (0 when there was none)."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        self.code = code
        self.message = message
        self.status = status
        super().__init__(f"{code}: {message}")


class UpdateClient:
    """One server and one token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        ca_file: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``ca_file``: the CA to trust for an https:// server (default: the system's)."""
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
        )
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            verify=verify,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> UpdateClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UpdateClientError("unreachable", str(exc)) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = str(body.get("error")), str(body.get("message"))
            except ValueError:
                code, message = f"http_{response.status_code}", response.text[:200]
            raise UpdateClientError(code, message, response.status_code)
        result: dict[str, Any] = response.json()
        return result

    def upload_metadata(self, role: str, data: bytes) -> dict[str, Any]:
        """Upload operator-signed ``root`` or ``targets``."""
        return self._call(
            "POST",
            f"/api/v1/updates/{role}",
            content=data,
            headers={"Content-Type": "application/json"},
        )

    def received(self, vendor: str, name: str) -> int:
        return int(
            self._call("GET", f"/api/v1/updates/vendors/{vendor}/uploads/{name}")["received"]
        )

    def upload_artifact(
        self,
        vendor: str,
        name: str,
        path: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        resume: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Send ``path`` as ``<vendor>/<name>`` chunk by chunk, continuing what the server
        already holds when ``resume``; returns the size the server holds."""
        total = path.stat().st_size
        offset = self.received(vendor, name) if resume else 0
        if offset > total:
            offset = 0
        with path.open("rb") as f:
            f.seek(offset)
            while True:
                chunk = f.read(chunk_size)
                if not chunk and offset > 0:
                    break
                offset = int(
                    self._call(
                        "PUT",
                        f"/api/v1/updates/vendors/{vendor}/uploads/{name}",
                        params={"offset": offset},
                        content=chunk,
                        headers={"Content-Type": "application/octet-stream"},
                    )["received"]
                )
                if progress is not None:
                    progress(offset, total)
                if not chunk or offset >= total:
                    break
        return offset

    def publish_role(self, vendor: str, data: bytes) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/api/v1/updates/vendors/{vendor}/role",
            content=data,
            headers={"Content-Type": "application/json"},
        )

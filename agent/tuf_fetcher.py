"""python-tuf's network port for the agent: resumable target downloads, metadata remembered.

``ResumingFetcher(target_base_url=..., partial_dir=...)`` is a ``tuf.ngclient`` fetcher
(python-tuf's own ``Urllib3Fetcher`` for metadata). For a target URL it keeps what
arrived in ``partial_dir/<last URL segment>.part`` (the segment is ``<sha256>.<name>``
with consistent snapshots, so a partial file belongs to one target's bytes) and, when a
later download of the same URL finds a partial file, asks only for the rest
(``Range: bytes=N-``) and hands python-tuf the kept bytes followed by the new ones.
python-tuf still checks the whole: its ``download_file`` refuses more than TUF's length,
and ``verify_length_and_hashes`` the hashes; the partial file never grows past that
length. The caller deletes the partial file (``discard_partial()``) after a verified or
a refused download; a broken connection leaves it for the next attempt.

A server that ignores the range (answers 200) is read from the start again; one that
answers 416 (the partial file is already as long as the target, or longer) too.

``last_metadata`` is ``(url, bytes)`` of the metadata file fetched last: python-tuf
verifies each file right after fetching it, so after a refusal it is the refused file
(``agent.tuf_reasons`` names the reason from it).

Never: decide whether bytes are good (python-tuf does), or send a Range beyond TUF's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import urllib3
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import Urllib3Fetcher

__all__ = ["ResumingFetcher"]


class ResumingFetcher(Urllib3Fetcher):
    """See the module docstring."""

    def __init__(
        self,
        *,
        target_base_url: str,
        partial_dir: Path,
        socket_timeout: int = 30,
        chunk_size: int = 65_536,
    ) -> None:
        super().__init__(
            socket_timeout=socket_timeout, chunk_size=chunk_size, app_user_agent="kioskfleet"
        )
        self._target_base_url = target_base_url
        self._partial_dir = partial_dir
        self._pool = urllib3.PoolManager(retries=False)
        self._cap: int | None = None
        self.last_metadata: tuple[str, bytes] | None = None
        self.resumed_from: int = 0  # bytes kept from an earlier attempt by the last download
        self._last_target_url: str | None = None

    def partial_path(self, url: str) -> Path:
        """Where the bytes of ``url`` that arrived so far are kept."""
        return self._partial_dir / f"{url.rsplit('/', 1)[-1]}.part"

    def discard_partial(self) -> None:
        """Forget what arrived of the last target downloaded (verified, or refused)."""
        if self._last_target_url is not None:
            self.partial_path(self._last_target_url).unlink(missing_ok=True)

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[Any]]:
        self._cap = max_length
        try:
            with super().download_file(url, max_length) as file:
                yield file
        finally:
            self._cap = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self._target_base_url):
            return self._remembered(url, super()._fetch(url))
        return self._resumed(url)

    def _remembered(self, url: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        received: list[bytes] = []
        self.last_metadata = (url, b"")
        for chunk in chunks:
            received.append(chunk)
            yield chunk
        self.last_metadata = (url, b"".join(received))

    def _request(self, url: str, have: int) -> urllib3.BaseHTTPResponse:
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            return self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                timeout=urllib3.Timeout(self.socket_timeout),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise DownloadError(f"{url}: {exc}") from exc

    def _resumed(self, url: str) -> Iterator[bytes]:
        self._last_target_url = url
        part = self.partial_path(url)
        have = part.stat().st_size if part.is_file() else 0
        if self._cap is not None and have > self._cap:
            have = 0
        response = self._request(url, have)
        if have and response.status == 416:  # the partial file cannot be continued
            response.release_conn()
            have = 0
            response = self._request(url, have)
        if response.status >= 400:
            response.release_conn()
            raise DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        range_ = response.headers.get("Content-Range", "")
        if have and (response.status != 206 or not range_.startswith(f"bytes {have}-")):
            have = 0  # the server sent the whole file: start over
        self.resumed_from = have
        return self._continued(response, part, have)

    def _continued(
        self, response: urllib3.BaseHTTPResponse, part: Path, have: int
    ) -> Iterator[bytes]:
        try:
            if have:
                with part.open("rb") as kept:
                    left = have
                    while left > 0 and (chunk := kept.read(min(self.chunk_size, left))):
                        left -= len(chunk)
                        yield chunk
            written = have
            with part.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                for chunk in response.stream(self.chunk_size):
                    room = len(chunk) if self._cap is None else max(0, self._cap - written)
                    if room:
                        out.write(chunk[:room])
                        out.flush()
                    written += len(chunk)
                    yield chunk
        except urllib3.exceptions.HTTPError as exc:  # connection cut, incomplete body
            raise DownloadError(f"download broken after the server's bytes: {exc}") from exc
        finally:
            response.release_conn()

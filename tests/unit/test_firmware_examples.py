"""firmware_manifests/examples/ is what scripts/firmware_examples.py writes, and python-tuf's
own client accepts it: the example is a real signed repository (with throw-away keys)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from firmware_manifests.release_manifest import CUSTOM_KEY, ReleaseManifest, manifest_from_custom

ROOT: Final = Path(__file__).resolve().parents[2]
EXAMPLES: Final = ROOT / "firmware_manifests" / "examples"


class _FileFetcher(FetcherInterface):
    """A fake fetcher: ``http://examples/<relative path>`` from a directory."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.base / urlparse(url).path.lstrip("/")
        if not path.is_file():
            raise DownloadHTTPError(f"{url} not found", 404)
        return iter([path.read_bytes()])


def _files(base: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
    }


def test_the_examples_are_what_the_generator_writes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "firmware_examples.py"), "--out", str(tmp_path)],
        check=True,
    )
    assert _files(tmp_path) == _files(EXAMPLES)
    assert "THROW-AWAY" in (EXAMPLES / "README.md").read_text()


def test_python_tufs_client_accepts_the_example_and_reads_its_manifest(tmp_path: Path) -> None:
    updater = Updater(
        metadata_dir=str(tmp_path),
        metadata_base_url="http://examples/metadata/",
        target_dir=str(tmp_path),
        target_base_url="http://examples/targets/",
        fetcher=_FileFetcher(EXAMPLES),
        bootstrap=(EXAMPLES / "metadata" / "1.root.json").read_bytes(),
    )
    updater.refresh()
    info = updater.get_targetinfo("acme/kiosk-app-1.4.0.tar")
    assert info is not None
    manifest = manifest_from_custom(info.custom)
    standalone = ReleaseManifest.model_validate(
        json.loads((EXAMPLES / "release-manifest.json").read_text())
    )
    assert manifest == standalone
    assert info.custom[CUSTOM_KEY]["release_counter"] == 14
    assert (
        Path(updater.download_target(info, str(tmp_path / "a.tar")))
        .read_bytes()
        .startswith(b"THROW-AWAY")
    )

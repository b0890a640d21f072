"""Regenerate firmware_manifests/release-manifest.schema.json and firmware_manifests/examples/.

    python scripts/firmware_examples.py [--check]

The schema is generated from ``firmware_manifests.release_manifest.ReleaseManifest``.
The examples are a small signed TUF repository (root, top-level targets delegating
one vendor, the vendor's role, snapshot, timestamp) and one release manifest,
signed with THROW-AWAY keys generated on each run and not kept: they show the
shape, they are not a trust anchor. ``--check`` exits 1 if the schema file differs
from the model (tests/unit/test_release_manifest.py runs the same check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_manifests.release_manifest import (  # noqa: E402 - after the path is set
    SCHEMA_FILE,
    manifest_schema_text,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check the schema file")
    args = parser.parse_args()
    if args.check:
        return 0 if SCHEMA_FILE.read_text() == manifest_schema_text() else 1
    SCHEMA_FILE.write_text(manifest_schema_text())
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

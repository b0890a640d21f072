"""A server with every optional part on (device CA, registry, EST, HTTPS), so that every
route exists: for guardrail tests that walk ``app.routes``."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.main import Server
from tests.support.device_identity import make_ca

__all__ = ["start_with_every_part"]


def start_with_every_part(
    start_server: Callable[..., Server], directory: Path
) -> tuple[Server, ssl.SSLContext]:
    """The server ``start_server`` (a ``ServerFactory``) starts with a fresh fleet CA under
    ``directory``, and a TLS context that trusts its HTTPS certificate."""
    fleet_ca = make_ca(directory)
    extra: dict[str, Any] = {
        "ca_dir": fleet_ca.directory,
        "https_cert_file": fleet_ca.https_cert,
        "https_key_file": fleet_ca.https_key,
    }
    server = start_server(**extra)
    return server, ssl.create_default_context(cafile=str(fleet_ca.paths.chain))

"""The project's own configuration files, found the same way in a checkout and in an install.

``kioskfleet/shipped/`` holds symlinks to ``broker/mosquitto.conf``, the
Prometheus files under ``monitoring/prometheus/`` and the agent's systemd unit
``packaging/systemd/kioskfleet-agent.service``, so the files keep one home at
the top of the checkout (where operators and docs look for them) while a built
wheel carries copies as package data. The harnesses (``LocalBroker``,
``LocalPrometheus``) and ``make demo`` read them through ``shipped_file``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final

__all__ = ["SHIPPED_FILES", "shipped_file"]

SHIPPED_FILES: Final = (
    "mosquitto.conf",
    "prometheus.yml",
    "kioskfleet.rules.yml",
    "kioskfleet-agent.service",
)


def shipped_file(name: str) -> Path:
    """The real path of the shipped file ``name``. Raises FileNotFoundError if it is missing."""
    if name not in SHIPPED_FILES:
        raise FileNotFoundError(f"{name!r} is not one of the shipped files {SHIPPED_FILES}")
    path = Path(str(resources.files("kioskfleet") / "shipped" / name)).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"shipped file {path} is missing (a broken install or checkout)")
    return path

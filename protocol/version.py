"""The kioskfleet version, for the agent, the server and the command line alike.

It lives beside the wire so that ``agent/`` and ``server/`` can name their
version (``agent_version``, the API's OpenAPI version, ``kioskfleet_build_info``)
without importing the command-line package ``kioskfleet``. It reads the installed
distribution's metadata once, at import; a source tree that was never installed
gets ``0.0.0+src``. Standard library only; no I/O beyond that metadata read.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("kioskfleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"

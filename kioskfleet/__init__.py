"""kioskfleet: the command-line entry point and the package version.

``__version__`` is defined in ``protocol.version`` (which the agent and the
server import, never this package) and re-exported here.
"""

from protocol.version import __version__

__all__ = ["__version__"]

"""kioskfleet: the command-line entry point and the package version."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kioskfleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"

__all__ = ["__version__"]

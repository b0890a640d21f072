"""The server's exception hierarchy: what its boundaries raise instead of library errors.

Every adapter (database, broker, settings) translates the errors of the library
it wraps into one of these, so callers never catch ``sqlalchemy`` or ``paho``
exceptions::

    ServerError                 (base)
    ├── ConfigError             settings that cannot work (bad URL, missing TLS file)
    ├── StorageError            the database could not be reached or failed for now
    │   │                       (``operation`` names what was being done); worth retrying
    │   └── StorageDataError    the database refused these rows (a constraint or data
    │                           error): retrying the same rows fails again
    ├── BrokerError             the MQTT client could not be set up or used
    └── InvalidCursorError      a pagination cursor this server did not hand out
                                (also a ValueError)

Wire rejections are not here: they are ``protocol.errors.ProtocolError`` and
never leave the ingest, which counts and logs them. This module does no I/O.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "InvalidCursorError",
    "ServerError",
    "StorageDataError",
    "StorageError",
]


class ServerError(Exception):
    """Base class of every error the server raises on purpose."""


class ConfigError(ServerError):
    """Settings that cannot work."""


class StorageError(ServerError):
    """A database operation failed; ``operation`` says which one."""

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.message = message


class StorageDataError(StorageError):
    """The database refused the data itself (integrity or data error); a retry cannot help."""


class BrokerError(ServerError):
    """The MQTT client could not be configured, connected or used."""


class InvalidCursorError(ServerError, ValueError):
    """A pagination cursor that this server did not hand out."""

"""How every ``kioskfleet`` command logs: a plain text line or one JSON object per line.

``configure_logging`` is called once by the command line (kioskfleet/cli.py) before a
subcommand runs. The text format is for people at a terminal; the JSON format
(``--log-format json`` or ``KIOSKFLEET_LOG_FORMAT=json``) is for log collectors
(journald forwarders, Fluent Bit, Loki's promtail): each line is one object with
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, when there is one,
``exception`` (the formatted traceback).

Quiet by default: the libraries that log a line per job or per request (APScheduler
runs the server's jobs every few seconds) are held at WARNING unless ``verbose``.
This module only configures the ``logging`` module; it never writes a file.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final, Literal, TextIO

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_VARIABLE",
    "NOISY_LOGGERS",
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")
LOG_FORMAT_VARIABLE: Final = "KIOSKFLEET_LOG_FORMAT"
"""The environment variable that sets the default of ``--log-format``."""

NOISY_LOGGERS: Final[tuple[str, ...]] = ("apscheduler", "alembic.runtime.plugins")
"""Loggers held at WARNING unless ``--verbose``: APScheduler logs every job run
("Running job ... executed successfully"), i.e. a line every few seconds; Alembic lists
each plugin it sets up at every start (its migration lines stay)."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "INFO",
    log_format: LogFormat = "text",
    *,
    verbose: bool = False,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to ``stream`` (stderr).

    Replaces the root logger's handlers (calling it twice does not double lines) and
    returns the new handler. ``verbose`` lets the ``NOISY_LOGGERS`` through at ``level``.
    Raises ValueError for an unknown level or format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    name = level.upper()
    if not isinstance(logging.getLevelName(name), int):
        raise ValueError(f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR)")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.NOTSET if verbose else logging.WARNING)
    return handler

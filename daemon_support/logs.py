"""Logging set-up: one line per record, journald-friendly, key=value context.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the sd-daemon priority prefix
(``<6>``) so journald keeps the level, and no timestamp is printed because journald adds its own.

``--log-format json`` (or ``EDGEFLEET_LOG_FORMAT=json``; the flag wins) prints one JSON object
per line instead, for log shippers: ``ts`` (UTC, ISO 8601 with ms), ``level``, ``logger``,
``message``, then the record's ``kv`` context as top-level keys (a key that would replace one
of those four is kept as ``kv.<key>``), and ``exception`` with the traceback. Under journald
the priority prefix stays in front of the object, so the level survives there too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime

LOG_FORMATS = ("line", "json")
LOG_FORMAT_ENV = "EDGEFLEET_LOG_FORMAT"
_RESERVED = frozenset({"ts", "level", "logger", "message", "exception"})

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class LineFormatter(logging.Formatter):
    """``[ts] LEVEL logger: message key=value ...``; extras given as ``extra={"kv": {...}}``."""

    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        kv = getattr(record, "kv", None)
        if isinstance(kv, dict):
            message += "".join(f" {k}={_quote(v)}" for k, v in kv.items())
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{record.name}: {message}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}Z {record.levelname:<7} {record.name}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the keys)."""

    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, object] = {
            "ts": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        kv = getattr(record, "kv", None)
        if isinstance(kv, dict):
            for key, value in kv.items():
                name = str(key)
                entry[f"kv.{name}" if name in _RESERVED else name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # default=str: a value JSON cannot hold (a datetime, a Path, an error) as its text.
        text = json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def add_log_format(parser: argparse.ArgumentParser) -> None:
    """``--log-format line|json``; without it ``EDGEFLEET_LOG_FORMAT``, else ``line``."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        metavar="FORMAT",
        help=f"line or json (default: ${LOG_FORMAT_ENV}, else line)",
    )


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def setup(level: str = "INFO", *, log_format: str | None = None) -> None:
    """Send all records to stderr, one per line; call once from the command line entry.

    ``log_format`` is ``line`` or ``json`` (anything else is a ValueError); None reads
    ``EDGEFLEET_LOG_FORMAT``. An unknown value there gives the line format and a warning
    saying so, rather than a daemon that does not start over its log format.
    """
    if log_format is not None and log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    from_env = os.environ.get(LOG_FORMAT_ENV, "").strip().lower()
    chosen = log_format or (from_env if from_env in LOG_FORMATS else "line")
    journald = "JOURNAL_STREAM" in os.environ
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(journald=journald) if chosen == "json" else LineFormatter(journald=journald)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if log_format is None and from_env and from_env not in LOG_FORMATS:
        logging.getLogger("daemon_support.logs").warning(
            "%s=%s is not a log format (%s): using line", LOG_FORMAT_ENV, from_env, LOG_FORMATS
        )

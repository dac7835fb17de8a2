"""Logging set-up: one line per record, journald-friendly, key=value context.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the sd-daemon priority prefix
(``<6>``) so journald keeps the level, and no timestamp is printed because journald adds its own.
"""

from __future__ import annotations

import logging
import os
import sys
import time

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


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def setup(level: str = "INFO") -> None:
    """Send all records to stderr in the line format; call once from the command line entry."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(journald="JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

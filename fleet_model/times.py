"""Times as Kubernetes writes them (RFC 3339, UTC, whole seconds), one way for the whole model."""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["MAX_TIME_CHARS", "format_time", "parse_time"]

MAX_TIME_CHARS = 64

_EPOCH_LIMIT = 253402300799.0  # 9999-12-31T23:59:59Z: RFC 3339 cannot say later


def format_time(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 in UTC, to the second (Kubernetes' metav1.Time)."""
    clamped = min(max(seconds, 0.0), _EPOCH_LIMIT)
    return datetime.fromtimestamp(math.floor(clamped), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> float | None:
    """An RFC 3339 timestamp with a zone as seconds since the epoch, or None if it is not one."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TIME_CHARS:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or "T" not in text.upper():
        return None
    return moment.timestamp()

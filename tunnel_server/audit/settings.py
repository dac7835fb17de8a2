"""How much audit log is kept, and how it is pruned.

Defaults suit a fleet of thousands of nodes run by a few operators: 90 days is what most
security reviews ask for, and 1,000,000 rows (~300 MB at ~300 bytes a row) is far more than
operators write in 90 days, so age is the limit that usually applies and rows bound the file
when a script writes in a loop.

Until ``tunnel-server run`` grows flags for them, the limits can be set from the environment
of the server process (docs/audit.md): ``EDGEFLEET_AUDIT_MAX_AGE`` (seconds),
``EDGEFLEET_AUDIT_MAX_ROWS`` and ``EDGEFLEET_AUDIT_PRUNE_INTERVAL`` (seconds). A value that is
not a number in range stops the server at start with a message naming it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """Retention of the audit log (``audit.db`` in the data dir)."""

    max_age: float = 90 * 86400.0
    """Seconds a record is kept: 90 days."""

    max_rows: int = 1_000_000
    """Records kept at most, newest first (~300 MB): bounds the file whatever the write rate."""

    prune_interval: float = 300.0
    """Seconds between pruning passes: the file overshoots its bounds by at most this long's
    writes."""

    prune_batch: int = 500
    """Rows deleted per statement; the pruner yields to the event loop between batches, so a
    first prune of a million old rows never holds the loop for long at a time (a batch of
    500 took ~10 ms on the busy 2-core test machine, one of 5,000 ~100 ms)."""


_ENV: dict[str, tuple[str, float, float]] = {
    "EDGEFLEET_AUDIT_MAX_AGE": ("max_age", 1.0, 100 * 365 * 86400.0),
    "EDGEFLEET_AUDIT_MAX_ROWS": ("max_rows", 1.0, 1e9),
    "EDGEFLEET_AUDIT_PRUNE_INTERVAL": ("prune_interval", 0.1, 86400.0),
}


def from_environment(env: Mapping[str, str], base: AuditSettings | None = None) -> AuditSettings:
    """``base`` (the defaults) with the ``EDGEFLEET_AUDIT_*`` values of ``env`` applied.

    Raises ValueError naming the variable when a value is not a number in range.
    """
    settings = base or AuditSettings()
    changes: dict[str, float | int] = {}
    for variable, (field, low, high) in _ENV.items():
        raw = env.get(variable)
        if raw is None or not raw.strip():
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            raise ValueError(f"{variable}={raw[:40]!r}: expected a number from {low:g} to {high:g}")
        changes[field] = int(value) if field == "max_rows" else value
    return dataclasses.replace(settings, **changes) if changes else settings  # type: ignore[arg-type]

"""The order of device model versions: which of two versions of a model is newer.

A version is what `DeviceModel` accepts (``1``, ``1.2``, ``1.2.3``, then optionally ``-pre``
or ``+build``). Missing parts count as 0 (``1.2`` = ``1.2.0``). As in semantic versioning, a
pre-release sorts before its release (``1.0.0-rc.1`` < ``1.0.0``), pre-release identifiers
compare numerically when both are numbers and as text otherwise (numbers first), and build
metadata (``+...``) does not count: ``1.0.0+a`` and ``1.0.0+b`` are the same version.
"""

from __future__ import annotations

import re

__all__ = ["VersionKey", "is_newer", "version_key"]

_PARTS = re.compile(r"([0-9]+(?:\.[0-9]+){0,2})(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
MAX_VERSION_LENGTH = 32
"""The model parser's bound on a version string, so parsing here is bounded too."""

VersionKey = tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]


def version_key(version: str) -> VersionKey:
    """A sort key for ``version``; ValueError if it is not a model version."""
    match = _PARTS.fullmatch(version) if len(version) <= MAX_VERSION_LENGTH else None
    if match is None:
        raise ValueError(f"not a model version: {version[:40]!r}")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    numbers += (0,) * (3 - len(numbers))
    pre = match.group(2)
    if pre is None:
        return numbers, 1, ()
    ids = tuple((0, int(part)) if part.isdigit() else (1, part) for part in pre.split("."))
    return numbers, 0, ids


def is_newer(version: str, than: str | None) -> bool:
    """Whether ``version`` sorts after ``than`` (anything is newer than None)."""
    return than is None or version_key(version) > version_key(than)

"""The one error family of device_models.

Every failure of this library is a `DeviceModelsError` (itself a `ValueError`), so a caller that
feeds it untrusted input needs one `except` clause. Each error carries the full list of
`Problem`s found, not just the first, so an API can answer "fix these three things" at once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DeviceModelsError",
    "DocumentError",
    "LimitExceededError",
    "ModelError",
    "Problem",
    "SequenceGapError",
    "ValidationError",
    "VersionConflictError",
]

# An error message lists at most this many problems; a hostile document could produce millions.
MAX_PROBLEMS = 50


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One thing wrong with an input: where (`path`, "" for the whole input) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.reason}"


class DeviceModelsError(ValueError):
    """Base of every error raised by device_models."""

    def __init__(self, summary: str, problems: tuple[Problem, ...]) -> None:
        self.summary = summary
        self.problems = problems
        lines = [summary, *(f"  {problem}" for problem in problems)]
        super().__init__("\n".join(lines))


class ModelError(DeviceModelsError):
    """A device model (YAML text or mapping) is invalid."""


class ValidationError(DeviceModelsError):
    """A value or patch does not fit the device model."""


class DocumentError(DeviceModelsError):
    """A twin document, patch or change is not well-formed JSON of the expected shape."""


class LimitExceededError(DeviceModelsError):
    """Applying the input would break a size or depth limit; nothing was changed."""


class VersionConflictError(DeviceModelsError):
    """The caller's expected `$version` is not the section's current one (HTTP 409)."""

    def __init__(self, *, section: str, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        reason = f"expected $version {expected}, current is {actual}"
        super().__init__("version conflict", (Problem(path=f"{section}.$version", reason=reason),))


class SequenceGapError(DeviceModelsError):
    """A change arrived before its predecessor from the same origin; deliver in order."""

    def __init__(self, *, origin: str, expected: int, got: int) -> None:
        self.origin = origin
        self.expected = expected
        self.got = got
        reason = f"change {origin}#{got} arrived but {origin}#{expected} is next"
        super().__init__("out-of-order change", (Problem(path="seq", reason=reason),))


class Problems:
    """Collects problems while walking an input, keeping at most `MAX_PROBLEMS` of them."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.dropped = 0
        self.limits = 0  # how many of the problems are broken size or depth limits

    def add(self, path: str, reason: str, *, limit: bool = False) -> None:
        self.limits += limit
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(Problem(path=path, reason=reason))
        else:
            self.dropped += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    def only_limits(self) -> bool:
        """Whether every problem is a broken limit (so the input is too big, not malformed)."""
        return self.limits == len(self.items) + self.dropped

    def raise_if_any(self, error: type[DeviceModelsError], summary: str) -> None:
        if not self.items:
            return
        problems = tuple(self.items)
        if self.dropped:
            more = Problem(path="", reason=f"... and {self.dropped} more problems")
            problems = (*problems, more)
        raise error(summary, problems)

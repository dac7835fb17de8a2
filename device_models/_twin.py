"""The twin document: desired and reported sections, versions, per-key metadata, delta.

Rules (docs/device-models.md has the long form):

- A twin has two sections, `desired` and `reported`. Each holds JSON values under
  user keys (never starting with `$`), a `$version` that grows by exactly one per accepted
  change, and `$metadata` mirroring the values: every key and every nested object member has
  `{"$lastUpdated": <epoch seconds>}`, and each object level (the section root included) keeps
  the time anything below it last changed, so deletions leave a trace (as Azure does).
- Changes are RFC 7386 JSON merge patches: objects merge, null deletes, the rest replaces.
- A change that would push a section past 32 KB (compact UTF-8 JSON of the values) or 10
  levels of nesting is refused whole; the twin is never left half-patched.
- Every operation returns a new `Twin`; no input or earlier twin is ever mutated.
- Time is an argument (`now`, epoch seconds); this module never reads a clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from device_models._errors import (
    DocumentError,
    LimitExceededError,
    Problem,
    Problems,
    VersionConflictError,
)
from device_models._json import (
    INT_MAX,
    MAX_DEPTH,
    MAX_SECTION_BYTES,
    JsonObject,
    JsonValue,
    checked_object,
    compact_size,
    copy_json,
    depth_of,
    join_path,
    json_equal,
    merge_object,
    merge_patch,
    type_name,
)

__all__ = [
    "LAST_UPDATED",
    "METADATA",
    "VERSION",
    "Section",
    "Twin",
    "TwinSection",
    "as_time",
    "check_limits",
    "checked_patch",
    "checked_time",
    "metadata_node",
    "stamp_metadata",
]

VERSION = "$version"
METADATA = "$metadata"
LAST_UPDATED = "$lastUpdated"


class Section(StrEnum):
    DESIRED = "desired"
    REPORTED = "reported"


def _empty() -> Mapping[str, JsonValue]:
    return MappingProxyType({})


def as_time(value: object) -> float | None:
    """`value` as epoch seconds if it is a finite number >= 0 (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= INT_MAX or not math.isfinite(value):
        return None
    return float(value)


def checked_time(now: object) -> float:
    """`now` as epoch seconds; DocumentError unless it is a finite number >= 0."""
    seconds = as_time(now)
    if seconds is None:
        reason = f"must be epoch seconds, a finite number >= 0 (got {type_name(now)})"
        raise DocumentError("invalid timestamp", (Problem(path="now", reason=reason),))
    return seconds


def checked_patch(patch: object) -> JsonObject:
    """A private copy of a merge patch for a section; DocumentError if it is not one."""
    problems = Problems()
    checked = checked_object(patch, path="", problems=problems, allow_null_members=True)
    if problems.only_limits():  # too deep or too many values: 413 rather than 400
        problems.raise_if_any(LimitExceededError, "twin limit exceeded")
    problems.raise_if_any(DocumentError, "invalid merge patch")
    return checked


def check_limits(values: Mapping[str, JsonValue], section: str) -> None:
    """Raise LimitExceededError if a section's values break the size or depth limit."""
    problems = Problems()
    depth = depth_of(values)
    if depth > MAX_DEPTH:
        problems.add(section, f"would be nested {depth} levels deep, more than {MAX_DEPTH}")
    else:  # only measure what the depth check let through: json.dumps recurses
        size = compact_size(values)
        if size > MAX_SECTION_BYTES:
            problems.add(section, f"would be {size} bytes, more than {MAX_SECTION_BYTES}")
    problems.raise_if_any(LimitExceededError, "twin limit exceeded")


def stamp_metadata(value: JsonValue, at: float) -> JsonObject:
    """Metadata for a freshly written value: every level stamped `at`."""
    node: JsonObject = {LAST_UPDATED: at}
    if isinstance(value, dict):
        for key, member in value.items():
            node[key] = stamp_metadata(member, at)
    return node


def _merge_metadata(
    meta: Mapping[str, JsonValue],
    old: Mapping[str, JsonValue],
    patch: Mapping[str, JsonValue],
    at: float,
) -> JsonObject:
    """The metadata after `patch` is merged into `old`: touched keys and their parents get `at`."""
    node = dict(meta)
    node[LAST_UPDATED] = at
    for key, value in patch.items():
        if value is None:
            node.pop(key, None)
            continue
        before = old.get(key)
        child = meta.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            child_meta = child if isinstance(child, dict) else {}
            node[key] = _merge_metadata(child_meta, before, value, at)
        else:
            # Replacing: the new value is the patch with its null members stripped (RFC 7386).
            node[key] = stamp_metadata(merge_patch(None, value), at)
    return node


@dataclass(frozen=True, kw_only=True, slots=True)
class TwinSection:
    """One section: values, `$version` (changes accepted so far) and per-key metadata."""

    version: int = 0
    values: Mapping[str, JsonValue] = field(default_factory=_empty)
    metadata: Mapping[str, JsonValue] = field(default_factory=_empty)

    def merged(self, patch: JsonObject, *, at: float, name: str) -> TwinSection:
        """This section with a checked patch merged in; LimitExceededError if too big."""
        values = merge_object(self.values, patch)
        check_limits(values, name)
        metadata = _merge_metadata(self.metadata, self.values, patch, at)
        return TwinSection(version=self.version + 1, values=values, metadata=metadata)

    def to_json(self) -> JsonObject:
        """`{...values, "$version": n, "$metadata": {...}}`, a fresh copy."""
        document: JsonObject = {key: copy_json(value) for key, value in self.values.items()}
        document[VERSION] = self.version
        document[METADATA] = {key: copy_json(value) for key, value in self.metadata.items()}
        return document

    @classmethod
    def from_json(cls, data: object, *, path: str) -> TwinSection:
        """Validate a section as `to_json` writes it (strict: metadata must mirror values)."""
        problems = Problems()
        if not isinstance(data, dict):
            problems.add(path, f"must be an object (got {type_name(data)})")
            problems.raise_if_any(DocumentError, "invalid twin document")
            return cls()
        version = _version(data.get(VERSION), join_path(path, VERSION), problems)
        raw_values = {key: value for key, value in data.items() if key not in (VERSION, METADATA)}
        values = checked_object(raw_values, path=path, problems=problems, allow_null_members=False)
        metadata: JsonObject = {}
        if not problems:
            meta_path = join_path(path, METADATA)
            metadata = metadata_node(values, data.get(METADATA), meta_path, problems, root=True)
        problems.raise_if_any(DocumentError, "invalid twin document")
        check_limits(values, path)
        return cls(version=version, values=values, metadata=metadata)


def _version(value: object, path: str, problems: Problems) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_MAX:
        return value
    problems.add(path, f"must be an integer >= 0 (got {type_name(value)})")
    return 0


def metadata_node(
    value: JsonValue, meta: object, path: str, problems: Problems, *, root: bool
) -> JsonObject:
    """A copy of the metadata for `value`, checked to mirror it exactly."""
    if not isinstance(meta, dict):
        problems.add(path, f"must be an object with {LAST_UPDATED} (got {type_name(meta)})")
        return {}
    node: JsonObject = {}
    stamp = meta.get(LAST_UPDATED)
    seconds = as_time(stamp)
    if seconds is not None:
        node[LAST_UPDATED] = seconds
    elif not (root and stamp is None):  # a section never written has no time yet
        problems.add(join_path(path, LAST_UPDATED), "must be epoch seconds (a number >= 0)")
    members = value if isinstance(value, dict) else {}
    for key in meta:
        if key != LAST_UPDATED and key not in members:
            problems.add(join_path(path, str(key)), "metadata for a value that does not exist")
    for key, member in members.items():
        child_path = join_path(path, key)
        node[key] = metadata_node(member, meta.get(key), child_path, problems, root=False)
    return node


def _delta(desired: Mapping[str, JsonValue], reported: Mapping[str, JsonValue]) -> JsonObject:
    delta: JsonObject = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = _delta(want, have)
            if inner:
                delta[key] = inner
        elif key not in reported or not json_equal(want, have):
            delta[key] = copy_json(want)
    return delta


@dataclass(frozen=True, kw_only=True, slots=True)
class Twin:
    """A device twin. Immutable: every operation returns a new Twin."""

    desired: TwinSection = field(default_factory=TwinSection)
    reported: TwinSection = field(default_factory=TwinSection)

    def section(self, which: Section) -> TwinSection:
        return self.desired if which == Section.DESIRED else self.reported

    def with_section(self, which: Section, section: TwinSection) -> Twin:
        return dataclasses.replace(self, **{Section(which).value: section})

    def apply_patch(
        self, which: Section, patch: object, *, now: float, expected_version: int | None = None
    ) -> Twin:
        """Merge `patch` into a section; its `$version` grows by one.

        Raises DocumentError (bad patch or time), VersionConflictError (`expected_version`
        given and not current) or LimitExceededError (result too big); the twin is unchanged.
        """
        checked = checked_patch(patch)
        at = checked_time(now)
        current = self.section(which)
        if expected_version is not None and expected_version != current.version:
            raise VersionConflictError(
                section=str(which), expected=expected_version, actual=current.version
            )
        return self.with_section(which, current.merged(checked, at=at, name=str(which)))

    def apply_desired_patch(
        self, patch: object, *, now: float, expected_version: int | None = None
    ) -> Twin:
        return self.apply_patch(Section.DESIRED, patch, now=now, expected_version=expected_version)

    def apply_reported_patch(
        self, patch: object, *, now: float, expected_version: int | None = None
    ) -> Twin:
        return self.apply_patch(Section.REPORTED, patch, now=now, expected_version=expected_version)

    def delta(self) -> JsonObject:
        """Desired values that reported does not match, as a merge patch (AWS delta semantics).

        Keys only in reported are not part of it; nested objects recurse; arrays compare whole.
        """
        return _delta(self.desired.values, self.reported.values)

    def to_json(self) -> JsonObject:
        return {"desired": self.desired.to_json(), "reported": self.reported.to_json()}

    @classmethod
    def from_json(cls, data: object) -> Twin:
        """Validate a document as `to_json` writes it; DocumentError or LimitExceededError."""
        if not isinstance(data, dict) or set(data) != {"desired", "reported"}:
            got = sorted(map(str, data))[:5] if isinstance(data, dict) else type_name(data)
            reason = f"must be an object with exactly desired and reported (got {got})"
            raise DocumentError("invalid twin document", (Problem(path="", reason=reason),))
        return cls(
            desired=TwinSection.from_json(data["desired"], path="desired"),
            reported=TwinSection.from_json(data["reported"], path="reported"),
        )

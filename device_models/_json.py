"""JSON values: shape checks, limits, RFC 7386 merge patch, diff and strict equality.

Inputs may be anything (decoded JSON from a device, a dict built by a caller, fuzz). The checker
walks them with a node budget and a depth cap, so a huge or cyclic object costs bounded work and
yields `Problem`s instead of crashing. After a successful check the value is copied, so the
library never shares structure with its caller; within the library values are never mutated, so
untouched subtrees are shared between old and new documents.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import NoReturn, TypeAlias

from device_models._errors import Problems

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_KEY_LENGTH",
    "MAX_NODES",
    "MAX_SECTION_BYTES",
    "MAX_STRING_LENGTH",
    "JsonObject",
    "JsonValue",
    "check_json",
    "checked_object",
    "compact_size",
    "copy_json",
    "depth_of",
    "diff",
    "index_path",
    "join_path",
    "json_equal",
    "key_problem",
    "merge_object",
    "merge_patch",
    "nesting_depth",
    "reject_constant",
    "type_name",
]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"

# Azure IoT Hub's limits, which users already design against: 32 KB per twin section (compact
# JSON, UTF-8, without $version/$metadata) and 10 levels of nesting (the section object is 1).
MAX_SECTION_BYTES = 32 * 1024
MAX_DEPTH = 10
# Azure allows 1 KB keys and 4 KB strings; our keys are property names, so 128 is ample.
MAX_KEY_LENGTH = 128
MAX_STRING_LENGTH = 4096
# Integers beyond 64 bits are not portable JSON (and Python refuses to print >4300 digits).
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
# The cheapest JSON node is 2 bytes ("0,"), so a 32 KB section holds fewer than 17k nodes; the
# budget stops the walk over oversized input long before it could cost real time.
MAX_NODES = 20_000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index_path(path: str, index: int) -> str:
    return f"{path}[{index}]"


def type_name(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    names: tuple[tuple[type, str], ...] = (
        (bool, "bool"),
        (int, "int"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (Mapping, "object"),
    )
    if value is None:
        return "null"
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def key_problem(key: str) -> str | None:
    """Why `key` cannot name a member of a twin document, or None if it can."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return f"keys must be 1 to {MAX_KEY_LENGTH} characters"
    if key.startswith("$"):
        # `$version` and `$metadata` live beside the values; user keys may not shadow them.
        return "keys starting with '$' are reserved"
    if _CONTROL.search(key) or not _is_utf8(key):
        return "keys may not contain control characters or lone surrogates"
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Walker:
    """One bounded walk over an untrusted value."""

    def __init__(self, problems: Problems, *, allow_null_members: bool) -> None:
        self.problems = problems
        self.allow_null_members = allow_null_members
        self.nodes = 0

    def walk(self, value: object, path: str, depth: int, *, literal: bool = False) -> None:
        """Check `value`; `literal` is true inside arrays, whose objects are not merged."""
        self.nodes += 1
        if self.nodes == MAX_NODES + 1:
            self.problems.add(path, f"more than {MAX_NODES} values", limit=True)
        if self.nodes > MAX_NODES:
            return
        # Any Mapping counts as an object, so read-only views (MappingProxyType) pass too.
        if isinstance(value, Mapping | list) and depth > MAX_DEPTH:
            self.problems.add(path, f"nested deeper than {MAX_DEPTH} levels", limit=True)
            return
        if isinstance(value, Mapping):
            self._walk_object(value, path, depth, literal=literal)
        elif isinstance(value, list):
            for position, item in enumerate(value):
                if self.nodes > MAX_NODES:
                    break  # over budget: the rest need not even be looked at
                self.walk(item, index_path(path, position), depth + 1, literal=True)
        else:
            self._check_scalar(value, path)

    def _walk_object(
        self, value: Mapping[object, object], path: str, depth: int, *, literal: bool
    ) -> None:
        for key, member in value.items():
            if self.nodes > MAX_NODES:
                break  # over budget: the rest need not even be looked at
            if not isinstance(key, str):
                self.problems.add(path, f"keys must be strings (got {type_name(key)} {key!r:.40})")
                continue
            problem = key_problem(key)
            if problem is not None:
                self.problems.add(join_path(path, key[:MAX_KEY_LENGTH] or '""'), problem)
                continue
            # Merging strips null members, so a document has none, except inside arrays,
            # which are stored as given (RFC 7386: arrays replace whole).
            if member is None and not (self.allow_null_members or literal):
                self.problems.add(join_path(path, key), "null is not a value (it deletes)")
                continue
            self.walk(member, join_path(path, key), depth + 1, literal=literal)

    def _check_scalar(self, value: object, path: str) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int):
            if not INT_MIN <= value <= INT_MAX:
                self.problems.add(path, "integer out of the 64-bit range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                self.problems.add(path, "numbers must be finite (JSON has no NaN or Infinity)")
        elif isinstance(value, str):
            if len(value) > MAX_STRING_LENGTH:
                self.problems.add(path, f"string longer than {MAX_STRING_LENGTH} characters")
            elif not _is_utf8(value):
                self.problems.add(path, "string contains lone surrogates (not valid Unicode)")
        else:
            self.problems.add(path, f"not a JSON value (got {type_name(value)})")


def check_json(
    value: object, *, path: str, problems: Problems, allow_null_members: bool, depth: int = 1
) -> None:
    """Add to `problems` everything that keeps `value` from being a JSON value we accept.

    `allow_null_members` is true for merge patches, where a null member means "delete", and
    false for documents, where members are never null (arrays may hold nulls in both).
    """
    _Walker(problems, allow_null_members=allow_null_members).walk(value, path, depth)


def checked_object(
    value: object, *, path: str, problems: Problems, allow_null_members: bool
) -> JsonObject:
    """A copy of `value` if it is an acceptable JSON object; else `{}` and new problems."""
    before = len(problems.items) + problems.dropped
    check_json(value, path=path, problems=problems, allow_null_members=allow_null_members)
    if not isinstance(value, Mapping):
        problems.add(path, f"must be an object (got {type_name(value)})")
        return {}
    if len(problems.items) + problems.dropped > before:
        return {}
    return {key: copy_json(member) for key, member in value.items()}


def copy_json(value: JsonValue) -> JsonValue:
    """A deep copy of a checked value as plain dicts and lists (faster than deepcopy)."""
    if isinstance(value, Mapping):
        return {key: copy_json(member) for key, member in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def compact_size(value: JsonValue | Mapping[str, JsonValue]) -> int:
    """Size in bytes of `value` as compact UTF-8 JSON: the measure of the section limit."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return len(text.encode("utf-8"))


def nesting_depth(text: str, limit: int) -> int:
    """Deepest bracket nesting of JSON text outside strings, scanning until `limit` is passed.

    Checked on the raw text before parsing, so a hostile document cannot make the parser
    recurse (or build) anything deeper than the limit.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def reject_constant(name: str) -> NoReturn:
    """``json.loads(parse_constant=...)`` hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def depth_of(value: JsonValue | Mapping[str, JsonValue]) -> int:
    """Nesting levels of objects and arrays; a scalar is 0 and `{"a": 1}` is 1."""
    if isinstance(value, Mapping):
        return 1 + max((depth_of(member) for member in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


def merge_patch(target: JsonValue | Mapping[str, JsonValue], patch: JsonValue) -> JsonValue:
    """RFC 7386 MergePatch(target, patch), returning a new value and mutating neither.

    Objects merge recursively, null members delete, anything else replaces (arrays whole).
    Subtrees of `target` the patch does not touch are shared, not copied.
    """
    if not isinstance(patch, dict):
        return patch
    return merge_object(target if isinstance(target, Mapping) else {}, patch)


def merge_object(target: Mapping[str, JsonValue], patch: Mapping[str, JsonValue]) -> JsonObject:
    """`merge_patch` for the common case of an object patched by an object."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_equal(left: object, right: object) -> bool:
    """JSON equality: unlike Python's ==, true is not 1 (but 1 equals 1.0, as in JSON)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, Mapping | list) or isinstance(right, Mapping | list):
        return False
    return left == right


def diff(old: Mapping[str, JsonValue], new: Mapping[str, JsonValue]) -> JsonObject:
    """The smallest merge patch p with merge_patch(old, p) == new (documents hold no nulls)."""
    patch: JsonObject = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = diff(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or not json_equal(before, value):
            patch[key] = copy_json(value)
    return patch

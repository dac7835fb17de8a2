# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
r"""Pure: field selectors, parsed and matched the way the API server does.

No I/O here, so the parser can be fuzzed. Grammar follows k8s.io/apimachinery
``pkg/fields/selector.go``: comma-separated ``path=value``, ``path==value`` or ``path!=value``;
``\\``, ``\\,`` and ``\\=`` escape. The path is a dotted path into the object
(``spec.nodeName``); a missing field reads as the empty string, except the boolean fields the
API server prints as ``false`` when unset.

Label selectors live in the pure fleet package (``fleet_model.labels``): the kube cache and
the fleet's placement share them. Both raise ``fleet_model.labels.SelectorError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet_model.labels import SelectorError

_BOOLEAN_FIELDS = frozenset({"spec.unschedulable"})
"""Fields the API server reports as ``false`` when the JSON leaves them out (node selectors)."""


@dataclass(frozen=True, order=True, slots=True)
class FieldRequirement:
    path: str
    negated: bool
    value: str

    def __str__(self) -> str:
        op = "!=" if self.negated else "="
        return f"{escape_field_value(self.path)}{op}{escape_field_value(self.value)}"

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, self.path) == self.value) != self.negated


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(r.matches(obj) for r in self.requirements)

    def covers(self, other: FieldSelector) -> bool:
        return set(self.requirements) <= set(other.requirements)

    def equal_value(self, path: str) -> str | None:
        """The value this selector pins ``path`` to with ``=``, if it does."""
        for requirement in self.requirements:
            if requirement.path == path and not requirement.negated:
                return requirement.value
        return None


# ---------------------------------------------------------------- field selector parser

_FIELD_OPS = ("!=", "==", "=")


def escape_field_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _unescape_field_value(text: str) -> str:
    out: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid escape sequence '\\{char}' in field selector")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            if char in ",=":
                raise SelectorError(f"unescaped {char!r} in field selector value")
            out.append(char)
    if escaped:
        raise SelectorError("field selector ends in an unfinished escape")
    return "".join(out)


def _split_unescaped(text: str, separator: str) -> list[str]:
    terms: list[str] = []
    start = 0
    index = 0
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == separator:
            terms.append(text[start:index])
            start = index + 1
        index += 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str]:
    index = 0
    while index < len(term):
        if term[index] == "\\":
            index += 2
            continue
        for op in _FIELD_OPS:
            if term.startswith(op, index):
                return term[:index], op, term[index + len(op) :]
        index += 1
    raise SelectorError(f"invalid field selector term {term!r}: expected =, == or !=")


def parse_field_selector(text: str, *, max_length: int = 4096) -> FieldSelector:
    if len(text) > max_length:
        raise SelectorError(f"field selector longer than {max_length} characters")
    requirements: set[FieldRequirement] = set()
    for term in _split_unescaped(text, ","):
        if not term:
            continue
        left, op, right = _split_term(term)
        path = _unescape_field_value(left)
        if not path:
            raise SelectorError(f"field selector term {term!r} has no field")
        requirements.add(FieldRequirement(path, op == "!=", _unescape_field_value(right)))
    return FieldSelector(tuple(sorted(requirements)))


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string the API server compares a field selector against."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return "false" if path in _BOOLEAN_FIELDS else ""
        current = current[part]
    if isinstance(current, bool):
        return "true" if current else "false"
    if current is None:
        return ""
    if isinstance(current, (dict, list)):
        return ""
    return str(current)

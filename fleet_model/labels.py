# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure: label selectors, parsed and matched the way the API server does.

Shared by the kube cache (selective LISTs and watches answered offline) and, to come, the
fleet's placement (which clusters a placement selects). No I/O here, so the parser can be
fuzzed. Grammar and validation follow k8s.io/apimachinery ``pkg/labels/selector.go``:
comma-separated requirements ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k>1``, ``k<1``. ``!=`` and ``notin`` also match objects without the label.
Keys are qualified names (``prefix/name``), values are label values.

A selector's canonical form (``str()``) sorts its requirements, so two spellings of the same
query share one cache entry, and "covers" is a subset test on requirements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SPECIAL = frozenset("=!(),<>")
_COMMA, _CLOSE, _NOT = ",", ")", "!"


class SelectorError(ValueError):
    """The selector is malformed; the API server answers such a query with 400 BadRequest."""


class Op(StrEnum):
    EXISTS = "exists"
    NOT_EXISTS = "!"
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    GREATER = ">"
    LESS = "<"


@dataclass(frozen=True, order=True, slots=True)
class LabelRequirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op is Op.EXISTS:
            return self.key
        if self.op is Op.NOT_EXISTS:
            return f"!{self.key}"
        if self.op in {Op.IN, Op.NOT_IN}:
            return f"{self.key} {self.op.value} ({','.join(self.values)})"
        return f"{self.key}{self.op.value}{self.values[0]}"

    def matches(self, labels: Mapping[str, str]) -> bool:  # noqa: PLR0911 - one branch per op
        present = self.key in labels
        value = labels.get(self.key, "")
        match self.op:
            case Op.EXISTS:
                return present
            case Op.NOT_EXISTS:
                return not present
            case Op.EQUALS | Op.IN:
                return present and value in self.values
            case Op.NOT_EQUALS | Op.NOT_IN:
                return not present or value not in self.values
            case Op.GREATER | Op.LESS:
                if not present:
                    return False
                try:
                    number = int(value)
                except ValueError:
                    return False
                bound = int(self.values[0])
                return number > bound if self.op is Op.GREATER else number < bound


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[LabelRequirement, ...] = ()

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def covers(self, other: LabelSelector) -> bool:
        """True if every object ``other`` selects is also selected by this selector."""
        return set(self.requirements) <= set(other.requirements)


# ---------------------------------------------------------------- label selector parser


def _tokens(text: str) -> list[str]:
    """Split into identifiers and operators, as the Go lexer does (whitespace separates)."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
        elif char in _SPECIAL:
            two = text[index : index + 2]
            if two in {"==", "!="}:
                out.append(two)
                index += 2
            else:
                out.append(char)
                index += 1
        else:
            end = index
            while end < len(text) and not text[end].isspace() and text[end] not in _SPECIAL:
                end += 1
            out.append(text[index:end])
            index = end
    return out


def _is_identifier(token: str | None) -> bool:
    """A key or a value; ``in`` and ``notin`` are words like any other here.

    They are operators only where an operator is expected, as in apimachinery's parser (which
    reads keys and values in its Values context): ``in=notin`` and ``tier in (in)`` are valid.
    """
    return token is not None and token[0] not in _SPECIAL


def validate_label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        raise SelectorError(f"invalid label key {key!r}: name must be a qualified name")


def validate_label_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise SelectorError(f"invalid label value {value!r}")


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.position += 1
        return token

    def parse(self) -> LabelSelector:
        requirements: list[LabelRequirement] = []
        if self.peek() is None:
            return LabelSelector()
        while True:
            requirements.append(self.requirement())
            token = self.take()
            if token is None:
                break
            if token != _COMMA:
                raise SelectorError(f"expected ',' in label selector, found {token!r}")
        return LabelSelector(tuple(sorted(set(requirements))))

    def requirement(self) -> LabelRequirement:
        token = self.take()
        if token == _NOT:
            key = self.take()
            if not _is_identifier(key):
                raise SelectorError(f"expected a label key after '!', found {key!r}")
            assert key is not None  # noqa: S101 - narrowed by _is_identifier
            validate_label_key(key)
            return LabelRequirement(key, Op.NOT_EXISTS)
        if not _is_identifier(token):
            raise SelectorError(f"expected a label key, found {token!r}")
        assert token is not None  # noqa: S101 - narrowed by _is_identifier
        validate_label_key(token)
        following = self.peek()
        if following in {None, ","}:
            return LabelRequirement(token, Op.EXISTS)
        self.take()
        if following in {"=", "=="}:
            return LabelRequirement(token, Op.EQUALS, (self.single_value(),))
        if following == "!=":
            return LabelRequirement(token, Op.NOT_EQUALS, (self.single_value(),))
        if following in {">", "<"}:
            value = self.single_value(validate=False)
            if not re.fullmatch(r"-?[0-9]+", value):
                raise SelectorError(f"{following} needs an integer, found {value!r}")
            return LabelRequirement(token, Op.GREATER if following == ">" else Op.LESS, (value,))
        if following in {"in", "notin"}:
            values = self.value_set()
            return LabelRequirement(token, Op.IN if following == "in" else Op.NOT_IN, values)
        raise SelectorError(f"unknown operator {following!r} in label selector")

    def single_value(self, *, validate: bool = True) -> str:
        token = self.peek()
        if token in {None, ","}:
            return ""
        if not _is_identifier(token):
            raise SelectorError(f"expected a label value, found {token!r}")
        self.take()
        assert token is not None  # noqa: S101 - narrowed by _is_identifier
        if validate:  # > and < take an integer, which need not be a valid label value
            validate_label_value(token)
        return token

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise SelectorError("expected '(' after in/notin")
        if self.peek() == ")":
            raise SelectorError("in and notin need at least one value")
        values: set[str] = set()
        while True:
            token = self.peek()
            if token in {",", ")"}:
                values.add("")
            elif _is_identifier(token):
                assert token is not None  # noqa: S101 - narrowed by _is_identifier
                validate_label_value(token)
                values.add(token)
                self.take()
            else:
                raise SelectorError(f"expected a value in the set, found {token!r}")
            token = self.take()
            if token == _CLOSE:
                break
            if token != _COMMA:
                raise SelectorError(f"expected ',' or ')' in the set, found {token!r}")
        return tuple(sorted(values))


def parse_label_selector(text: str, *, max_length: int = 4096) -> LabelSelector:
    if len(text) > max_length:
        raise SelectorError(f"label selector longer than {max_length} characters")
    return _LabelParser(text).parse()

"""statusFeedback and resource health: what a Work reports about each resource it applied.

Pure: the agent's applier (``edge_agent/cluster/works``) hands in the live object as the member
API server returned it (decoded JSON) and gets back values and a health verdict.

* ``feedback(obj, kind, rules)``: the ``statusFeedback.values`` of one manifest, OCM's shape
  (``{name, fieldValue: {type: Integer|String|Boolean|JsonRaw, integer|string|boolean|jsonRaw}}``)
  and the problems met (a bad path, a value over the bound), each a sentence. Rules:

  - ``WellKnownStatus``: the well-known fields of Deployments, StatefulSets, DaemonSets and Jobs
    (``WELL_KNOWN``); absent fields are left out (as OCM does), other kinds give nothing.
  - ``JSONPaths``: ``[{name, path}]`` in a bounded subset of kubectl's JSONPath (``parse_path``):
    fields (``.status.readyReplicas``), indexes (``[0]``, ``[-1]``), and filters on one field
    (``[?(@.type=="Available")]``, ``==`` or ``!=`` against a string, number or boolean). A
    filter keeps every match; a path that ends with exactly one value gives that value, with
    none it is left out, with several they are one JsonRaw list.
  - Integers, strings and booleans are scalars; anything else (objects, lists, fractional
    numbers) is ``JsonRaw`` when its compact JSON is at most ``MAX_RAW_BYTES`` (1 KiB, as
    OCM's limit for raw values), else a problem. Strings are bounded the same way.

* ``health(obj, kind)``: ``Health(state, message)`` with state ``Ready`` (at its desired
  state), ``Progressing`` (getting there) or ``Failed`` (will not get there by itself):

  - Deployment: Ready when ``status.observedGeneration >= metadata.generation``,
    ``updatedReplicas``, ``availableReplicas`` >= ``spec.replicas`` (default 1); Failed when
    its ``Progressing`` condition says ``ProgressDeadlineExceeded``;
  - StatefulSet: observed generation current, ``readyReplicas`` and ``updatedReplicas`` (or
    ``currentReplicas``) >= ``spec.replicas``;
  - DaemonSet: observed generation current, ``numberAvailable`` and ``updatedNumberScheduled``
    >= ``desiredNumberScheduled``;
  - Job: Ready when its ``Complete`` condition is True, Failed when ``Failed`` is True;
  - any other kind: Ready (it exists; the caller only asks about objects it has).

Nothing here raises on any input: every function takes arbitrary decoded JSON (hypothesis
tests say so). Paths are bounded (``MAX_PATH_CHARS``, ``MAX_STEPS``) and so is the work done.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "MAX_PATHS",
    "MAX_PATH_CHARS",
    "MAX_RAW_BYTES",
    "MAX_STEPS",
    "WELL_KNOWN",
    "WORKLOAD_KINDS",
    "Health",
    "PathError",
    "evaluate",
    "feedback",
    "field_value",
    "health",
    "parse_path",
]

MAX_RAW_BYTES = 1024
"""Bytes of one JsonRaw value (and of one String): OCM's bound for raw feedback values."""
MAX_PATH_CHARS = 512
"""Characters of one JSONPath: real ones are a few dozen."""
MAX_STEPS = 32
"""Steps (fields, indexes, filters) of one JSONPath."""
MAX_PATHS = 64
"""JSONPaths per manifest (all rules together); more are reported, not evaluated."""
MAX_MATCHES = 256
"""Values a path may hold between steps (a filter over a long list); beyond it, a problem."""
MAX_NAME_CHARS = 128
"""Characters of a feedback value's name."""

WELL_KNOWN: Mapping[str, tuple[tuple[str, str], ...]] = {
    "Deployment": (
        ("replicas", "status.replicas"),
        ("readyReplicas", "status.readyReplicas"),
        ("availableReplicas", "status.availableReplicas"),
        ("updatedReplicas", "status.updatedReplicas"),
        ("observedGeneration", "status.observedGeneration"),
    ),
    "StatefulSet": (
        ("replicas", "status.replicas"),
        ("readyReplicas", "status.readyReplicas"),
        ("availableReplicas", "status.availableReplicas"),
        ("updatedReplicas", "status.updatedReplicas"),
        ("currentReplicas", "status.currentReplicas"),
        ("observedGeneration", "status.observedGeneration"),
    ),
    "DaemonSet": (
        ("desiredNumberScheduled", "status.desiredNumberScheduled"),
        ("currentNumberScheduled", "status.currentNumberScheduled"),
        ("numberReady", "status.numberReady"),
        ("numberAvailable", "status.numberAvailable"),
        ("updatedNumberScheduled", "status.updatedNumberScheduled"),
        ("observedGeneration", "status.observedGeneration"),
    ),
    "Job": (
        ("succeeded", "status.succeeded"),
        ("failed", "status.failed"),
        ("active", "status.active"),
    ),
}
"""Kind -> (value name, dotted field) of WellKnownStatus (kinds of the apps and batch groups)."""

WORKLOAD_KINDS = frozenset(("Deployment", "StatefulSet", "DaemonSet", "Job"))
"""Kinds whose health is more than existence."""

HealthState = Literal["Ready", "Progressing", "Failed"]


class PathError(ValueError):
    """A JSONPath outside the supported subset; the message says where."""


# -- JSONPath subset


@dataclass(frozen=True)
class _Field:
    name: str


@dataclass(frozen=True)
class _Index:
    index: int


@dataclass(frozen=True)
class _Filter:
    field: tuple[str, ...]
    negate: bool
    value: object


_Step = _Field | _Index | _Filter

_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")
_INDEX = re.compile(r"\[(-?\d{1,6})\]")
_FILTER = re.compile(
    r"\[\?\(\s*@((?:\.[A-Za-z_$][A-Za-z0-9_$-]*){1,8})\s*(==|!=)\s*"
    r"(\"[^\"\\]{0,256}\"|'[^'\\]{0,256}'|-?\d{1,18}(?:\.\d{1,18})?|true|false)\s*\)\]"
)


def parse_path(path: str) -> tuple[_Step, ...]:
    """The steps of ``path`` (``.status.x``, ``status.x``, ``{.status.x}``); PathError if not."""
    if not isinstance(path, str):
        raise PathError("a path is a string")
    if len(path) > MAX_PATH_CHARS:
        raise PathError(f"a path is at most {MAX_PATH_CHARS} characters")
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if not text.startswith((".", "[")):
        text = "." + text
    steps: list[_Step] = []
    at = 0
    while at < len(text):
        if len(steps) >= MAX_STEPS:
            raise PathError(f"a path has at most {MAX_STEPS} steps")
        at = _next_step(text, at, steps)
    if not steps:
        raise PathError("a path names at least one field")
    return tuple(steps)


def _next_step(text: str, at: int, steps: list[_Step]) -> int:
    if text[at] == ".":
        name = _NAME.match(text, at + 1)
        if name is None:
            raise PathError(f"expected a field name at character {at + 1} of {text!r}")
        steps.append(_Field(name.group()))
        return name.end()
    index = _INDEX.match(text, at)
    if index is not None:
        steps.append(_Index(int(index.group(1))))
        return index.end()
    found = _FILTER.match(text, at)
    if found is not None:
        field_path = tuple(found.group(1).split(".")[1:])
        steps.append(_Filter(field_path, found.group(2) == "!=", _literal(found.group(3))))
        return found.end()
    raise PathError(
        f"unsupported syntax at character {at} of {text!r}: fields, [N] and "
        '[?(@.field=="value")] are supported'
    )


def _literal(text: str) -> object:
    if text in ("true", "false"):
        return text == "true"
    if text[0] in "\"'":
        return text[1:-1]
    return float(text) if "." in text else int(text)


def _same(left: object, right: object) -> bool:
    # JSON equality without Python's True == 1.
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return isinstance(left, str) and isinstance(right, str) and left == right


def _lookup(value: object, names: Sequence[str]) -> tuple[bool, object]:
    for name in names:
        if not isinstance(value, dict) or name not in value:
            return False, None
        value = value[name]
    return True, value


def _apply(step: _Step, current: list[object]) -> list[object]:
    out: list[object] = []
    for value in current:
        if isinstance(step, _Field):
            if isinstance(value, dict) and step.name in value:
                out.append(value[step.name])
        elif isinstance(step, _Index):
            if isinstance(value, list) and -len(value) <= step.index < len(value):
                out.append(value[step.index])
        elif isinstance(value, list):
            for item in value:
                found, field = _lookup(item, step.field)
                if found and _same(field, step.value) != step.negate:
                    out.append(item)
        if len(out) > MAX_MATCHES:
            raise PathError(f"the path matches more than {MAX_MATCHES} values")
    return out


def evaluate(obj: object, path: str) -> tuple[bool, object]:
    """``(found, value)`` of ``path`` in ``obj``; several matches are a list. PathError."""
    current: list[object] = [obj]
    for step in parse_path(path):
        current = _apply(step, current)
        if not current:
            return False, None
    if len(current) == 1:
        return True, current[0]
    return True, current


# -- values


def field_value(value: object) -> dict[str, Any]:
    """OCM's ``fieldValue`` of a found value. ValueError when it is over the bound."""
    if isinstance(value, bool):
        return {"type": "Boolean", "boolean": value}
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError("an integer outside int64")
        return {"type": "Integer", "integer": value}
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return {"type": "Integer", "integer": int(value)}
    if isinstance(value, str):
        if len(value.encode("utf-8", errors="replace")) > MAX_RAW_BYTES:
            raise ValueError(f"a string longer than {MAX_RAW_BYTES} bytes")
        return {"type": "String", "string": value}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")
    try:
        raw = json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise ValueError("not a JSON value") from None
    if len(raw.encode("utf-8", errors="replace")) > MAX_RAW_BYTES:
        raise ValueError(f"a raw value larger than {MAX_RAW_BYTES} bytes")
    return {"type": "JsonRaw", "jsonRaw": raw}


def _wanted(kind: str, rules: object) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, path) to read for ``rules`` (a manifestConfig's ``feedbackRules``), problems."""
    wanted: list[tuple[str, str]] = []
    problems: list[str] = []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        kind_of_rule = rule.get("type") if isinstance(rule, dict) else None
        if kind_of_rule == "WellKnownStatus":
            wanted.extend(WELL_KNOWN.get(kind, ()))
        elif kind_of_rule == "JSONPaths":
            paths = rule.get("jsonPaths") if isinstance(rule, dict) else None
            for entry in paths if isinstance(paths, list) else []:
                name = entry.get("name") if isinstance(entry, dict) else None
                path = entry.get("path") if isinstance(entry, dict) else None
                if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
                    problems.append(f"feedbackRules[{index}]: a jsonPath needs a short name")
                elif not isinstance(path, str):
                    problems.append(f"jsonPath {name!r}: the path is not a string")
                else:
                    wanted.append((name, path))
        else:
            problems.append(f"feedbackRules[{index}]: type is WellKnownStatus or JSONPaths")
    if len(wanted) > MAX_PATHS:
        problems.append(f"{len(wanted)} feedback values; the first {MAX_PATHS} are read")
        wanted = wanted[:MAX_PATHS]
    return wanted, problems


def feedback(obj: object, kind: str, rules: object) -> tuple[list[dict[str, Any]], list[str]]:
    """``statusFeedback.values`` of ``obj`` for ``rules``, and the problems met (sentences)."""
    wanted, problems = _wanted(kind, rules)
    values: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, path in wanted:
        if name in seen:
            continue
        seen.add(name)
        try:
            found, value = evaluate(obj, path)
            if found and value is not None:
                values.append({"name": name, "fieldValue": field_value(value)})
        except ValueError as error:  # PathError is one
            problems.append(f"jsonPath {name!r}: {error}")
    return values, problems


# -- health


@dataclass(frozen=True)
class Health:
    """Whether a live object is at its desired state; ``message`` says how far it is."""

    state: HealthState
    message: str


def _int(value: object, default: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if isinstance(value, float) and not math.isfinite(value):
        return default
    return int(value)


def _section(obj: object, name: str) -> dict[str, Any]:
    value = obj.get(name) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    conditions = status.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


def _generation_current(obj: object, status: Mapping[str, Any]) -> bool:
    generation = _int(_section(obj, "metadata").get("generation"), -1)
    return _int(status.get("observedGeneration"), -1) >= generation


def health(obj: object, kind: str) -> Health:
    """How ``obj`` (a live object of ``kind``) is doing; see the module's rules."""
    status = _section(obj, "status")
    spec = _section(obj, "spec")
    if kind == "Job":
        return _job_health(status)
    if kind not in ("Deployment", "StatefulSet", "DaemonSet"):
        return Health("Ready", "exists")
    if not _generation_current(obj, status):
        return Health("Progressing", "the controller has not yet observed the latest spec")
    if kind == "DaemonSet":
        desired = _int(status.get("desiredNumberScheduled"))
        available = _int(status.get("numberAvailable"))
        updated = _int(status.get("updatedNumberScheduled"))
        message = f"{available}/{desired} available, {updated}/{desired} updated"
        return Health("Ready" if min(available, updated) >= desired else "Progressing", message)
    wanted = _int(spec.get("replicas"), 1)
    if kind == "Deployment":
        progressing = _condition(status, "Progressing")
        if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
            return Health("Failed", str(progressing.get("message", ""))[:512])
        ready = _int(status.get("availableReplicas"))
        updated = _int(status.get("updatedReplicas"))
        message = f"{ready}/{wanted} available, {updated}/{wanted} updated"
    else:
        ready = _int(status.get("readyReplicas"))
        updated = _int(status.get("updatedReplicas"), _int(status.get("currentReplicas")))
        message = f"{ready}/{wanted} ready, {updated}/{wanted} updated"
    return Health("Ready" if min(ready, updated) >= wanted else "Progressing", message)


def _job_health(status: Mapping[str, Any]) -> Health:
    verdicts: tuple[tuple[str, HealthState], ...] = (("Failed", "Failed"), ("Complete", "Ready"))
    for kind, state in verdicts:
        condition = _condition(status, kind)
        if condition is not None and condition.get("status") == "True":
            message = str(condition.get("message") or condition.get("reason") or kind)[:512]
            return Health(state, message)
    return Health(
        "Progressing",
        f"{_int(status.get('active'))} active, {_int(status.get('succeeded'))} succeeded, "
        f"{_int(status.get('failed'))} failed",
    )

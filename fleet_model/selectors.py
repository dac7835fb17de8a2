"""Kubernetes ``LabelSelector`` objects (``matchLabels`` + ``matchExpressions``), parsed once.

Every fleet object that selects by labels uses this one parser: a Placement's cluster
predicates and claim selectors, a ManagedClusterSet's selector, a WorkSet override's cluster
selector, an elastic ResourcePolicy's pods and units. Rules: every problem is reported with its
JSON pointer (the caller raises one ``SpecError`` for all), keys and values are validated as
the API server does, sizes are bounded, and the empty selector matches everything.
"""

from __future__ import annotations

from fleet_model.labels import (
    LabelRequirement,
    LabelSelector,
    Op,
    SelectorError,
    validate_label_key,
    validate_label_value,
)
from fleet_model.problems import escape

__all__ = [
    "MAX_CLAIM_VALUE",
    "MAX_SELECTOR_TERMS",
    "MAX_SELECTOR_VALUES",
    "label_problem",
    "parse_label_selector_object",
]

MAX_SELECTOR_TERMS = 32
"""matchLabels + matchExpressions of one selector."""
MAX_SELECTOR_VALUES = 64
"""Values of one In/NotIn expression."""
MAX_CLAIM_VALUE = 1024
"""Characters of one claim value (a version, a region, a count)."""


def label_problem(value: object, *, key: bool) -> str | None:
    """Why ``value`` is not a label key (``key``) or label value, or None if it is one."""
    if not isinstance(value, str):
        return "must be a string"
    try:
        if key:
            validate_label_key(value)
        else:
            validate_label_value(value)
    except SelectorError as error:
        return str(error)
    return None


_OPERATORS = {"In": Op.IN, "NotIn": Op.NOT_IN, "Exists": Op.EXISTS, "DoesNotExist": Op.NOT_EXISTS}


def _expression(
    item: object, where: str, problems: list[tuple[str, str]], *, claim: bool
) -> LabelRequirement | None:
    if not isinstance(item, dict):
        problems.append((where, "must be an object {key, operator, values}"))
        return None
    unknown = set(item) - {"key", "operator", "values"}
    if unknown:
        problems.append((where, f"unknown fields: {', '.join(sorted(map(str, unknown)))}"))
    key, operator, values = item.get("key"), item.get("operator"), item.get("values")
    problem = label_problem(key, key=True)
    if problem is not None:
        problems.append((f"{where}/key", problem))
    op = _OPERATORS.get(operator) if isinstance(operator, str) else None
    if op is None:
        problems.append((f"{where}/operator", "must be In, NotIn, Exists or DoesNotExist"))
        return None
    texts = _expression_values(values, f"{where}/values", problems, op=op, claim=claim)
    if problem is not None or texts is None:
        return None
    assert isinstance(key, str)  # noqa: S101 - checked above
    return LabelRequirement(key, op, texts)


def _expression_values(
    values: object, where: str, problems: list[tuple[str, str]], *, op: Op, claim: bool
) -> tuple[str, ...] | None:
    if op in {Op.EXISTS, Op.NOT_EXISTS}:
        if values not in (None, []):
            problems.append((where, "must be empty for Exists and DoesNotExist"))
            return None
        return ()
    if not isinstance(values, list) or not values:
        problems.append((where, "In and NotIn need a non-empty list of values"))
        return None
    if len(values) > MAX_SELECTOR_VALUES:
        problems.append((where, f"at most {MAX_SELECTOR_VALUES} values"))
        return None
    out: set[str] = set()
    for index, value in enumerate(values):
        if not isinstance(value, str):
            problems.append((f"{where}/{index}", "must be a string"))
            continue
        if claim:
            # Claims are free text reported by agents ("v1.36.3", "eu west"), not label values.
            if len(value) > MAX_CLAIM_VALUE:
                problems.append((f"{where}/{index}", f"at most {MAX_CLAIM_VALUE} characters"))
                continue
        else:
            try:
                validate_label_value(value)
            except SelectorError as error:
                problems.append((f"{where}/{index}", str(error)))
                continue
        out.add(value)
    return tuple(sorted(out))


def parse_label_selector_object(
    value: object, path: str, problems: list[tuple[str, str]], *, claim: bool = False
) -> LabelSelector:
    """A Kubernetes ``LabelSelector`` object (``matchLabels``, ``matchExpressions``).

    Problems go to ``problems`` (JSON pointers under ``path``). ``claim``: a claim selector,
    which has only ``matchExpressions`` and whose values are free text. Requirements keep the
    written order (matchLabels by key first), so "the first rule not matched" reads naturally.
    The empty selector matches everything (Kubernetes' rule for label selectors).
    """
    if value is None:
        return LabelSelector()
    if not isinstance(value, dict):
        problems.append((path, "must be an object"))
        return LabelSelector()
    allowed = {"matchExpressions"} if claim else {"matchLabels", "matchExpressions"}
    unknown = set(value) - allowed
    if unknown:
        problems.append((path, f"unknown fields: {', '.join(sorted(map(str, unknown)))}"))
    requirements: list[LabelRequirement] = []
    requirements.extend(_match_labels(value.get("matchLabels"), f"{path}/matchLabels", problems))
    expressions = value.get("matchExpressions")
    if expressions is not None:
        if not isinstance(expressions, list):
            problems.append((f"{path}/matchExpressions", "must be a list"))
        else:
            for index, item in enumerate(expressions[: MAX_SELECTOR_TERMS + 1]):
                found = _expression(item, f"{path}/matchExpressions/{index}", problems, claim=claim)
                if found is not None:
                    requirements.append(found)
    if len(requirements) > MAX_SELECTOR_TERMS:
        problems.append((path, f"at most {MAX_SELECTOR_TERMS} terms in one selector"))
        return LabelSelector()
    return LabelSelector(tuple(requirements))


def _match_labels(
    value: object, where: str, problems: list[tuple[str, str]]
) -> list[LabelRequirement]:
    if value is None:
        return []
    if not isinstance(value, dict):
        problems.append((where, "must be an object of label: value"))
        return []
    out: list[LabelRequirement] = []
    for key in sorted(value, key=str)[: MAX_SELECTOR_TERMS + 1]:
        item = value[key]
        at = f"{where}/{escape(str(key))}"
        if not isinstance(key, str) or not isinstance(item, str):
            problems.append((at, "must be a string"))
            continue
        try:
            validate_label_key(key)
            validate_label_value(item)
        except SelectorError as error:
            problems.append((at, str(error)))
            continue
        out.append(LabelRequirement(key, Op.EQUALS, (item,)))
    return out

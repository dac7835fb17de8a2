# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Label and field selectors: the API server's grammar and meaning, fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.kubecache.selectors import (
    FieldRequirement,
    escape_field_value,
    field_value,
    parse_field_selector,
)
from fleet_model.labels import (
    LabelRequirement,
    LabelSelector,
    Op,
    SelectorError,
    parse_label_selector,
)

POD = {
    "metadata": {"name": "web-1", "namespace": "edge", "labels": {"app": "web", "n": "7"}},
    "spec": {"nodeName": "node-a"},
    "status": {"phase": "Running"},
}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app in (web, db)", {"app": "db"}, True),
        ("app notin (web,db)", {"app": "db"}, False),
        ("app notin (web,db)", {}, True),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("n>5,n<9", {"n": "7"}, True),
        ("n>5", {"n": "x"}, False),
        ("example.com/tier=front,app", {"example.com/tier": "front", "app": "x"}, True),
        ("app=", {"app": ""}, True),
        # in/notin are operators only where an operator goes (apimachinery reads keys and
        # values in its Values context): found by the round-trip property below.
        ("in=notin", {"in": "notin"}, True),
        ("tier in (in, notin)", {"tier": "notin"}, True),
        ("notin", {"notin": "x"}, True),
        ("!in", {"in": "x"}, False),
        ("in notin (in)", {"in": "in"}, False),
    ],
)
def test_label_selector_meaning(selector: str, labels: dict[str, str], *, expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize(
    "selector",
    [
        "app=(",
        "=web",
        "app in web",
        "app in ()",
        "-bad=x",
        "app=x y",
        "n>x",
        "a,,b",
        "!",
        "a in in",
    ],
)
def test_bad_label_selectors_are_refused(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_selectors_are_bounded() -> None:
    with pytest.raises(SelectorError):
        parse_label_selector("a" * 5000)
    with pytest.raises(SelectorError):
        parse_field_selector("a=" + "b" * 5000)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=web-1", True),
        ("metadata.namespace==edge,spec.nodeName=node-a", True),
        ("status.phase!=Running", False),
        ("spec.nodeName=", False),
        ("spec.schedulerName=", True),
        ("spec.unschedulable=false", True),
        (r"metadata.name=a\,b", False),
    ],
)
def test_field_selector_meaning(selector: str, *, expected: bool) -> None:
    assert parse_field_selector(selector).matches(POD) is expected


@pytest.mark.parametrize("selector", ["metadata.name", "=x", r"a=b\x", "a=b\\"])
def test_bad_field_selectors_are_refused(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_field_selector(selector)


def test_canonical_form_and_covering() -> None:
    one = parse_label_selector("tier in (b, a),app=web")
    two = parse_label_selector("app==web , tier in (a,b)")
    assert str(one) == str(two)
    assert parse_label_selector("app=web").covers(one)
    assert not one.covers(parse_label_selector("app=web"))


# ---------------------------------------------------------------- fuzzing

NAME = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True)
KEY = st.one_of(
    NAME, st.builds(lambda p, n: f"{p}.io/{n}", st.from_regex(r"[a-z]{1,8}", fullmatch=True), NAME)
)
VALUE = st.one_of(st.just(""), NAME)


@st.composite
def requirements(draw: st.DrawFn) -> LabelRequirement:
    key = draw(KEY)
    op = draw(st.sampled_from(list(Op)))
    if op in {Op.EXISTS, Op.NOT_EXISTS}:
        return LabelRequirement(key, op)
    if op in {Op.GREATER, Op.LESS}:
        return LabelRequirement(key, op, (str(draw(st.integers(-99, 99))),))
    if op in {Op.IN, Op.NOT_IN}:
        values = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
        return LabelRequirement(key, op, tuple(sorted(values)))
    return LabelRequirement(key, op, (draw(VALUE),))


def reference(requirement: LabelRequirement, labels: dict[str, str]) -> bool:
    """The meaning written out the long way, to check the matcher against."""
    has = requirement.key in labels
    value = labels.get(requirement.key)
    if requirement.op is Op.EXISTS:
        return has
    if requirement.op is Op.NOT_EXISTS:
        return not has
    if requirement.op in {Op.EQUALS, Op.IN}:
        return has and value in requirement.values
    if requirement.op in {Op.NOT_EQUALS, Op.NOT_IN}:
        return not has or value not in requirement.values
    if not has or value is None or not value.lstrip("-").isdigit():
        return False
    bound = int(requirement.values[0])
    return int(value) > bound if requirement.op is Op.GREATER else int(value) < bound


@given(
    st.lists(requirements(), min_size=1, max_size=4),
    st.dictionaries(KEY, st.one_of(VALUE, st.integers(-99, 99).map(str)), max_size=4),
)
def test_printed_selectors_parse_back_and_match_like_the_reference(
    reqs: list[LabelRequirement], labels: dict[str, str]
) -> None:
    selector = LabelSelector(tuple(sorted(set(reqs))))
    parsed = parse_label_selector(str(selector))
    assert parsed == selector
    assert parsed.matches(labels) == all(reference(r, labels) for r in reqs)


@given(st.text(max_size=80))
def test_label_parser_never_fails_unexpectedly(text: str) -> None:
    try:
        parsed = parse_label_selector(text)
    except SelectorError:
        return
    assert parse_label_selector(str(parsed)) == parsed


@given(st.text(max_size=80))
def test_field_parser_never_fails_unexpectedly(text: str) -> None:
    try:
        parsed = parse_field_selector(text)
    except SelectorError:
        return
    assert parse_field_selector(str(parsed)) == parsed


# A "!" in a field path cannot be escaped (in Go either): "a!=b" is always a != b.
@given(st.text(min_size=1, max_size=20).filter(lambda p: "!" not in p), st.text(max_size=20))
def test_field_values_round_trip_through_escaping(path: str, value: str) -> None:
    text = f"{escape_field_value(path)}={escape_field_value(value)}"
    parsed = parse_field_selector(text)
    assert parsed.requirements == (FieldRequirement(path, negated=False, value=value),)
    assert parsed.matches({}) is (field_value({}, path) == value)

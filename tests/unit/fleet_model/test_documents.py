"""The fleet document envelope: what is taken, and every problem reported at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_model.documents import API_VERSION, KINDS, PLURALS, SpecError, validate_document


def doc(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "apiVersion": API_VERSION,
        "kind": "Placement",
        "metadata": {"name": "web", "labels": {"app": "web"}, "resourceVersion": "12"},
        "spec": {},
    }
    base.update(overrides)
    return base


def test_a_good_document_is_taken_with_its_precondition() -> None:
    taken = validate_document(doc(), kind="Placement")
    assert (taken.kind, taken.name, dict(taken.labels), taken.resource_version) == (
        "Placement",
        "web",
        {"app": "web"},
        12,
    )


def test_every_kind_has_one_plural() -> None:
    assert {PLURALS[info.plural] for info in KINDS.values()} == set(KINDS)


def test_every_problem_is_reported_with_its_path() -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Nope",
        "metadata": {"name": "Bad_Name", "labels": {"a": 1}, "resourceVersion": "x"},
        "spec": [],
    }
    with pytest.raises(SpecError) as caught:
        validate_document(bad)
    paths = [path for path, _ in caught.value.problems]
    assert paths == [
        "/apiVersion",
        "/kind",
        "/metadata/name",
        "/metadata/labels/a",
        "/metadata/resourceVersion",
        "/spec",
    ]


def test_a_document_of_another_kind_than_the_url_is_refused() -> None:
    with pytest.raises(SpecError, match="must be 'Work' here"):
        validate_document(doc(), kind="Work")


@given(
    st.recursive(
        st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_anything_is_either_taken_or_refused_with_problems(value: object) -> None:
    problems: list[tuple[str, str]] = []
    try:
        validate_document(value)
    except SpecError as error:
        problems = error.problems
        assert problems, "a refusal must say why"

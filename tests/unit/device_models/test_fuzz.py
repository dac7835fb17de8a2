"""Whatever the input, the parsers and operations fail only with the library's own error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import (
    BUILTIN_MODEL_YAML,
    DeviceModel,
    DeviceModelsError,
    JsonObject,
    JsonValue,
    Replica,
    Role,
    Section,
    Twin,
    TwinChange,
    apply_change,
    builtin_model,
    write_change,
)
from tests.unit.device_models.strategies import anything, patches

FUZZ = settings(max_examples=60, deadline=None)


def fails_cleanly(operation: Callable[[], object]) -> None:
    try:
        operation()
    except DeviceModelsError as error:
        problems = error.problems
    else:
        return
    assert problems  # every error says what was wrong
    assert all(problem.reason for problem in problems)


@FUZZ
@given(data=anything)
def test_json_parsers_fail_cleanly(data: object) -> None:
    fails_cleanly(lambda: DeviceModel.from_dict(data))
    fails_cleanly(lambda: Twin.from_json(data))
    fails_cleanly(lambda: TwinChange.from_json(data))
    fails_cleanly(lambda: Replica.from_json(data))
    fails_cleanly(lambda: builtin_model("thermostat").validate_reported(data))
    fails_cleanly(lambda: builtin_model("thermostat").validate_desired(data))
    fails_cleanly(lambda: Twin().apply_reported_patch(data, now=1))


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_yaml_parser_fails_cleanly(text: str | bytes) -> None:
    fails_cleanly(lambda: DeviceModel.from_yaml(text))


@FUZZ
@given(
    name=st.sampled_from(sorted(BUILTIN_MODEL_YAML)),
    position=st.integers(min_value=0),
    junk=st.text(alphabet=" :-[]{}\n#&*!|>'\"0a", max_size=8),
)
def test_damaged_builtin_yaml_fails_cleanly(name: str, position: int, junk: str) -> None:
    text = BUILTIN_MODEL_YAML[name]
    cut = position % len(text)
    fails_cleanly(lambda: DeviceModel.from_yaml(text[:cut] + junk + text[cut:]))


def valid_documents() -> st.SearchStrategy[tuple[JsonObject, JsonObject, JsonObject]]:
    """A twin, a change and a replica as JSON, built through the real operations."""

    def build(steps: list[JsonObject]) -> tuple[JsonObject, JsonObject, JsonObject]:
        replica = Replica(origin="edge-1", role=Role.EDGE)
        change = None
        for now, patch in enumerate(steps):
            replica, change = write_change(replica, Section.REPORTED, patch, now=now)
        if change is None:
            replica, change = write_change(replica, Section.DESIRED, {}, now=0)
        return replica.twin.to_json(), change.to_json(), replica.to_json()

    return st.lists(patches, max_size=4).map(build)


def corrupt(document: JsonObject, path: list[int], junk: object) -> JsonObject:
    """`document` with the member chosen by `path` (indices into keys) replaced by `junk`."""
    node: JsonValue = document
    for step in path:
        if not isinstance(node, dict) or not node:
            break
        key = sorted(node)[step % len(node)]
        if not isinstance(node[key], dict) or not node[key]:
            node[key] = junk  # type: ignore[assignment]  # junk is the point
            return document
        node = node[key]
    return document


@FUZZ
@given(
    documents=valid_documents(),
    which=st.integers(min_value=0, max_value=2),
    path=st.lists(st.integers(min_value=0), min_size=1, max_size=4),
    junk=anything,
)
def test_corrupted_documents_fail_cleanly(
    documents: tuple[JsonObject, JsonObject, JsonObject],
    which: int,
    path: list[int],
    junk: object,
) -> None:
    document = corrupt(documents[which], path, junk)
    parser: Callable[[object], object] = (Twin.from_json, TwinChange.from_json, Replica.from_json)[
        which
    ]
    fails_cleanly(lambda: parser(document))


@settings(max_examples=50, deadline=None)
@given(documents=valid_documents(), junk=anything)
def test_parsed_changes_apply_cleanly(
    documents: tuple[JsonObject, JsonObject, JsonObject], junk: object
) -> None:
    _, change_json, _ = documents
    change = TwinChange.from_json(change_json)
    cloud = Replica(origin="cloud", role=Role.CLOUD)
    fails_cleanly(lambda: apply_change(cloud, change))
    fails_cleanly(lambda: write_change(cloud, Section.DESIRED, junk, now=1))


def hostile_inputs() -> list[object]:
    cyclic: dict[str, object] = {}
    cyclic["a"] = cyclic
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    return [cyclic, {"a": list(range(1_000_000))}, {"a": deep}]


@pytest.mark.parametrize("hostile", hostile_inputs(), ids=["cyclic", "wide", "deep"])
def test_cyclic_and_huge_inputs_cost_bounded_work(hostile: object) -> None:
    thermostat = builtin_model("thermostat")
    fails_cleanly(lambda: Twin().apply_reported_patch(hostile, now=1))
    fails_cleanly(lambda: thermostat.validate_reported(hostile))
    fails_cleanly(lambda: Twin.from_json({"desired": hostile, "reported": {}}))

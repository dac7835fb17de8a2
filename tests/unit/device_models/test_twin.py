"""The twin document: patches, versions, metadata, delta, limits and its JSON form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import (
    MAX_DEPTH,
    MAX_SECTION_BYTES,
    DocumentError,
    JsonObject,
    JsonValue,
    LimitExceededError,
    Twin,
    VersionConflictError,
    compact_size,
)
from tests.unit.device_models.strategies import KEYS, patches


def nested(levels: int) -> JsonValue:
    """Objects nested `levels` deep around a 0 (one level is {"x": 0})."""
    value: JsonValue = 0
    for _ in range(levels):
        value = {"x": value}
    return value


def test_a_new_twin_is_empty_at_version_zero() -> None:
    assert Twin().to_json() == {
        "desired": {"$version": 0, "$metadata": {}},
        "reported": {"$version": 0, "$metadata": {}},
    }


def test_patches_merge_and_stamp_every_key_they_touch() -> None:
    twin = Twin().apply_reported_patch({"temp": 20, "cfg": {"a": 1, "b": [1, 2]}}, now=100)
    twin = twin.apply_reported_patch({"cfg": {"b": None, "c": {"d": True}}}, now=200)
    assert twin.to_json()["reported"] == {
        "temp": 20,
        "cfg": {"a": 1, "c": {"d": True}},
        "$version": 2,
        "$metadata": {
            "$lastUpdated": 200.0,
            "temp": {"$lastUpdated": 100.0},
            "cfg": {
                "$lastUpdated": 200.0,  # a member was deleted at 200: the parent says so
                "a": {"$lastUpdated": 100.0},
                "c": {"$lastUpdated": 200.0, "d": {"$lastUpdated": 200.0}},
            },
        },
    }
    assert twin.desired.version == 0


def test_replacing_a_scalar_by_an_object_strips_its_null_members() -> None:
    twin = Twin().apply_desired_patch({"a": 1}, now=1)
    twin = twin.apply_desired_patch({"a": {"b": None, "c": 2}}, now=2)
    assert twin.desired.values == {"a": {"c": 2}}
    assert twin.desired.metadata["a"] == {"$lastUpdated": 2.0, "c": {"$lastUpdated": 2.0}}


def test_operations_never_mutate_inputs_or_older_twins() -> None:
    patch: JsonObject = {"cfg": {"a": 1}}
    first = Twin().apply_desired_patch(patch, now=1)
    snapshot = first.to_json()
    second = first.apply_desired_patch({"cfg": {"a": None, "b": 2}}, now=2)
    patch["cfg"] = "changed by the caller"
    exported = second.to_json()
    exported["desired"] = {}
    assert first.to_json() == snapshot
    assert second.desired.values == {"cfg": {"b": 2}}


def test_expected_version_guards_against_lost_updates() -> None:
    twin = Twin().apply_desired_patch({"sp": 20}, now=1, expected_version=0)
    with pytest.raises(VersionConflictError) as caught:
        twin.apply_desired_patch({"sp": 21}, now=2, expected_version=0)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    assert (
        str(caught.value)
        == "version conflict\n  desired.$version: expected $version 0, current is 1"
    )
    assert twin.apply_desired_patch({"sp": 21}, now=2, expected_version=1).desired.version == 2


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ([1], "<root>: must be an object (got array)"),
        ({"a": float("inf")}, "a: numbers must be finite (JSON has no NaN or Infinity)"),
        ({"$version": 3}, "$version: keys starting with '$' are reserved"),
        ({"": 1}, '"": keys must be 1 to 128 characters'),
        ({"a": {1: 2}}, "a: keys must be strings (got int 1)"),
        ({"a": (1, 2)}, "a: not a JSON value (got tuple)"),
        ({"a": 2**64}, "a: integer out of the 64-bit range"),
        ({"a": "x" * 4097}, "a: string longer than 4096 characters"),
    ],
)
def test_malformed_patches_are_refused(patch: object, expected: str) -> None:
    with pytest.raises(DocumentError) as caught:
        Twin().apply_reported_patch(patch, now=1)
    assert [str(problem) for problem in caught.value.problems] == [expected]


def test_time_must_be_epoch_seconds() -> None:
    for now in (float("nan"), -1, True):
        with pytest.raises(DocumentError, match="now: must be epoch seconds"):
            Twin().apply_reported_patch({}, now=now)


def test_delta_lists_desired_values_reported_does_not_match() -> None:
    twin = Twin().apply_desired_patch(
        {"sp": 21, "mode": "heat", "on": True, "cfg": {"a": 1, "b": 2}, "list": [1, 2]}, now=1
    )
    twin = twin.apply_reported_patch(
        {"sp": 21.0, "on": 1, "cfg": {"a": 1, "b": 3}, "list": [1], "extra": 5}, now=2
    )
    assert twin.delta() == {"mode": "heat", "on": True, "cfg": {"b": 2}, "list": [1, 2]}


def test_delta_is_empty_when_reported_matches() -> None:
    twin = Twin().apply_desired_patch({"cfg": {"a": 1}}, now=1)
    assert twin.apply_reported_patch({"cfg": {"a": 1, "z": 0}}, now=2).delta() == {}


def filled(size: int) -> JsonObject:
    """Values whose compact JSON is exactly `size` bytes (size >= 200)."""
    values: JsonObject = {"pad": ""}
    while compact_size(values) + 4100 < size:
        values[f"k{len(values)}"] = "x" * 4000
    values["pad"] = "y" * (size - compact_size(values))
    assert compact_size(values) == size
    return values


def test_section_size_limit_is_exact() -> None:
    twin = Twin().apply_reported_patch(filled(MAX_SECTION_BYTES), now=1)
    assert compact_size(twin.reported.values) == MAX_SECTION_BYTES
    with pytest.raises(LimitExceededError) as caught:
        twin.apply_reported_patch({"one": 1}, now=2)
    assert str(caught.value.problems[0]) == "reported: would be 32776 bytes, more than 32768"
    # Multi-byte characters count as their UTF-8 bytes.
    with pytest.raises(LimitExceededError):
        Twin().apply_reported_patch({**filled(MAX_SECTION_BYTES - 10), "u": "€€€€"}, now=1)


def test_depth_limit_is_exact() -> None:
    Twin().apply_desired_patch({"a": nested(MAX_DEPTH - 1), "list": [[[0]]]}, now=1)
    with pytest.raises(LimitExceededError, match="nested deeper than 10 levels"):
        Twin().apply_desired_patch({"a": nested(MAX_DEPTH)}, now=1)
    with pytest.raises(LimitExceededError):
        Twin().apply_desired_patch({"a": [nested(MAX_DEPTH - 1)]}, now=1)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.dictionaries(
            KEYS,
            st.one_of(
                st.none(),
                st.text(alphabet="aé€😀", max_size=4000),
                st.integers(min_value=0, max_value=12).map(nested),
            ),
            max_size=3,
        ),
        max_size=25,
    )
)
def test_no_accepted_section_ever_breaks_a_limit(steps: list[JsonObject]) -> None:
    twin = Twin()
    for now, patch in enumerate(steps):
        try:
            after = twin.apply_reported_patch(patch, now=now)
        except LimitExceededError:
            continue  # refused whole: the twin we hold is the one before
        assert after.reported.version == twin.reported.version + 1
        twin = after
        assert compact_size(twin.reported.values) <= MAX_SECTION_BYTES
        assert _depth(twin.reported.values) <= MAX_DEPTH


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), patches), max_size=8))
def test_json_round_trip(steps: list[tuple[bool, JsonObject]]) -> None:
    twin = Twin()
    for now, (desired, patch) in enumerate(steps):
        if desired:
            twin = twin.apply_desired_patch(patch, now=now)
        else:
            twin = twin.apply_reported_patch(patch, now=now)
    assert Twin.from_json(twin.to_json()) == twin


def test_versions_grow_by_one_per_accepted_patch_and_never_otherwise() -> None:
    twin = Twin()
    twin = twin.apply_desired_patch({}, now=1)
    assert (twin.desired.version, twin.reported.version) == (1, 0)
    with pytest.raises(DocumentError):
        twin.apply_desired_patch({"a": float("nan")}, now=2)
    assert twin.apply_reported_patch({"a": 1}, now=2).desired.version == 1


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([], "<root>: must be an object with exactly desired and reported (got array)"),
        (
            {"desired": {}},
            "<root>: must be an object with exactly desired and reported (got ['desired'])",
        ),
        (
            {"desired": {"$metadata": {}}, "reported": {"$version": 0, "$metadata": {}}},
            "desired.$version: must be an integer >= 0 (got null)",
        ),
        (
            {
                "desired": {"a": 1, "$version": 1, "$metadata": {}},
                "reported": {"$version": 0, "$metadata": {}},
            },
            "desired.$metadata.a: must be an object with $lastUpdated (got null)",
        ),
        (
            {
                "desired": {
                    "$version": 1,
                    "$metadata": {"$lastUpdated": 1, "ghost": {"$lastUpdated": 1}},
                },
                "reported": {"$version": 0, "$metadata": {}},
            },
            "desired.$metadata.ghost: metadata for a value that does not exist",
        ),
        (
            {
                "desired": {"a": None, "$version": 1, "$metadata": {}},
                "reported": {"$version": 0, "$metadata": {}},
            },
            "desired.a: null is not a value (it deletes)",
        ),
        (
            {
                "desired": {"$etag": 1, "$version": 1, "$metadata": {}},
                "reported": {"$version": 0, "$metadata": {}},
            },
            "desired.$etag: keys starting with '$' are reserved",
        ),
        (
            {
                "desired": {
                    "a": 1,
                    "$version": 1,
                    "$metadata": {"a": {"$lastUpdated": "yesterday"}},
                },
                "reported": {"$version": 0, "$metadata": {}},
            },
            "desired.$metadata.a.$lastUpdated: must be epoch seconds (a number >= 0)",
        ),
    ],
)
def test_from_json_explains_what_is_wrong(document: object, expected: str) -> None:
    with pytest.raises(DocumentError) as caught:
        Twin.from_json(document)
    assert str(caught.value.problems[0]) == expected


def test_from_json_enforces_the_limits() -> None:
    document = Twin().to_json()
    big = filled(MAX_SECTION_BYTES + 1)
    document["reported"] = {
        **big,
        "$version": 1,
        "$metadata": {key: {"$lastUpdated": 1} for key in big},
    }
    with pytest.raises(LimitExceededError):
        Twin.from_json(document)

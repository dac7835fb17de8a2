"""JSON merge patch (RFC 7386), diff and JSON equality."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import JsonValue, diff, json_equal, merge_patch
from tests.unit.device_models.strategies import KEYS, json_values, patches

# RFC 7386 Appendix A, verbatim: original, patch, result.
RFC7386_EXAMPLES = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', "{}"),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
    ('{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
    ('["a","b"]', '["c","d"]', '["c","d"]'),
    ('{"a":"b"}', '["c"]', '["c"]'),
    ('{"a":"foo"}', "null", "null"),
    ('{"a":"foo"}', '"bar"', '"bar"'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ("[1,2]", '{"a":"b","c":null}', '{"a":"b"}'),
    ("{}", '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7386_EXAMPLES)
def test_merge_patch_matches_rfc7386_appendix(original: str, patch: str, result: str) -> None:
    target = json.loads(original)
    before = json.loads(original)
    assert merge_patch(target, json.loads(patch)) == json.loads(result)
    assert target == before  # the target was not mutated


def test_merge_patch_does_not_share_the_patch_objects_it_keeps() -> None:
    patch: dict[str, JsonValue] = {"a": {"b": 1}}
    result = merge_patch({}, patch)
    assert result == {"a": {"b": 1}}
    assert isinstance(result, dict)
    assert result["a"] is not patch  # the caller may reuse its patch dict


@settings(max_examples=60, deadline=None)
@given(old=st.dictionaries(KEYS, json_values(null_members=False)), patch=patches)
def test_merge_patch_is_idempotent(old: dict[str, JsonValue], patch: dict[str, JsonValue]) -> None:
    once = merge_patch(old, patch)
    assert json_equal(merge_patch(once, patch), once)


@settings(max_examples=60, deadline=None)
@given(
    old=st.dictionaries(KEYS, json_values(null_members=False)),
    new=st.dictionaries(KEYS, json_values(null_members=False)),
)
def test_diff_is_the_patch_from_old_to_new(
    old: dict[str, JsonValue], new: dict[str, JsonValue]
) -> None:
    patch = diff(old, new)
    assert json_equal(merge_patch(old, patch), new)
    assert diff(new, new) == {}


def test_json_equal_tells_booleans_from_numbers() -> None:
    assert not json_equal(True, 1)  # noqa: FBT003  # the point is comparing a bare bool
    assert not json_equal({"a": [0]}, {"a": [False]})
    assert json_equal(1, 1.0)
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal({"a": 1}, {"b": 1})
    assert not json_equal([1], {"0": 1})

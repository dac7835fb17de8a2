# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The LIST splitter: items as json.loads would give them, at any cut, in bounded memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.kubecache.itemstream import ItemSplitter, ListFormatError

LIMIT = 1 << 16

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_items = st.lists(st.dictionaries(st.text(max_size=8), _values, max_size=5), max_size=6)


def split(data: bytes, cuts: list[int], *, limit: int = LIMIT) -> tuple[list[Any], ItemSplitter]:
    splitter = ItemSplitter(max_item_chars=limit)
    out: list[Any] = []
    last = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        out += splitter.feed(data[last:cut])
        last = cut
    out += splitter.feed(data[last:])
    out += splitter.close()
    return out, splitter


@pytest.mark.timeout(180)  # hundreds of examples on a busy 2-CPU box
@settings(max_examples=200, deadline=None)
@given(
    items=_items,
    meta=st.dictionaries(st.text(max_size=8), _values, max_size=3),
    items_first=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_items_and_envelope_are_what_json_loads_gives_at_any_cut(  # noqa: PLR0917 - hypothesis
    items: list[dict[str, Any]],
    meta: dict[str, Any],
    items_first: bool,  # noqa: FBT001 - drawn by hypothesis
    indent: int | None,
    ascii_only: bool,  # noqa: FBT001 - drawn by hypothesis
    cuts: list[int],
) -> None:
    envelope = {"kind": "PodList", "apiVersion": "v1", "metadata": meta}
    body = {"items": items, **envelope} if items_first else {**envelope, "items": items}
    data = json.dumps(body, indent=indent, ensure_ascii=ascii_only).encode()
    out, splitter = split(data, cuts)
    expected = json.loads(data)
    assert out == expected["items"]
    assert splitter.envelope == {k: v for k, v in expected.items() if k != "items"}
    assert splitter.items_seen == len(items)
    assert splitter.done


@pytest.mark.timeout(180)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=5))
def test_any_bytes_give_the_items_of_a_valid_list_or_list_format_error(
    data: bytes, cuts: list[int]
) -> None:
    try:
        out, _ = split(data, cuts)
    except ListFormatError:
        return
    assert out == json.loads(data)["items"]  # accepted only what json.loads reads the same


@pytest.mark.timeout(180)
@settings(max_examples=200, deadline=None)
@given(items=_items, data=st.data())
def test_a_body_cut_short_is_an_error_not_a_shorter_list(
    items: list[dict[str, Any]], data: st.DataObject
) -> None:
    whole = json.dumps({"kind": "PodList", "apiVersion": "v1", "items": items}).encode()
    end = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    cut = whole[:end].rstrip()
    if cut == whole.rstrip():  # nothing but trailing blanks were cut
        return
    with pytest.raises(ListFormatError):
        split(cut, [])


def test_an_item_over_the_limit_fails_before_the_body_is_held() -> None:
    """A never-ending item raises once it passes the limit: memory stays bounded."""
    splitter = ItemSplitter(max_item_chars=1000)
    splitter.feed(b'{"kind":"PodList","items":[{"a":"')
    fed = 0

    def feed_forever() -> None:
        nonlocal fed
        while True:
            splitter.feed(b"x" * 100)
            fed += 100

    with pytest.raises(ListFormatError, match="over the limit"):
        feed_forever()
    assert fed <= 1000  # refused once past the limit, not at the end of the body


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"items":[],"items":[]}', "two items"),
        (b'{"items":[1]}', "not a JSON object"),
        (b'{"items":[{}]} x', "after the end"),
        (b'{"kind":"PodList"}', "no items"),
        (b"[]", "expected"),
        (b'{"items":[{"a":"\xff"}]}', "UTF-8"),
    ],
)
def test_bodies_that_are_no_list_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(ListFormatError, match=why):
        split(body, [])


def test_a_big_integer_and_unicode_cut_mid_character_stay_exact() -> None:
    item = {"n": 2**64 + 1, "s": "naïve ☃ 𝄞"}
    data = json.dumps({"items": [item]}, ensure_ascii=False).encode()
    for cut in range(len(data)):
        out, _ = split(data, [cut])
        assert out == [item]

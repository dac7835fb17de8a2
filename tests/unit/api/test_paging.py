"""Paging by key (``api.paging``) and ``If-Match`` (``api.preconditions``) as a client sees them."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from tunnel_server.api.paging import page, sort_items
from tunnel_server.api.preconditions import check_if_match, etag
from tunnel_server.web.errors import ApiError


def _get(path: str, **query: str) -> web.Request:
    return make_mocked_request("GET", f"{path}?{urlencode(query)}" if query else path)


def _all_pages(names: list[str], limit: int, *, reverse: bool = False) -> list[list[str]]:
    items = sort_items(names, key=lambda n: (n,), reverse=reverse)
    pages, token = [], None
    while True:
        query = {"limit": str(limit)} | ({"continue": token} if token else {})
        body = page(_get("/x", **query), items, key=lambda n: (n,), render=str, reverse=reverse)
        pages.append(body["items"])
        token = body["metadata"]["continue"]
        if token is None:
            assert "remainingItemCount" not in body["metadata"]
            return pages
        assert body["metadata"]["remainingItemCount"] == len(items) - sum(map(len, pages))


@given(st.sets(st.text(min_size=1, max_size=5), max_size=30), st.integers(1, 7), st.booleans())
def test_pages_hold_every_item_once_in_order(names: set[str], limit: int, reverse: bool) -> None:  # noqa: FBT001
    pages = _all_pages(list(names), limit, reverse=reverse)
    flat = [n for p in pages for n in p]
    assert flat == sorted(names, reverse=reverse)
    assert all(0 < len(p) <= limit for p in pages[:-1])


def test_an_item_deleted_between_pages_skips_no_other() -> None:
    items = ["a", "b", "c", "d", "e"]
    first = page(_get("/x", limit="2"), items, key=lambda n: (n,), render=str)
    token = first["metadata"]["continue"]
    rest = page(
        _get("/x", limit="9", **{"continue": token}),
        ["a", "c", "d", "e"],
        key=lambda n: (n,),
        render=str,
    )
    assert first["items"] + rest["items"] == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("token", ["garbage!", "e30", "x" * 3000])
def test_a_mangled_token_is_400_bad_continue(token: str) -> None:
    with pytest.raises(ApiError) as refused:
        page(_get("/x", **{"continue": token}), ["a"], key=lambda n: (n,), render=str)
    assert (refused.value.status, refused.value.code) == (400, "bad_continue")


def test_a_token_sent_with_another_query_is_400() -> None:
    first = page(_get("/x", limit="1", status="online"), ["a", "b"], key=lambda n: (n,), render=str)
    token = first["metadata"]["continue"]
    with pytest.raises(ApiError) as refused:
        page(
            _get("/x", status="offline", **{"continue": token}),
            ["a", "b"],
            key=lambda n: (n,),
            render=str,
        )
    assert refused.value.code == "bad_continue"


@pytest.mark.parametrize("limit", ["0", "-1", "x", "1001"])
def test_a_bad_limit_is_400(limit: str) -> None:
    with pytest.raises(ApiError) as refused:
        page(_get("/x", limit=limit), ["a"], key=lambda n: (n,), render=str)
    assert refused.value.code == "bad_parameter"


@pytest.mark.parametrize(
    ("header", "current", "passes"),
    [
        (None, 3, True),
        ('"3"', 3, True),
        ('"2", "3"', 3, True),
        ('"2"', 3, False),
        ("*", 3, True),
        ("*", None, False),
        ('"3"', None, False),
    ],
)
def test_if_match(header: str | None, current: int | None, passes: bool) -> None:  # noqa: FBT001
    request = make_mocked_request("PATCH", "/x", headers={"If-Match": header} if header else {})
    if passes:
        check_if_match(request, current)
        return
    with pytest.raises(ApiError) as refused:
        check_if_match(request, current)
    assert (refused.value.status, refused.value.code) == (412, "precondition_failed")
    assert etag(7) == '"7"'


@pytest.mark.parametrize("header", ["3", '"3', 'W/"3"x', '"a"b"'])
def test_a_malformed_if_match_is_400(header: str) -> None:
    request = make_mocked_request("PATCH", "/x", headers={"If-Match": header})
    with pytest.raises(ApiError) as refused:
        check_if_match(request, 3)
    assert refused.value.code == "bad_if_match"

"""The one list shape of the REST API: ``{items, metadata: {continue, remainingItemCount}}``.

Every list route pages the same way (docs/api.md, "Lists"), as Kubernetes lists do:

* ``limit`` (1..the route's maximum, default ``DEFAULT_LIMIT``) caps the items of one page;
* a page that stops early says so with ``metadata.continue``, an opaque token; the client sends
  it back as ``continue`` with the *same* other query parameters for the next page, and
  ``metadata.remainingItemCount`` says how many items are still to come. The last page has
  ``continue: null``.
* Paging is by key, not by offset: the token carries the sort key of the last item sent, so an
  item created or deleted between two pages never makes the next page skip or repeat another.
  A token is bound to the query it came from (its filters and sort): sent with another query, or
  mangled, it is a 400 ``bad_continue``. Tokens do not expire.

``page(request, items, key=...)`` does all of it for a route that has its items in memory
(every list of ours fits: the store answers in one query and the rows are small).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from tunnel_server.web.errors import ApiError

T = TypeVar("T")
Key = tuple[Any, ...]
"""A sort key of JSON scalars (str, int, float, bool, None), the last one unique per item."""

DEFAULT_LIMIT = 500
MAX_CONTINUE = 2048
"""Characters of a ``continue`` token read; ours are far shorter."""
_PAGING = frozenset({"limit", "continue"})


@dataclass(frozen=True, kw_only=True)
class PageParams:
    limit: int
    after: Key | None
    """The sort key of the last item of the previous page; ``None``: the first page."""
    scope: str
    """Digest of the query's other parameters, which a token is bound to."""


def page_params(request: web.Request, *, max_limit: int = 1000) -> PageParams:
    """``limit`` and ``continue`` of ``request``; 400 ``bad_parameter`` / ``bad_continue``."""
    raw_limit = request.query.get("limit")
    limit = min(DEFAULT_LIMIT, max_limit)
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= max_limit:
            raise ApiError(
                400, "bad_parameter", f"query parameter 'limit' must be an integer 1..{max_limit}"
            )
        limit = int(raw_limit)
    scope = _scope(request)
    token = request.query.get("continue")
    after = None if not token else decode_continue(token, scope=scope)
    return PageParams(limit=limit, after=after, scope=scope)


def page(
    request: web.Request,
    items: Sequence[T],
    *,
    key: Callable[[T], Key],
    render: Callable[[T], Any],
    max_limit: int = 1000,
    reverse: bool = False,
) -> dict[str, Any]:
    """The list body for ``items`` (already filtered, in ``sort_items(key, reverse)`` order)."""
    params = page_params(request, max_limit=max_limit)
    start = 0
    if params.after is not None:
        after = _comparable(params.after)
        start = next(
            (
                i
                for i, item in enumerate(items)
                if (_comparable(key(item)) < after if reverse else _comparable(key(item)) > after)
            ),
            len(items),
        )
    chosen = items[start : start + params.limit]
    remaining = len(items) - start - len(chosen)
    token = None
    if remaining > 0 and chosen:
        token = encode_continue(key(chosen[-1]), scope=params.scope)
    return list_body([render(item) for item in chosen], token=token, remaining=remaining)


def list_body(items: list[Any], *, token: str | None, remaining: int | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"continue": token}
    if token is not None and remaining is not None:
        metadata["remainingItemCount"] = remaining
    return {"items": items, "metadata": metadata}


def encode_continue(key: Key, *, scope: str) -> str:
    raw = json.dumps({"k": list(key), "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str, *, scope: str) -> Key:
    bad = ApiError(
        400,
        "bad_continue",
        "the 'continue' token is not one this list gave for this query: send it back unchanged, "
        "with the same other query parameters, or start again without it",
    )
    if len(token) > MAX_CONTINUE:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(data, dict) or data.get("s") != scope or not isinstance(data.get("k"), list):
        raise bad
    key = tuple(data["k"])
    if not all(v is None or isinstance(v, str | int | float | bool) for v in key):
        raise bad
    return key


def _scope(request: web.Request) -> str:
    query = sorted((k, v) for k, v in request.query.items() if k not in _PAGING)
    text = json.dumps([request.path, query], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _comparable(key: Key) -> tuple[tuple[int, Any], ...]:
    """Keys with None and mixed types compare: None first, then numbers, then text."""
    out: list[tuple[int, Any]] = []
    for value in key:
        if value is None:
            out.append((0, 0))
        elif isinstance(value, bool | int | float):
            out.append((1, float(value)))
        else:
            out.append((2, str(value)))
    return tuple(out)


def sort_items(items: Sequence[T], *, key: Callable[[T], Key], reverse: bool = False) -> list[T]:
    """``items`` in the order ``page`` pages them by (``key``, None first; ``reverse``: last)."""
    return sorted(items, key=lambda item: _comparable(key(item)), reverse=reverse)

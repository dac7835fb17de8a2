"""Query parameters and names of the REST API's list and item routes, checked one way.

``choice`` and ``name_query`` read the filters of list routes (``status``, ``sort``, ``q``;
``api.paging`` reads ``limit`` and ``continue``), ``is_name`` is the node and cluster name rule
(``identity.tokens``' own): each bad value is a 400 ``bad_parameter`` that says what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

from aiohttp import web

from tunnel_server.identity import tokens
from tunnel_server.web.errors import ApiError

MAX_QUERY = 100
"""Characters of the ``q`` name filter."""


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(
            400, "bad_parameter", f"query parameter {name!r} must be an integer {low}..{high}"
        )
    return int(raw)


def choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is not None and raw not in choices:
        raise ApiError(
            400, "bad_parameter", f"query parameter {name!r} must be one of {', '.join(choices)}"
        )
    return raw


def name_query(request: web.Request) -> str:
    """``q``: the lower-cased part of a name a list is filtered by (empty: every name)."""
    query = request.query.get("q", "")
    if len(query) > MAX_QUERY:
        raise ApiError(
            400, "bad_parameter", f"query parameter 'q' is at most {MAX_QUERY} characters"
        )
    return query.lower()


@dataclass(frozen=True, kw_only=True)
class ListParams:
    """Old list parameters with ``offset``.

    Only the clusters list reads them until it pages by ``continue`` (``api.paging``); then
    this goes.
    """

    limit: int
    offset: int
    status: str | None
    sort: str | None
    """A field of the route's sort fields, ``-`` first for descending."""
    query: str
    """Lower-cased part of a name to look for (``q``); empty: all."""


def list_params(
    request: web.Request, *, max_page: int, statuses: tuple[str, ...], sort_fields: tuple[str, ...]
) -> ListParams:
    query = request.query.get("q", "")
    params = ListParams(
        limit=int_param(request, "limit", 1000, 1, max_page),
        offset=int_param(request, "offset", 0, 0, 10**9),
        status=choice(request, "status", statuses),
        sort=choice(request, "sort", sort_fields + tuple("-" + f for f in sort_fields)),
        query=query.lower(),
    )
    if len(query) > MAX_QUERY:
        raise ApiError(
            400, "bad_parameter", f"query parameter 'q' is at most {MAX_QUERY} characters"
        )
    return params


def is_name(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a valid node or cluster name (``identity.tokens.validate_name``)."""
    if not isinstance(name, str):
        return False
    try:
        tokens.validate_name(name)
    except ValueError:
        return False
    return True

"""A registered cluster's NodePools and ResourcePolicies in the REST API (issue 15, cloud view).

``GET /api/v1/clusters/{name}/nodepools`` and ``GET /api/v1/clusters/{name}/resourcepolicies
[?namespace=NS]``: the member cluster's ``elastic.edgefleet.io/v1alpha1`` objects with their
usage (what the cluster agent wrote in their status), one compact item each
(``elastic_shape``). The console's cluster page and ``tunnel-server get nodepools --cluster C``
read these routes.

Rules:

* Authorization first: ``require(request, "read", cluster=name)`` (403 before anything leaves
  the cloud); then the member is asked through the tunnel *as the caller*, with the cluster
  proxy's impersonation (``member_read``): the member's RBAC decides, and a refusal there is
  403 ``member_forbidden`` quoting the member's message. The agent's own rights are never used.
* Nothing is kept in the cloud: every call is one LIST in the member, so the answer is as
  fresh as the member's API server (the agent writes status as it acts).
* Paging is the member's, passed through in the API's shape: ``limit`` (1..1000, default 500)
  goes to the member; the member's ``continue`` comes back wrapped in our token, bound to the
  path and the other parameters (``api.paging``), so a token sent with another cluster or
  namespace is 400 ``bad_continue`` and never reaches a member. A member token that expired
  is 410 ``expired``. Items are in the member's order (by name; by namespace, then name).
* The CRDs not installed in the member (it answers 404 for the resource) is 404
  ``elastic_not_installed``: one answer for "nothing to show because the kind does not exist
  there", apart from an empty list (the kind exists, no objects); so is an agent that offers
  no API server (404 ``apiserver_not_served``). A cluster offline is 503 ``cluster_offline``;
  everything else ``member_read`` and ``elastic_shape.refusal`` say.
* Bounded: ``member_read``'s time and byte limits; ``namespace`` is a DNS label.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from tunnel_server.api.access import require
from tunnel_server.api.paging import PageParams, encode_continue, list_body, page_params
from tunnel_server.api.params import is_name
from tunnel_server.fleet import elastic_shape
from tunnel_server.fleet.member_read import (
    MEMBER_READ_SETTINGS_KEY,
    MemberAnswer,
    MemberReadSettings,
    member_get,
)
from tunnel_server.web.errors import ApiError

__all__ = ["NAMESPACE_PATTERN", "list_nodepools", "list_resourcepolicies", "setup"]

log = logging.getLogger("tunnel_server.fleet.elastic_view")

NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
"""A Kubernetes namespace name (an RFC 1123 label)."""
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
_API = f"/apis/{elastic_shape.GROUP}/{elastic_shape.VERSION}"


def _cluster_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not is_name(name):
        raise ApiError(
            400,
            "bad_name",
            "cluster names are 1-63 lower-case letters, digits, '-' or '.', starting and "
            "ending with a letter or digit",
        )
    return name


def _namespace(request: web.Request) -> str | None:
    raw = request.query.get("namespace")
    if raw is None or raw == "":
        return None
    if not _NAMESPACE.fullmatch(raw):
        raise ApiError(
            400,
            "bad_parameter",
            "query parameter 'namespace' must be a namespace name: 1-63 lower-case letters, "
            "digits or '-', starting and ending with a letter or digit",
        )
    return raw


def _member_continue(params: PageParams) -> str | None:
    """The member's token inside ours (``page_params`` checked it is ours, for this query)."""
    if params.after is None:
        return None
    key = params.after
    if len(key) != 1 or not isinstance(key[0], str) or not key[0]:
        raise ApiError(
            400,
            "bad_continue",
            "the 'continue' token is not one this list gave for this query: send it back "
            "unchanged, with the same other query parameters, or start again without it",
        )
    return key[0]


def _member_path(collection: str, params: PageParams) -> str:
    query = {"limit": str(params.limit)}
    token = _member_continue(params)
    if token is not None:
        query["continue"] = token
    return collection + "?" + urlencode(query, quote_via=quote)


def _document(answer: MemberAnswer, *, cluster: str, plural: str) -> object:
    """The member's JSON, or the problem its answer means."""
    document: object
    try:
        document = json.loads(answer.body) if answer.body else None
    except (ValueError, RecursionError):
        # Not JSON: an error answer's text is still the member's words (bounded there).
        document = answer.body[: elastic_shape.MAX_TEXT].decode("utf-8", "replace")
        if 200 <= answer.status < 300:
            raise ApiError(
                502,
                "bad_upstream",
                f"cluster {cluster} answered {answer.status} with a body that is not JSON "
                f"({answer.content_type or 'no content type'})",
            ) from None
    if not 200 <= answer.status < 300:
        refused = elastic_shape.refusal(answer.status, document, cluster=cluster, plural=plural)
        log.debug(
            "cluster %s refused a list of %s: %s %s",
            cluster,
            plural,
            answer.status,
            refused.reason,
        )
        raise ApiError(refused.status, refused.reason, refused.detail)
    return document


async def _list(
    request: web.Request,
    *,
    plural: str,
    collection: Callable[[], str],
    shape: Callable[[Mapping[str, Any]], dict[str, Any]],
) -> web.Response:
    cluster = _cluster_name(request)
    caller = require(request, "read", cluster=cluster)
    params = page_params(request)
    path = _member_path(collection(), params)
    answer = await member_get(request, cluster, path, caller=caller)
    document = _document(answer, cluster=cluster, plural=plural)
    try:
        listed = elastic_shape.member_list(document)
    except elastic_shape.MemberAnswerError as bad:
        raise ApiError(502, "bad_upstream", f"cluster {cluster}: {bad}") from None
    token = None
    if listed.continue_token is not None:
        token = encode_continue((listed.continue_token,), scope=params.scope)
    items = [shape(item) for item in listed.items]
    return web.json_response(list_body(items, token=token, remaining=listed.remaining))


async def list_nodepools(request: web.Request) -> web.Response:
    """``GET /api/v1/clusters/{name}/nodepools``: the member's NodePools, by name."""
    return await _list(
        request,
        plural="nodepools",
        collection=lambda: f"{_API}/nodepools",
        shape=elastic_shape.pool_item,
    )


async def list_resourcepolicies(request: web.Request) -> web.Response:
    """``GET /api/v1/clusters/{name}/resourcepolicies[?namespace=]``: by namespace, name."""

    def collection() -> str:
        namespace = _namespace(request)
        if namespace is None:
            return f"{_API}/resourcepolicies"
        return f"{_API}/namespaces/{namespace}/resourcepolicies"

    return await _list(
        request,
        plural="resourcepolicies",
        collection=collection,
        shape=elastic_shape.policy_item,
    )


def setup(app: web.Application, *, settings: MemberReadSettings | None = None) -> None:
    """Mount the routes; needs the API, the tunnel sessions and the cluster proxy's settings."""
    app[MEMBER_READ_SETTINGS_KEY] = settings or MemberReadSettings()
    app.router.add_get("/api/v1/clusters/{name}/nodepools", list_nodepools)
    app.router.add_get("/api/v1/clusters/{name}/resourcepolicies", list_resourcepolicies)

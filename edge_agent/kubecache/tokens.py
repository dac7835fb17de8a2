# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Service-account tokens (TokenRequest) kept usable while the upstream is unreachable.

kubelet asks for a pod's projected service-account token with
``POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`` (a TokenRequest; protobuf by
default, JSON from other clients). Online the request goes upstream, asking for JSON when the
client accepts it, and a cached component's answer is kept under

    ``t/<component>/<namespace>/<service account>/<sha256 of the request's spec>``

where the spec is what decides the token: audiences, boundObjectRef (kind, apiVersion, name,
uid) and expirationSeconds, read from a JSON or a protobuf body alike. Offline the same
request is answered ``201`` with the kept TokenRequest while its ``status.expirationTimestamp``
is in the future, else (or for a request never seen online) a 503 Status. A token is never
made up: it is the API server's own, signed by it, and expires when it said.

Tokens are secrets: they are never logged, the cache folder is 0700 and its files 0600, and
expired tokens are deleted whenever a new one is kept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from aiohttp import web

from edge_agent.kubecache.answers import json_answer, reject
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.keys import Verb
from edge_agent.kubecache.protowire import decode_token_request_spec
from edge_agent.kubecache.shared import Shared
from edge_agent.kubecache.wire import PROTOBUF, Representation

KEY_PREFIX = "t/"
_BOUND_KEYS = ("kind", "apiVersion", "name", "uid")


def is_token_request(call: Call) -> bool:
    resource = call.info.resource
    return (
        resource is not None
        and resource.group == ""
        and resource.resource == "serviceaccounts"
        and call.info.subresource == "token"
        and call.info.verb is Verb.CREATE
        and bool(call.info.namespace and call.info.name)
    )


def spec_from_json(body: object) -> dict[str, Any]:
    """The deciding part of a JSON TokenRequest, in the shape the protobuf reader gives."""
    spec = body.get("spec") if isinstance(body, dict) else None
    if not isinstance(spec, dict):
        raise ValueError("no spec")  # noqa: TRY004 - callers treat every bad body alike
    audiences = spec.get("audiences") or []
    if not (isinstance(audiences, list) and all(isinstance(a, str) for a in audiences)):
        raise ValueError("audiences is not a list of strings")
    out: dict[str, Any] = {"audiences": audiences}
    bound = spec.get("boundObjectRef")
    if isinstance(bound, dict):
        out["boundObjectRef"] = {key: str(bound.get(key) or "") for key in _BOUND_KEYS}
    seconds = spec.get("expirationSeconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        out["expirationSeconds"] = seconds
    return out


def request_key(call: Call) -> str | None:
    """The cache key of this TokenRequest's answer; None if the body cannot be read."""
    content_type = call.request.headers.get("Content-Type", "application/json")
    try:
        if content_type.split(";", 1)[0].strip().lower() == PROTOBUF:
            spec = decode_token_request_spec(call.body)
        else:
            spec = spec_from_json(json.loads(call.body))
    except ValueError:  # includes ProtoError and JSON errors
        return None
    digest = hashlib.sha256(
        json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return f"{KEY_PREFIX}{call.component}/{call.info.namespace}/{call.info.name}/{digest}"


def expiry_of(answer: object) -> float | None:
    """``status.expirationTimestamp`` of a TokenRequest answer as a Unix time, or None."""
    status = answer.get("status") if isinstance(answer, dict) else None
    text = status.get("expirationTimestamp") if isinstance(status, dict) else None
    if not isinstance(text, str) or not isinstance(status, dict) or not status.get("token"):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


async def remember(shared: Shared, call: Call, key: str, status: int, data: bytes) -> None:
    """Keep an upstream TokenRequest answer (a 201 with a token and an expiry)."""
    if status not in {200, 201}:
        return
    try:
        answer = json.loads(data)
    except ValueError:
        return
    expires = expiry_of(answer)
    if expires is None or not isinstance(answer, dict) or answer.get("kind") != "TokenRequest":
        return
    record = {"component": call.component, "expires": expires, "object": answer}
    now = dt.datetime.now(dt.UTC).timestamp()
    await shared.store.run("put_token", lambda s: s.put_token(key, record, now=now))


async def cached_answer(shared: Shared, key: str) -> dict[str, Any] | None:
    """The kept answer for ``key`` if its token has not expired yet."""
    record = await shared.store.run("get_token", lambda s: s.get_token(key))
    if not isinstance(record, dict) or not isinstance(record.get("object"), dict):
        return None
    expires = record.get("expires")
    if not isinstance(expires, int | float) or expires <= dt.datetime.now(dt.UTC).timestamp():
        return None
    answer: dict[str, Any] = record["object"]
    return answer


async def answer(shared: Shared, call: Call) -> web.StreamResponse:
    """A TokenRequest seen online, answered with the API server's token until it expires."""
    if call.representation is not Representation.JSON:
        return reject(shared, call, "the client accepts only protobuf, which is not made offline")
    key = request_key(call)
    answer = None if key is None else await cached_answer(shared, key)
    if answer is None:
        return reject(shared, call, "no unexpired token for this request is cached")
    shared.metrics.requests.labels(verb=call.info.verb.value, source="cache").inc()
    return json_answer(answer, status=201)

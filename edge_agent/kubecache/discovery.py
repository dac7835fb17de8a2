# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Discovery and version answers kept online, so kubectl finds its way offline.

``/api``, ``/apis/...``, ``/version`` and ``/openapi/v3`` answers in JSON, keyed by path and
Accept.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from edge_agent.kubecache.answers import reject
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.keys import Verb
from edge_agent.kubecache.shared import Shared


def _raw_key(call: Call) -> str:
    accept = call.request.headers.get("Accept", "")
    digest = hashlib.sha256(f"{call.request.path_qs}\n{accept}".encode()).hexdigest()
    return f"r/{digest}"


async def remember(shared: Shared, call: Call, content_type: str, data: bytes) -> None:
    """Keep a discovery or version answer, so kubectl finds its way offline."""
    if "json" not in content_type:
        return
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return
    record = {"content_type": content_type, "body": text}
    key = _raw_key(call)
    await shared.store.run("put_raw", lambda s: s.put_raw(key, record))


async def answer(shared: Shared, call: Call) -> web.StreamResponse:
    if call.info.verb is Verb.GET:
        key = _raw_key(call)
        record = await shared.store.run("get_raw", lambda s: s.get_raw(key))
        if isinstance(record, dict):
            shared.metrics.requests.labels(verb="get", source="cache").inc()
            return web.Response(
                body=str(record["body"]).encode(),
                headers={"Content-Type": str(record["content_type"])},
            )
    return reject(shared, call, f"{call.request.path} is not cached")

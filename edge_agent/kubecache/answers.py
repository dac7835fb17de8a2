# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The answers the proxy makes itself (offline): JSON bodies and the honest 503."""

from __future__ import annotations

import json

from aiohttp import web

from edge_agent.kubecache.call import Call
from edge_agent.kubecache.shared import Shared
from edge_agent.kubecache.wire import offline_status

RETRY_AFTER = 10
"""Seconds suggested in the Status body (``details.retryAfterSeconds``) for a retry.

Deliberately no ``Retry-After`` *header*: client-go retries a 503 that carries one up to ten
times, so `kubectl create` on an offline node would hang for over a minute before saying why.
Without the header it fails at once with the Status message, and controllers retry on their
own backoff anyway."""


def json_answer(obj: object, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def reject(shared: Shared, call: Call, what: str) -> web.Response:
    shared.metrics.requests.labels(verb=call.info.verb.value, source="offline_rejected").inc()
    return json_answer(offline_status(what, retry_after=RETRY_AFTER), status=503)

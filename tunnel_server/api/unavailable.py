"""The store's backend is unreachable (the Kubernetes API is down): 503 with ``Retry-After``.

With ``--store kubernetes`` a write fails at once while the Kubernetes API cannot be reached
(``kubestore.reach``); the error says so, and this middleware answers it as
``503 store_unavailable`` with ``Retry-After``, wherever under ``/api/`` it was raised (the
REST API, the fleet API, the users' API). Reads answer from the replica's copy meanwhile.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from aiohttp import web

from tunnel_server.store import ApiUnreachableError
from tunnel_server.web.errors import ApiError

if TYPE_CHECKING:
    from tunnel_server.web.errors import Handler

log = logging.getLogger("tunnel_server.api")


@web.middleware
async def store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``ApiUnreachableError`` under ``/api/`` becomes 503 ``store_unavailable``."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiUnreachableError as error:
        log.warning("store unavailable: %s %s: %s", request.method, request.path, error)
        raise ApiError(
            503,
            "store_unavailable",
            str(error),
            headers={"Retry-After": str(max(1, math.ceil(error.retry_after)))},
        ) from None

"""The REST API under ``/api/v1/``: handlers, OpenAPI document, live events, node proxy.

``access`` says who may call them.

``setup(app)`` mounts it; it needs the store, the tunnel endpoint (sessions) and the status
service (history) set up first. See docs/api.md.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tunnel_server.api import access, events, node_proxy, openapi, routes
from tunnel_server.api.hub import EventHub
from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.signer import SessionSigner
from tunnel_server.api.table import NodeTable
from tunnel_server.api.unavailable import store_unavailable
from tunnel_server.app_keys import (
    API_SETTINGS_KEY,
    HISTORY_KEY,
    OPENAPI_EXTRA_KEY,
    SETTINGS_KEY,
    SIGNER_KEY,
    STORE_KEY,
    TABLE_KEY,
)
from tunnel_server.replicas import opener
from tunnel_server.web.errors import api_errors

__all__ = ["ApiSettings", "setup"]


def setup(
    app: web.Application,
    *,
    settings: ApiSettings | None = None,
    openapi_paths: dict[str, Any] | None = None,
) -> None:
    """Mount the API; ``openapi_paths`` are other parts' routes for the OpenAPI document."""
    settings = settings or ApiSettings()
    app[OPENAPI_EXTRA_KEY] = dict(openapi_paths or {})
    app[API_SETTINGS_KEY] = settings
    app[SIGNER_KEY] = SessionSigner.load_or_create(app[SETTINGS_KEY].data_dir)
    app.middlewares.append(api_errors)
    app.middlewares.append(store_unavailable)  # inside api_errors, which renders its 503
    access.setup(app)
    routes.add_routes(app)
    node_proxy.setup(app, settings=app[SETTINGS_KEY].node_proxy)
    app.router.add_get("/api/openapi.json", openapi.serve)
    table = NodeTable(
        store=app[STORE_KEY],
        history=app[HISTORY_KEY],
        connected=lambda: opener.connected_nodes(app),
        settings=settings,
    )
    app[TABLE_KEY] = table
    events.setup(app, EventHub(settings=settings, table=table))

"""The REST API under ``/api/v1/``, its OpenAPI document and the live event stream.

``setup(app)`` mounts it; it needs the store, the tunnel endpoint (sessions) and the status
service (history) set up first. See docs/api.md.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tunnel_server.api import events, openapi, routes
from tunnel_server.api.auth import SIGNER_KEY, SessionSigner
from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.table import NodeTable
from tunnel_server.app_keys import SESSIONS_KEY, SETTINGS_KEY
from tunnel_server.identity import tls
from tunnel_server.status.service import HISTORY_KEY
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
    app[openapi.OPENAPI_EXTRA_KEY] = dict(openapi_paths or {})
    app[routes.API_SETTINGS_KEY] = settings
    app[SIGNER_KEY] = SessionSigner.load_or_create(app[SETTINGS_KEY].data_dir)
    app.middlewares.append(api_errors)
    routes.add_routes(app)
    app.router.add_get("/api/openapi.json", openapi.serve)
    table = NodeTable(
        store=app[tls.STORE_KEY],
        history=app[HISTORY_KEY],
        connected=lambda: {session.name for session in app[SESSIONS_KEY].all()},
        settings=settings,
    )
    app[routes.TABLE_KEY] = table
    events.setup(app, events.EventHub(settings=settings, table=table))

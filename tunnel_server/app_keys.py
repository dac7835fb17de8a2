"""Typed keys of the application's shared state, in one place so modules need not import app."""

from __future__ import annotations

import prometheus_client
from aiohttp import web

from tunnel_protocol import TunnelSettings
from tunnel_server.settings import ServerSettings
from tunnel_server.tunnel.sessions import SessionMetrics, SessionRegistry

SETTINGS_KEY = web.AppKey("settings", ServerSettings)
REGISTRY_KEY = web.AppKey("registry", prometheus_client.CollectorRegistry)
READY_KEY = web.AppKey("ready", dict[str, bool])
SESSIONS_KEY = web.AppKey("sessions", SessionRegistry)
METRICS_KEY = web.AppKey("tunnel_metrics", SessionMetrics)
TUNNEL_SETTINGS_KEY = web.AppKey("tunnel_settings", TunnelSettings)
VERIFIED_ADMIN_KEY = web.AppKey("verified_admin", set[str])
"""Admin bearer values verified since the store last changed (cleared on every change)."""

"""Typed keys of the application's shared state: every part's, in this one place.

A part sets its keys in its ``setup(app)`` and any part may read them, without importing the
part that fills them: the value types are imported here only for the type checker, so at run
time this module imports none of the parts (and is no import path between them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from aiohttp import web

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    import prometheus_client

    from tunnel_aio import TunnelStream
    from tunnel_protocol import TunnelSettings
    from tunnel_server.api.caller import Caller
    from tunnel_server.api.hub import EventHub
    from tunnel_server.api.settings import ApiSettings
    from tunnel_server.api.signer import SessionSigner
    from tunnel_server.api.table import NodeTable
    from tunnel_server.fleet.cloud_nodes import CloudNodes
    from tunnel_server.fleet.hub.hub import FleetHub
    from tunnel_server.identity.pki import CertificateAuthority
    from tunnel_server.kube.upstream import KubeUpstream
    from tunnel_server.settings import (
        ClusterProxySettings,
        JoinSettings,
        NodeProxySettings,
        ServerSettings,
    )
    from tunnel_server.status.history import StatusHistory
    from tunnel_server.status.node_events import NodeEvents
    from tunnel_server.store import Store
    from tunnel_server.tunnel.admission import Admission
    from tunnel_server.tunnel.sessions import AgentSession, SessionMetrics, SessionRegistry
    from tunnel_server.twins.service import CloudTwinReplica
    from tunnel_server.twins.sync import EdgeTwinLinks

AgentService: TypeAlias = "Callable[[TunnelStream, AgentSession, web.Application], Awaitable[None]]"
"""A handler gets the stream (answer it with accept/reject), the verified session, the app."""

DevicesSource: TypeAlias = "Callable[[str], list[dict[str, Any]]]"
"""A node's devices for its page (set by the twins part)."""

# The application (app.py)
SETTINGS_KEY: web.AppKey[ServerSettings] = web.AppKey("settings")
REGISTRY_KEY: web.AppKey[prometheus_client.CollectorRegistry] = web.AppKey("registry")
READY_KEY: web.AppKey[dict[str, bool]] = web.AppKey("ready")
STORE_KEY: web.AppKey[Store] = web.AppKey("store")
AUTHORITY_KEY: web.AppKey[CertificateAuthority] = web.AppKey("authority")

# identity/
JOIN_SETTINGS_KEY: web.AppKey[JoinSettings] = web.AppKey("join_settings")
JOIN_METRIC_KEY: web.AppKey[prometheus_client.Counter] = web.AppKey("join_requests")

# tunnel/
SESSIONS_KEY: web.AppKey[SessionRegistry] = web.AppKey("sessions")
METRICS_KEY: web.AppKey[SessionMetrics] = web.AppKey("tunnel_metrics")
TUNNEL_SETTINGS_KEY: web.AppKey[TunnelSettings] = web.AppKey("tunnel_settings")
ADMISSION_KEY: web.AppKey[Admission] = web.AppKey("tunnel_admission")
AGENT_SERVICES_KEY: web.AppKey[dict[str, AgentService]] = web.AppKey("agent_services")
NODE_PROXY_SETTINGS_KEY: web.AppKey[NodeProxySettings] = web.AppKey("node_proxy_settings")
VERIFIED_ADMIN_KEY: web.AppKey[dict[str, Caller]] = web.AppKey("verified_admin")
"""Bearer values (admin and user tokens) verified since the store last changed, and whom they
stand for (cleared on every change); set by ``api.access``, used by the node proxy."""

# status/
HISTORY_KEY: web.AppKey[StatusHistory] = web.AppKey("status_history")

# kube/
UPSTREAM_KEY: web.AppKey[KubeUpstream] = web.AppKey("kube_upstream")

# twins/
TWINS_KEY: web.AppKey[CloudTwinReplica] = web.AppKey("twins")
TWINS_SYNC_KEY: web.AppKey[EdgeTwinLinks] = web.AppKey("twins_sync")

# api/
API_SETTINGS_KEY: web.AppKey[ApiSettings] = web.AppKey("api_settings")
SIGNER_KEY: web.AppKey[SessionSigner] = web.AppKey("session_signer")
TABLE_KEY: web.AppKey[NodeTable] = web.AppKey("node_table")
HUB_KEY: web.AppKey[EventHub] = web.AppKey("event_hub")
OPENAPI_EXTRA_KEY: web.AppKey[dict[str, Any]] = web.AppKey("openapi_extra_paths")
AUTH_FAILURES_KEY: web.AppKey[prometheus_client.Counter] = web.AppKey("auth_failures")
EVENT_STREAMS_KEY: web.AppKey[dict[asyncio.Queue[str | None], str]] = web.AppKey("event_streams")
"""Each live event stream's queue and the bearer value it was opened with (rechecked when the
store changes)."""
DEVICES_KEY: web.AppKey[DevicesSource] = web.AppKey("devices_source")

# fleet/
CLUSTER_PROXY_SETTINGS_KEY: web.AppKey[ClusterProxySettings] = web.AppKey("cluster_proxy")
CLUSTER_PROXY_REQUESTS_KEY: web.AppKey[prometheus_client.Counter] = web.AppKey(
    "cluster_proxy_requests"
)

# console/
FILES_KEY: web.AppKey[dict[str, bytes]] = web.AppKey("console_files")

# fleet/: the egress selector and autonomy share the cloud cluster's Nodes
CLOUD_NODES_KEY: web.AppKey[CloudNodes] = web.AppKey("cloud_nodes")
"""The cloud cluster's Nodes (addresses, kubelet port, labels), followed by a watch."""
NODES_SYNCED_KEY: web.AppKey[asyncio.Event] = web.AppKey("cloud_nodes_synced")
"""Set once the first list of the cloud's Nodes arrived (never without ``--kube-upstream``)."""

# Set by the fleet's clusters part: the cluster agent's install manifest for a new cluster token,
# called as render(name=, token=, server=, ca_hash=, image=) -> YAML text. The API's
# ``POST /api/v1/tokens`` with ``"manifest": true`` uses it (the API never imports the fleet).
CLUSTER_MANIFEST_KEY: web.AppKey[Callable[..., str]] = web.AppKey("cluster_manifest")

# Set by the audit part: what happened to each node. The tunnel endpoint notes online/offline
# and the join API has it look at the store at once (``NodeEvents.note`` / ``sync``).
NODE_EVENTS_KEY: web.AppKey[NodeEvents] = web.AppKey("node_events")

# fleet/hub/: the hub-managed fleet (issue 14). Every part of the hub writes fleet objects through
# it (``put``, ``set_status``, ``delete`` wake watchers); ``leases`` holds agents' renewals.
FLEET_HUB_KEY: web.AppKey[FleetHub] = web.AppKey("fleet_hub")

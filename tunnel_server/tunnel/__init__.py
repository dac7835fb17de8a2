"""The tunnel: where agents hold their mTLS WebSocket session, and what rides on it.

- ``endpoint``: ``GET /tunnel``, admission, and the live ``sessions``;
- ``agent_services``: the streams an agent opens towards the cloud (``renew``; the status,
  kube and twins parts add theirs);
- ``http_over_stream``: one HTTP exchange over a stream (the API's node proxy,
  ``tunnel_server.api.node_proxy``, uses it to reach a service on a node);
- ``tls_buffer``: the elastic TLS read buffer of the server's connections.

``setup(app)`` mounts the endpoint; it needs the settings, registry, store
and authority keys set (see ``tunnel_server.app``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from tunnel_protocol import TunnelSettings

__all__ = ["setup"]


def setup(app: web.Application, *, tunnel_settings: TunnelSettings) -> None:
    """Mount ``/tunnel`` (with the agent services table)."""
    # Imported here: the CLI's token and nodes commands import tls_buffer from this package
    # and must not pay for aiohttp.
    from tunnel_server.tunnel import endpoint  # noqa: PLC0415 - see above

    endpoint.setup(app, tunnel_settings=tunnel_settings)

"""Who a node is: its certificate authority, tokens, verified peers and the join API.

``pki`` is the CA, ``tokens`` the bootstrap and admin tokens, ``tls`` the server's TLS context
and the verified identity of a peer, ``join_api`` the join, approval and renewal routes.

``setup(app)`` mounts the join API; it needs the store and authority keys set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from tunnel_server.settings import JoinSettings

__all__ = ["setup"]


def setup(app: web.Application, *, settings: JoinSettings) -> None:
    """Mount ``/api/v1/ca``, ``/api/v1/join`` and ``/api/v1/renew``."""
    # Imported here: the CLI's token and nodes commands import tokens and pki from this
    # package and must not pay for aiohttp.
    from tunnel_server.identity import join_api  # noqa: PLC0415 - see above

    join_api.setup(app, settings=settings)

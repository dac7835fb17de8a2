"""Who a verified client is: the routing identity of its tunnel session (see ``tls``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from tunnel_server.store import NodeKind


@dataclass(frozen=True, kw_only=True)
class PeerIdentity:
    """The verified identity of a client: the routing identity of its session."""

    name: str
    kind: NodeKind
    serial: str
    not_after: datetime

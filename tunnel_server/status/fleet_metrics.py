"""The fleet as Prometheus sees it on the server's /metrics: who is online, what expires when.

Rules:

* **Online** means "holds a tunnel session now" (``SessionRegistry``), the same thing the
  ``online``/``offline`` node events record. The API's status column also needs status reports
  (a lease); a node that runs without status reports is online here and ``unknown`` there.
* Only **approved** nodes and clusters are series: a pending one has no certificate yet and a
  revoked one is gone on purpose. The per-node series are rebuilt on every scrape from the
  store's records, so a node that is revoked or deleted stops being exported at once (no stale
  label), and the cardinality is bounded by the registered nodes.
* Certificate expiry is a Unix timestamp (``*_expiry_timestamp_seconds``), so an alert is
  ``x - time() < 7 * 86400`` and no gauge needs refreshing. The CA and serving certificate are
  the ones this process loaded and serves (read once: the TLS context is built at start); each
  node's client certificate is the one the store recorded when it was issued or renewed.

The records are read again only when the store's revision moves: everything exported here
(state, kind, certificate expiry, the node itself) changes with a revision bump, while the
``last_seen`` writes of a reconnect storm do not. Reading 10,000 records took ~100 ms, on every
scrape; now a scrape costs the series only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tunnel_server.store import KINDS

if TYPE_CHECKING:
    from pathlib import Path

    from tunnel_server.store import NodeRecord, Store
    from tunnel_server.tunnel.sessions import SessionRegistry

log = logging.getLogger("tunnel_server.status.fleet_metrics")


def certificate_expiry(path: Path) -> float | None:
    """The ``notAfter`` of the PEM certificate at ``path`` as Unix seconds; None if unreadable."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        log.warning("cannot read certificate %s for its expiry: %s", path, error)
        return None
    return certificate.not_valid_after_utc.timestamp()


class FleetCollector(Collector):
    """Nodes online by kind, each node's online flag and certificate expiry, server certs."""

    def __init__(
        self,
        *,
        store: Store,
        sessions: SessionRegistry,
        server_certificates: Callable[[], dict[str, float]],
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._server_certificates = server_certificates
        self._approved: list[NodeRecord] = []
        self._revision: int | None = None

    def approved(self) -> list[NodeRecord]:
        """The approved nodes' records, read again when the store's revision has moved."""
        revision = self._store.revision()
        if revision != self._revision:
            self._approved = [n for n in self._store.list_nodes() if n.state == "approved"]
            self._revision = revision
        return self._approved

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nodes = GaugeMetricFamily(
            "tunnel_server_nodes",
            "Approved nodes and clusters by kind and whether they hold a tunnel session now",
            labels=["kind", "status"],
        )
        online = GaugeMetricFamily(
            "tunnel_server_node_online",
            "1 while this approved node or cluster holds a tunnel session, else 0",
            labels=["node", "kind"],
        )
        node_expiry = GaugeMetricFamily(
            "tunnel_server_node_certificate_expiry_timestamp_seconds",
            "When the client certificate this server last issued to the node expires (Unix s)",
            labels=["node", "kind"],
        )
        counts = {(kind, status): 0 for kind in KINDS for status in ("online", "offline")}
        for node in self.approved():
            up = self._sessions.get(node.name) is not None
            counts[node.kind, "online" if up else "offline"] += 1
            online.add_metric([node.name, node.kind], 1.0 if up else 0.0)
            if node.cert_not_after is not None:
                node_expiry.add_metric([node.name, node.kind], node.cert_not_after)
        for (kind, status), count in counts.items():
            nodes.add_metric([kind, status], count)
        server = GaugeMetricFamily(
            "tunnel_server_certificate_expiry_timestamp_seconds",
            "When the server's CA and its serving certificate expire (Unix s)",
            labels=["certificate"],
        )
        for name, expiry in self._server_certificates().items():
            server.add_metric([name], expiry)
        yield from (nodes, online, node_expiry, server)


def server_certificates(*, ca: x509.Certificate, serving_path: Path) -> dict[str, float]:
    """The expiry of the CA and of the serving certificate on disk (read once, at setup)."""
    expiries = {"ca": ca.not_valid_after_utc.timestamp()}
    serving = certificate_expiry(serving_path)
    if serving is not None:
        expiries["serving"] = serving
    return expiries

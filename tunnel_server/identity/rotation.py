"""CA rotation seen from the running server: notice the CLI's steps, tell the agents.

``tunnel-server ca rotate|promote|retire`` change files in the data dir (``pki``); a running
server re-reads them every ``store_poll_interval`` (``CaWatch.poll``) and bumps ``version`` when
the next or previous CA changed. Each tunnel session holds a task (``tunnel.endpoint``) that
sends the agent the CA state (``CertificateAuthority.announcement``) at session start while a
rotation is in progress and again on every bump, on a stream the CLOUD opens to the agent's
built-in ``ca-announce`` target (docs/tunnel-protocol.md). So the announcement only ever
travels inside the mTLS session the agent itself verified against its pinned CA; the agent
also checks the next CA's cross-signature by that CA.

Rules: one announcement at a time per session; the answer read is bounded
(``MAX_ANSWER_BYTES``); an agent that refuses or does not know the target is logged, never
cut off (older agents keep working until the promote, then re-join).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

import prometheus_client
from aiohttp import web

if TYPE_CHECKING:
    from cryptography import x509

    from tunnel_server.identity.pki import CertificateAuthority
    from tunnel_server.store import Store

log = logging.getLogger("tunnel_server.ca_rotation")

ANNOUNCE_TARGET = "ca-announce"
"""The agent's built-in target that takes CA announcements."""
MAX_ANSWER_BYTES = 4 * 1024
"""The agent answers one small JSON object; anything longer is cut off."""


class CaWatch:
    """The version of the CA state this process serves; sessions wait for it to move."""

    def __init__(
        self, authority: CertificateAuthority, registry: prometheus_client.CollectorRegistry
    ) -> None:
        self.authority = authority
        self.version = 0
        self._moved = asyncio.Condition()
        self.expiry = prometheus_client.Gauge(
            "tunnel_server_ca_expiry_timestamp_seconds",
            "When each CA of this server expires (Unix s), by role: current; next (after `ca"
            " rotate`); previous (after `ca promote`, until `ca retire`)",
            ["ca"],
            registry=registry,
        )
        self.announcements = prometheus_client.Counter(
            "tunnel_server_ca_announcements",
            "CA announcements sent to agents, by the agent's answer (stored, unchanged,"
            " refused, unsupported, failed)",
            ["result"],
            registry=registry,
        )
        self._export()

    def _export(self) -> None:
        roles: dict[str, x509.Certificate | None] = {
            "current": self.authority.certificate,
            "next": self.authority.next_certificate,
            "previous": self.authority.previous_certificate,
        }
        for role, certificate in roles.items():
            if certificate is None:
                with contextlib.suppress(KeyError):  # never set: nothing to remove
                    self.expiry.remove(role)
            else:
                self.expiry.labels(role).set(certificate.not_valid_after_utc.timestamp())

    async def poll(self) -> None:
        """Re-read the rotation files; wake every session if they changed."""
        try:
            changed = self.authority.reload_rotation()
        except (OSError, ValueError) as error:  # a half-written or foreign file: keep serving
            log.warning("cannot read the CA rotation files: %s", error)
            return
        if not changed:
            return
        self.version += 1
        self._export()
        state = self.authority.state()
        log.info(
            "CA rotation state changed",
            extra={"kv": {role: (ca or {}).get("hash") for role, ca in state.items()}},
        )
        async with self._moved:
            self._moved.notify_all()

    async def wait_moved(self, seen: int) -> int:
        """Return the version once it differs from ``seen``."""
        async with self._moved:
            await self._moved.wait_for(lambda: self.version != seen)
        return self.version

    def payload(self) -> bytes:
        return json.dumps(self.authority.announcement()).encode()


CA_WATCH_KEY = web.AppKey("ca_watch", CaWatch)


def nodes_on_previous_ca(store: Store, *, promoted_at: float | None, now: float) -> list[str]:
    """Approved nodes whose current certificate was issued before the promote (old CA).

    ``ca promote`` runs with the server stopped, so every certificate issued after
    ``promoted_at`` came from the new CA; expired ones do not count (they verify nowhere).
    """
    if promoted_at is None:
        return []
    names = []
    for node in store.list_nodes():
        if node.state != "approved" or node.cert_serial is None:
            continue
        record = store.get_certificate(node.cert_serial)
        if record is not None and record.issued_at < promoted_at and record.not_after > now:
            names.append(node.name)
    return names

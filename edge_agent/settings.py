"""Settings of the edge agent. Every field says its unit and why its default is what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class LocalApiSettings:
    host: str = "127.0.0.1"
    """Loopback only: the local API shows node details and must not be reachable from outside."""

    port: int = 10267
    """Fixed, documented port so node tooling and systemd health checks can find it."""


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    data_dir: Path = field(default_factory=lambda: Path("/var/lib/edge-agent"))
    """Folder for the private key, certificate, object cache and outbox; survives restarts."""

    local_api: LocalApiSettings = field(default_factory=LocalApiSettings)
    """The agent's own health, metrics and status endpoint."""

"""Settings of the cloud side. Every field says its unit and why its default is what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    host: str = "0.0.0.0"  # noqa: S104 - agents connect from anywhere; the API is authenticated
    """Address to listen on. All interfaces by default: agents dial in from remote sites."""

    port: int = 8443
    """TCP port. 8443 rather than 443 so the server needs no privileges."""

    data_dir: Path = field(default_factory=lambda: Path("/var/lib/tunnel-server"))
    """Folder for the CA, the serving certificate, the admin token and the SQLite store."""

    public_name: str = "localhost"
    """DNS name (or IP) agents use to reach this server; goes into the serving certificate."""

    shutdown_grace: float = 10.0
    """Seconds given to open connections to drain on SIGTERM before they are cut."""

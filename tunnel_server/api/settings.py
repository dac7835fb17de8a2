"""Settings of the REST API and console. Every field says its unit and why."""

from __future__ import annotations

from dataclasses import dataclass

DAY = 86400.0


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    session_ttl: float = 8 * 3600.0
    """Seconds a console session lasts: a working day. Then the admin token is asked again."""

    max_body_bytes: int = 16 * 1024
    """Largest request body of the API's own endpoints, in bytes: they take a few fields."""

    max_page: int = 5000
    """Most rows one page of the old offset lists returns (only the clusters list, until it
    pages by ``continue``; the lists of ``api.paging`` take ``limit`` 1..1000)."""

    event_interval: float = 0.5
    """Seconds between live-update batches: changes within it go out as one event, so 1,000
    nodes reporting every 10 s cost ~2 events a second, not 100."""

    max_subscribers: int = 64
    """Most live-update streams at once (consoles open); more get 503 and retry."""

    subscriber_queue: int = 32
    """Batches queued per live stream; a client this far behind is dropped and reconnects
    (it then gets a fresh snapshot), so a stalled browser costs bounded memory."""

    keepalive: float = 15.0
    """Seconds between SSE comments on an idle stream, under the 30-60 s proxy idle timeouts."""

    disk_warn_percent: float = 90.0
    """Disk use (%) from which a node gets a "disk nearly full" warning; critical from 97."""

    memory_warn_percent: float = 95.0
    """Memory use (%) from which a node gets a "memory nearly exhausted" warning."""

    cert_warn: float = 7 * DAY
    """Seconds before certificate expiry to warn. Agents renew at 2/3 of 30 days (10 days
    left), so a certificate with 7 days left means renewal has failed for 3 days."""

    not_seen_warn: float = 3600.0
    """Seconds offline after which a node gets a "not seen for a while" warning."""

# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Settings of the local kube proxy and object cache; every field says its unit and reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CACHE_AGENTS = frozenset(
    {
        "kubelet",
        "kube-proxy",
        "flanneld",
        "coredns",
        "calico-node",
        "cilium-agent",
        "edge-agent",
    }
)
"""Components whose answers are cached unless configured otherwise (OpenYurt's list plus CNIs)."""


@dataclass(frozen=True, kw_only=True)
class HealthSettings:
    probe_path: str = "/readyz"
    """Upstream path probed; ``/readyz`` fails while etcd (kine) is down, not just the socket."""

    interval: float = 5.0
    """Seconds between probes; OpenYurt probes every 10 s, we halve it to notice a cut sooner."""

    timeout: float = 2.0
    """Seconds one probe may take; a loaded API server answers /readyz in milliseconds."""

    retry_interval: float = 1.0
    """Seconds before the next probe after a result that points the other way (a failure
    while online, a success while offline). A silent link makes every probe wait out its
    ``timeout``; at ``interval`` pace three failures took 19.5 s, at this pace the state turns
    about ``failure_threshold`` x (``timeout`` + this) = 9 s after the first failed probe."""

    failure_threshold: int = 3
    """Consecutive failures (probes or proxied requests) before going offline (OpenYurt: 3)."""

    success_threshold: int = 2
    """Consecutive successful probes before going back online (OpenYurt: 2), so a flapping
    link does not bounce every watch upstream and back."""


@dataclass(frozen=True, kw_only=True)
class KubeCacheSettings:
    host: str = "127.0.0.1"
    """Loopback only: the proxy serves with the agent's credentials and must stay on the box."""

    port: int = 10261
    """The port node components use as their API server (YurtHub's, so manifests carry over)."""

    tls_cert_file: str = ""
    """Serving certificate (PEM) for the listener; empty serves plain HTTP. Loopback traffic
    needs no encryption, but some components insist on an https:// server URL."""

    tls_key_file: str = ""
    """Private key (PEM) of ``tls_cert_file``."""

    cache_dir: Path = field(default_factory=lambda: Path("/var/lib/edge-agent/kubecache"))
    """Folder of the cache's SQLite database (mode 0700: it holds secrets and tokens)."""

    cache_agents: frozenset[str] = DEFAULT_CACHE_AGENTS
    """Components (User-Agent up to the first ``/``, lower case) whose answers are cached;
    ``*`` caches every component. Others are proxied but get no offline answers."""

    health: HealthSettings = field(default_factory=HealthSettings)
    """How the upstream is judged reachable."""

    connect_timeout: float = 5.0
    """Seconds to open a connection upstream before the request fails over to the cache."""

    read_timeout: float = 10.0
    """Seconds without a byte from upstream on a forwarded non-watch request, before its answer
    starts (first byte) and between chunks. A silent link is then given up on even before the
    health checker turns offline; an API server starts its answer to a 5,000-pod LIST in
    about a second."""

    heartbeat_timeout: float = 4.0
    """Seconds a heartbeat (Lease renewal, node status) may wait upstream before it is
    answered from the cache instead: kubelet gives up on a lease renewal after 10 s (its
    renew interval), so the local answer must come well before that."""

    request_timeout: float = 60.0
    """Seconds for one whole non-watch request upstream (kubectl's default is none; 60 s is
    client-go's default ``--request-timeout`` for long LISTs on slow links)."""

    watch_inactivity_timeout: float = 90.0
    """Seconds without a byte on an upstream watch before it is treated as dead; bookmarks are
    requested upstream and arrive about every 60 s (kopf uses 70 s for the same reason)."""

    bookmark_interval: float = 30.0
    """Seconds between bookmarks on an offline watch, so clients keep a fresh resourceVersion
    and notice a dead proxy; the API server sends one about every 60 s."""

    max_request_body_bytes: int = 3 * 1024 * 1024
    """Largest request body accepted; etcd refuses objects over 1.5 MiB, JSON may double it."""

    max_response_bytes: int = 256 * 1024 * 1024
    """Largest non-watch answer read from upstream: a LIST of 5,000 pods is about 30 MiB."""

    max_watch_event_bytes: int = 4 * 1024 * 1024
    """Largest single watch event (one JSON line); an object is at most 1.5 MiB in etcd."""

    max_selector_length: int = 4096
    """Longest label or field selector accepted, in characters."""

    max_pending_writes: int = 256
    """Write-throughs queued behind answers already sent (the client never waits for the
    disk); when this many are queued, new answers wait, so memory stays bounded."""

    max_paged_lists: int = 64
    """Paged LISTs whose pages are being gathered at once before the set is replaced."""

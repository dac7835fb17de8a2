# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics of the kube proxy, registered in the registry the caller passes."""

from __future__ import annotations

import prometheus_client as prom


class KubeCacheMetrics:
    def __init__(self, registry: prom.CollectorRegistry) -> None:
        self.online = prom.Gauge(
            "edge_agent_kubecache_upstream_online",
            "1 while the cloud API server is judged reachable, 0 while offline",
            registry=registry,
        )
        self.transitions = prom.Counter(
            "edge_agent_kubecache_health_transitions",
            "Online/offline transitions of the upstream, by new state",
            ["to"],
            registry=registry,
        )
        self.requests = prom.Counter(
            "edge_agent_kubecache_requests",
            "Requests served, by verb and by who answered (upstream, cache, passthrough, "
            "offline_rejected, local_heartbeat)",
            ["verb", "source"],
            registry=registry,
        )
        self.store_errors = prom.Counter(
            "edge_agent_kubecache_store_errors",
            "Cache operations that failed (disk full, corrupt file); the proxy passes through",
            ["operation"],
            registry=registry,
        )
        self.store_degraded = prom.Gauge(
            "edge_agent_kubecache_store_degraded",
            "1 when the disk cache is unusable and the proxy only passes requests through",
            registry=registry,
        )
        self.objects = prom.Gauge(
            "edge_agent_kubecache_objects", "Objects held in the disk cache", registry=registry
        )
        self.pending = prom.Gauge(
            "edge_agent_kubecache_pending_heartbeats",
            "Heartbeats answered locally while offline and not yet sent upstream",
            registry=registry,
        )
        self.watches = prom.Gauge(
            "edge_agent_kubecache_watches",
            "Open client watches, by mode",
            ["mode"],
            registry=registry,
        )
        self.synced = prom.Counter(
            "edge_agent_kubecache_heartbeats_synced",
            "Locally answered heartbeats sent upstream after a reconnect, by result",
            ["result"],
            registry=registry,
        )
        self.relists = prom.Counter(
            "edge_agent_kubecache_relists",
            "Upstream re-lists after 410 Gone on a resumed watch",
            registry=registry,
        )
        self.forward_failures = prom.Counter(
            "edge_agent_kubecache_forward_failures",
            "Forwarded requests the upstream failed, by how far the answer got: not_sent "
            "(connect failed), no_answer (may have been sent, nothing relayed yet; reads are "
            "answered from the cache), mid_answer (the client's response was ended as broken)",
            ["when"],
            registry=registry,
        )

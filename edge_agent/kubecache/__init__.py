# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Edge autonomy: the local kube proxy on 127.0.0.1:10261 and its object cache on disk.

Public surface: :func:`serve_kube_proxy` (run the proxy), :class:`Upstream` (what it needs
from an upstream), :func:`open_direct_upstream` (an upstream from a kubeconfig), the settings,
and the operator functions of ``ops`` (``cache_stats``, ``cache_verify``, ``cache_purge``).
See docs/edge-cache.md.
"""

from typing import TYPE_CHECKING

from daemon_support.lazy_exports import lazy_exports

if TYPE_CHECKING:  # the names' types, for mypy; at run time __getattr__ loads them
    from edge_agent.kubecache.ops import VerifyReport, cache_purge, cache_stats, cache_verify
    from edge_agent.kubecache.proxy import KubeProxy, serve_kube_proxy
    from edge_agent.kubecache.settings import HealthSettings, KubeCacheSettings
    from edge_agent.kubecache.upstream import DirectUpstream, Upstream, open_direct_upstream


_WHERE = {
    "VerifyReport": "edge_agent.kubecache.ops",
    "cache_purge": "edge_agent.kubecache.ops",
    "cache_stats": "edge_agent.kubecache.ops",
    "cache_verify": "edge_agent.kubecache.ops",
    "KubeProxy": "edge_agent.kubecache.proxy",
    "serve_kube_proxy": "edge_agent.kubecache.proxy",
    "HealthSettings": "edge_agent.kubecache.settings",
    "KubeCacheSettings": "edge_agent.kubecache.settings",
    "DirectUpstream": "edge_agent.kubecache.upstream",
    "Upstream": "edge_agent.kubecache.upstream",
    "open_direct_upstream": "edge_agent.kubecache.upstream",
}
"""Each public name and the module that defines it: loaded on first use (issue 18)."""

__getattr__ = lazy_exports(__name__, _WHERE)


__all__ = [
    "DirectUpstream",
    "HealthSettings",
    "KubeCacheSettings",
    "KubeProxy",
    "Upstream",
    "VerifyReport",
    "cache_purge",
    "cache_stats",
    "cache_verify",
    "open_direct_upstream",
    "serve_kube_proxy",
]

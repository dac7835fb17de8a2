"""Cluster mode of the agent: serve a member cluster's API server to the fleet (issue 12).

The agent runs as a Deployment inside a registered cluster (``[cluster]`` in its config): it
serves the member API server as the tunnel target ``kube-apiserver`` (adding its own service
account's credentials to requests the cloud sends with impersonation headers) and reports the
cluster's status (version, nodes, pods, CPU/memory, API server health) every ``interval``.

* ``credentials``: address, TLS trust and the agent's own credential, from ``[cluster]``;
* ``impersonation``: the impersonation the agent lets through (pure);
* ``apiserver``: the ``kube-apiserver`` tunnel target (one stream = one HTTP exchange);
* ``member_api``: ``GetJson``, the agent's own reads (for the cluster status collector).

Kept apart from ``edge_agent.kubecache`` and ``edge_agent.twins`` (import-linter contract).
"""

from typing import TYPE_CHECKING

from daemon_support.lazy_exports import lazy_exports

if TYPE_CHECKING:  # the names' types, for mypy; at run time __getattr__ loads them
    from edge_agent.cluster.apiserver import TARGET, ApiServerMetrics, ApiServerTarget
    from edge_agent.cluster.credentials import CredentialsError, MemberCredentials
    from edge_agent.cluster.member_api import GetJson, MemberApi, MemberApiError, open_member_api


_WHERE = {
    "TARGET": "edge_agent.cluster.apiserver",
    "ApiServerMetrics": "edge_agent.cluster.apiserver",
    "ApiServerTarget": "edge_agent.cluster.apiserver",
    "CredentialsError": "edge_agent.cluster.credentials",
    "MemberCredentials": "edge_agent.cluster.credentials",
    "GetJson": "edge_agent.cluster.member_api",
    "MemberApi": "edge_agent.cluster.member_api",
    "MemberApiError": "edge_agent.cluster.member_api",
    "open_member_api": "edge_agent.cluster.member_api",
}
"""Each public name and the module that defines it: loaded on first use (issue 18)."""

__getattr__ = lazy_exports(__name__, _WHERE)


__all__ = [
    "TARGET",
    "ApiServerMetrics",
    "ApiServerTarget",
    "CredentialsError",
    "GetJson",
    "MemberApi",
    "MemberApiError",
    "MemberCredentials",
    "open_member_api",
]

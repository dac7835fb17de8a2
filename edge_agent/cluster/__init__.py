"""Cluster mode of the agent: serve a member cluster's API server to the fleet (issue 12).

The agent runs as a Deployment inside a registered cluster (``[cluster]`` in its config): it
serves the member API server as the tunnel target ``kube-apiserver`` (adding its own service
account's credentials to requests the cloud sends with impersonation headers) and reports the
cluster's status (version, nodes, pods, CPU/memory, API server health) every ``interval``.

Kept apart from ``edge_agent.kubecache`` and ``edge_agent.twins`` (import-linter contract).
"""

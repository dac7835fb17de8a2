"""The ``kube`` agent service: a node's kube cache reaches the real API server through its tunnel.

``setup(app, kubeconfig=...)`` offers it (``tunnel-server run --kube-upstream``); it needs the
tunnel set up.
"""

from __future__ import annotations

from tunnel_server.kube.service import setup
from tunnel_server.kube.upstream import load_upstream

__all__ = ["load_upstream", "setup"]

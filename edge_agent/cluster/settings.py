"""Settings of cluster mode (``[cluster]``): each field says its unit and why its default.

Here rather than in ``edge_agent.settings`` (which re-exports it) so that cluster mode imports
nothing of the kube cache's (import-linter contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where Kubernetes mounts a pod's service account token, CA and namespace."""


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """The ``[cluster]`` table: cluster mode, the agent as the member cluster's gateway."""

    in_cluster: bool = False
    """True: reach the member API server with the pod's service account (token and CA from
    ``service_account_dir``, address from ``KUBERNETES_SERVICE_HOST``/``_PORT``), as a
    Deployment in the member cluster does. Exactly one of this and ``kubeconfig``."""

    kubeconfig: Path | None = None
    """A kubeconfig naming the member API server and the agent's own credential (bearer token,
    token file or client certificate); for an agent running outside the member cluster."""

    context: str = ""
    """Kubeconfig context to use; empty means its ``current-context``."""

    interval: float = 10.0
    """Seconds between cluster status reports (like node status: the cloud marks a cluster
    offline by the tunnel lease, so this only sets how fresh the numbers are)."""

    service_account_dir: Path = SERVICE_ACCOUNT_DIR
    """Folder of the service account's ``token`` and ``ca.crt`` (``in_cluster``)."""

    token_reload: float = 60.0
    """Seconds a bearer token read from a file is used before the file is read again: the
    kubelet rotates projected service account tokens, and client-go re-reads them this often."""

    connect_timeout: float = 10.0
    """Seconds for TCP + TLS to the member API server before the cloud's request gets a 503."""

    head_timeout: float = 30.0
    """Seconds the cloud has to send a request head after opening a stream: it sends it at
    once; a stream that stays silent is answered 408 and closed instead of held."""

    max_head_bytes: int = 96 * 1024
    """Bytes of the request head from the cloud (request line and headers): the cloud bounds
    a caller's headers at 64 KiB and adds a few of its own; more is answered 431."""

    max_idle_connections: int = 16
    """Kept-alive connections to the member API server held for the next GET (each costs the
    API server a goroutine and a socket); GETs in flight beyond it open their own."""

    idle_timeout: float = 30.0
    """Seconds a kept connection may wait for the next GET before it is closed: well below
    the idle timeouts of API servers and load balancers in front of them (60-90 s)."""

    request_timeout: float = 30.0
    """Seconds for one whole GET of the agent's own (``GetJson``, for cluster status)."""

    max_json_bytes: int = 64 * 1024 * 1024
    """Bytes of one JSON answer the agent reads for itself: a LIST of 5,000 pods is ~25 MB."""

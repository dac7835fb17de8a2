"""Settings of the Kubernetes store; light on purpose (the CLI imports it before any client)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class KubeStoreSettings:
    namespace: str = "edgefleet"
    """Namespace of every object of the store (one install per namespace)."""

    kubeconfig: Path | None = None
    """Kubeconfig file; None = in-cluster (the pod's service account)."""

    request_timeout: float = 10.0
    """Seconds for one API call; a write that cannot reach the API fails with StoreError then."""

    connect_timeout: float = 2.0
    """Seconds to open a connection to the API (within ``request_timeout``): an API server
    that is down or unroutable fails a call after this, not after the whole request timeout.
    A connection on a working network takes milliseconds, even to a loaded API server."""

    probe_interval: float = 1.0
    """Seconds between probes of an API marked unreachable (``kubestore.reach``). Writes fail
    at once meanwhile (the REST API answers 503); the first probe or list that gets an answer
    lets them through again, so this bounds how long writes keep failing after the return."""

    retry_after: float = 5.0
    """Seconds a caller is told to wait (``Retry-After``) when a write failed because the API
    is unreachable."""

    conflict_retries: int = 8
    """Read-modify-write attempts on 409 Conflict before giving up with StoreError: more
    writers than that on one object at once is not a load this store is meant for."""

    touch_interval: float = 60.0
    """Seconds: a node's ``lastSeen`` is written at most this often (plus on a new agent
    version): heartbeats of a large fleet must not flood etcd; readers tolerate the lag."""

    watch_timeout: float = 600.0
    """Seconds a watch lasts before the kind is listed again: bounds how long a connection
    that died silently goes unnoticed, at the price of one list per kind this often."""

    watch_retry: float = 1.0
    """Seconds before a failed list or watch is tried again (the API server restarting)."""

    ready_timeout: float = 30.0
    """Seconds ``open`` waits for the first list of every kind."""

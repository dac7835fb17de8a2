"""Replicas on the session's real kube-apiserver: the store's CRDs.

The fixture is the Kubernetes store's (tests/integration/kubestore/conftest.py).
"""

from __future__ import annotations

from tests.integration.kubestore.conftest import kube_crds

__all__ = ["kube_crds"]

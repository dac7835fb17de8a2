"""Replicas on the session's real kube-apiserver: the store's CRDs, a fresh namespace per test.

The fixtures are the Kubernetes store's (tests/integration/kubestore/conftest.py).
"""

from __future__ import annotations

from tests.integration.kubestore.conftest import kube_crds, namespace

__all__ = ["kube_crds", "namespace"]

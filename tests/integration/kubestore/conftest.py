"""KubeStore on the session's real kube-apiserver: the CRDs applied once, a namespace per test."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import kube
from tunnel_server.kubestore import KubeStore, KubeStoreSettings

CRDS = Path(__file__).resolve().parents[3] / "packaging" / "kubernetes" / "tunnel-server" / "crds"


@pytest.fixture(scope="session")
def kube_crds(kube_cluster: kube.ControlPlane) -> kube.ControlPlane:
    """The shared control plane with the store's CRDs applied and established."""
    kube_cluster.kubectl("apply", "-k", str(CRDS))
    names = [f"crd/{f.stem}.edgefleet.io" for f in sorted(CRDS.glob("*.yaml")) if f.stem != "kustomization"]
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return kube_cluster


@pytest.fixture
def namespace(kube_crds: kube.ControlPlane) -> Iterator[str]:
    name = f"ks-{secrets.token_hex(4)}"
    status, answer = kube_crds.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201, answer
    yield name
    kube_crds.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def open_store(
    kube_crds: kube.ControlPlane, namespace: str
) -> Iterator[Callable[[], KubeStore]]:
    """Open a KubeStore on the test's namespace (each one is a replica); all closed after."""
    opened: list[KubeStore] = []

    def make() -> KubeStore:
        settings = KubeStoreSettings(namespace=namespace, kubeconfig=kube_crds.kubeconfig)
        store = KubeStore.open(settings)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()

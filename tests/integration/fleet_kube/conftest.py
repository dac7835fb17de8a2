"""The fleet's Kubernetes store on the session's real kube-apiserver, a fresh namespace per test.

The CRDs and namespaces are the Kubernetes store's fixtures (tests/integration/kubestore);
``open_fleet`` opens a ``KubeFleetStore`` on the test's namespace (each one a replica).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import kubernetes
import pytest

from fleet_model.documents import KINDS
from tests.harness import kube
from tests.integration.kubestore.conftest import kube_crds, namespace
from tunnel_server.fleet.hub.store_kube import GROUP, KubeFleetStore
from tunnel_server.kubestore.settings import KubeStoreSettings

__all__ = ["fleet_crds", "kube_crds", "namespace", "open_fleet"]


@pytest.fixture(scope="session")
def fleet_crds(kube_crds: kube.ControlPlane) -> kube.ControlPlane:
    """The plane with the fleet's CRDs (applied with the store's) established."""
    names = [f"crd/{info.plural}.{GROUP}" for info in KINDS.values()]
    kube_crds.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return kube_crds


@pytest.fixture
def open_fleet(
    fleet_crds: kube.ControlPlane, namespace: str
) -> Iterator[Callable[..., KubeFleetStore]]:
    """Open a KubeFleetStore on the test's namespace; all closed after the test."""
    opened: list[KubeFleetStore] = []

    def make(*, changes_kept: int = 10_000) -> KubeFleetStore:
        settings = KubeStoreSettings(
            namespace=namespace, kubeconfig=fleet_crds.kubeconfig, watch_retry=0.2
        )
        opened.append(KubeFleetStore.open(settings, changes_kept=changes_kept))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def custom_objects(fleet_crds: kube.ControlPlane) -> Iterator[kubernetes.client.CustomObjectsApi]:
    """The official client on the plane: reads what the store wrote, past the store."""
    api = kubernetes.config.new_client_from_config(config_file=str(fleet_crds.kubeconfig))
    yield kubernetes.client.CustomObjectsApi(api)
    api.close()

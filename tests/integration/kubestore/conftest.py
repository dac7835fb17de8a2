"""KubeStore on the session's real kube-apiserver: the CRDs applied once, a namespace per test.

Gives the store suite's fixtures (tests/unit/server/conftest.py) for this backend: ``store``,
``reopen`` (another KubeStore on the same namespace: another replica), and ``dump`` and
``revoked_rows`` read with the official ``kubernetes`` client, an independent one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.harness import kube
from tunnel_server.kubestore._model import GROUP, KINDS, VERSION
from tunnel_server.kubestore.settings import KubeStoreSettings
from tunnel_server.kubestore.store import KubeStore
from tunnel_server.store import Store

CRDS = Path(__file__).resolve().parents[3] / "packaging" / "kubernetes" / "tunnel-server" / "crds"


@pytest.fixture(scope="session")
def kube_crds(kube_cluster: kube.ControlPlane) -> kube.ControlPlane:
    """The shared control plane with the store's CRDs applied and established."""
    kube_cluster.kubectl("apply", "-k", str(CRDS))
    names = [f"crd/{kind.plural}.{GROUP}" for kind in KINDS]
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
def open_store(kube_crds: kube.ControlPlane, namespace: str) -> Iterator[Callable[[], KubeStore]]:
    """Open a KubeStore on the test's namespace (each one is a replica); all closed after."""
    opened: list[KubeStore] = []

    def make() -> KubeStore:
        settings = KubeStoreSettings(namespace=namespace, kubeconfig=kube_crds.kubeconfig)
        opened.append(KubeStore.open(settings))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], KubeStore]) -> Store:
    return open_store()


@pytest.fixture
def reopen(open_store: Callable[[], KubeStore]) -> Callable[[], Store]:
    return open_store


@pytest.fixture
def custom_objects(kube_crds: kube.ControlPlane) -> Iterator[kubernetes.client.CustomObjectsApi]:
    """The official client on the plane: reads what the store wrote, past the store."""
    api = kubernetes.config.new_client_from_config(config_file=str(kube_crds.kubeconfig))
    yield kubernetes.client.CustomObjectsApi(api)
    api.close()


def list_objects(
    api: kubernetes.client.CustomObjectsApi, namespace: str, plural: str
) -> list[dict[str, Any]]:
    listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    assert isinstance(listed, dict), listed
    return list(listed["items"])


@pytest.fixture
def dump(custom_objects: kubernetes.client.CustomObjectsApi, namespace: str) -> Callable[[], str]:
    def read() -> str:
        every = {
            kind.plural: list_objects(custom_objects, namespace, kind.plural) for kind in KINDS
        }
        return json.dumps(every)

    return read


@pytest.fixture
def revoked_rows(
    custom_objects: kubernetes.client.CustomObjectsApi, namespace: str
) -> Callable[[], list[tuple[str, float]]]:
    def read() -> list[tuple[str, float]]:
        items = list_objects(custom_objects, namespace, "revokedsessions")
        rows = [(o["spec"]["sessionId"], float(o["spec"]["expiresAt"])) for o in items]
        return sorted(rows)

    return read


@dataclass(frozen=True)
class PrivatePlane:
    """A control plane of the test's own (the CRDs applied) and a namespace on it."""

    plane: kube.ControlPlane
    namespace: str


@pytest.fixture
def private_plane(kube_factory: Callable[[int], list[kube.ControlPlane]]) -> PrivatePlane:
    """A kube-apiserver (over kine) this test alone uses: for tests that stop it.

    The store's and the fleet's CRDs are applied and established, and one namespace made.
    """
    plane = kube_factory(1)[0]
    plane.kubectl("apply", "-k", str(CRDS))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    name = f"ks-{secrets.token_hex(4)}"
    status, answer = plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201, answer
    return PrivatePlane(plane=plane, namespace=name)

"""The Kubernetes backend of ``tunnel_server.store.Store``: custom resources of ``edgefleet.io``.

``KubeStore.open(KubeStoreSettings(namespace=..., kubeconfig=...))`` gives a store that every
replica of the server can open on the same namespace; docs/ha.md explains the design. The
objects' schemas are in packaging/kubernetes/tunnel-server/crds/ and must be applied first.
"""

from tunnel_server.kubestore._store import KubeStore, KubeStoreSettings

__all__ = ["KubeStore", "KubeStoreSettings"]

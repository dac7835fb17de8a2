"""The Kubernetes backend of ``tunnel_server.store.Store``: custom resources of ``edgefleet.io``.

``store.KubeStore.open(settings.KubeStoreSettings(namespace=..., kubeconfig=...))`` gives a
store that every replica of the server can open on the same namespace; docs/ha.md explains
the design. The objects' schemas are in packaging/kubernetes/tunnel-server/crds/ and must be
applied first. Nothing is imported here: ``settings`` is light, ``store`` pulls the client
(about a second of imports), so the CLI and a SQLite server never pay for it.
"""

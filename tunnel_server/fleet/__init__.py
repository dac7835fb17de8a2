"""The fleet services of the cloud side: registered clusters first (issue 12).

* ``cluster_proxy``: ``/clusters/{name}/...`` forwards any Kubernetes API request through the
  cluster agent's tunnel, impersonating the cloud user so the member's RBAC decides.
* ``egress``: kube-apiserver's egress selector (HTTP CONNECT) to edge nodes' kubelets.
* ``autonomy``: pods on autonomous edge nodes keep their tolerations while the node is cut off.
* ``clusters``: ``/api/v1/clusters`` (status reported by cluster agents).
* ``elastic_view``: a cluster's NodePools and ResourcePolicies, read from the member through
  its tunnel as the caller (``member_read``), shaped by ``elastic_shape`` (issue 15).

Imports the lower cloud layers (api, status, tunnel, identity, web) and ``fleet_model``; never
``tunnel_server.twins`` (see the import-linter contracts in pyproject.toml).
"""

# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure: which field labels the API server accepts in a field selector, per resource.

Offline, the cache evaluates a field selector on any dotted path, so without this table a
selector the API server refuses with 400 (``spec.foo=bar``) would get 200 and an empty list
offline. The table holds what kube-apiserver v1.36 accepts (each entry is checked against
the real API server by ``tests/integration/kubecache/test_link_faults.py``); resources not in
it (custom resources, whose ``selectableFields`` live in their CRD, and resources not listed
here) are not checked, as before.
"""

from __future__ import annotations

from edge_agent.kubecache.keys import Resource
from edge_agent.kubecache.selectors import FieldSelector

_META = frozenset({"metadata.name", "metadata.namespace"})

SUPPORTED: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): _META
    | {
        "spec.nodeName",
        "spec.host",  # old clients' name of spec.nodeName
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    },
    ("", "nodes"): frozenset({"metadata.name", "spec.unschedulable"}),
    ("", "namespaces"): frozenset({"metadata.name", "status.phase"}),
    ("", "secrets"): _META | {"type"},
    ("", "configmaps"): _META,
    ("", "services"): _META | {"spec.clusterIP", "spec.type"},
    ("", "endpoints"): _META,
    ("", "serviceaccounts"): _META,
    ("", "persistentvolumeclaims"): _META,
    ("", "persistentvolumes"): _META,
    ("", "replicationcontrollers"): _META | {"status.replicas"},
    ("", "events"): _META
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    ("apps", "replicasets"): _META,
    ("apps", "deployments"): _META,
    ("apps", "daemonsets"): _META,
    ("batch", "jobs"): _META | {"status.successful"},
    ("coordination.k8s.io", "leases"): _META,
    ("certificates.k8s.io", "certificatesigningrequests"): frozenset(
        {"metadata.name", "spec.signerName"}
    ),
    ("discovery.k8s.io", "endpointslices"): _META,
    ("storage.k8s.io", "csidrivers"): _META,
    ("node.k8s.io", "runtimeclasses"): _META,
}


def unsupported_label(resource: Resource, selector: FieldSelector) -> str | None:
    """The API server's message for the first field label it would refuse, if any."""
    supported = SUPPORTED.get((resource.group, resource.resource))
    if supported is None:
        return None
    for requirement in selector.requirements:
        if requirement.path not in supported:
            return f"field label not supported: {requirement.path}"
    return None

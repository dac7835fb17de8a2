"""Member clusters for tests: a whole Kubernetes cluster with fake nodes, on loopback.

A member cluster is kine + kube-apiserver (``tests.harness.kube``) + kube-controller-manager +
kube-scheduler + kwok. kwok (sigs.k8s.io/kwok) plays the kubelet of every node: it keeps the
Node objects the harness creates Ready (node leases), moves scheduled pods to Running, and
serves the kubelet API on one loopback port for all nodes, so ``kubectl exec``, ``logs`` and
``port-forward`` go the real way (kube-apiserver -> kubelet API) and end in a local process, a
local file or a local TCP server the test chooses.

What kwok needs that it cannot download here (there is no network) is written out below: its
Stages (the "fast" set from kwok's kustomize/stage folder, plus the lease heartbeat) and
minimal CustomResourceDefinitions for the debugging rules the tests add at run time.
``docs/testing.md`` ("Member clusters") documents the API; the functions and the
``MemberCluster`` methods below are that API.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import http.client
import logging
import os
import secrets
import socket
import ssl
import struct
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tests.harness import kube
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import NotSeen, eventually

log = logging.getLogger("tests.harness.member")

MEMBER_BINARIES = ("kube-controller-manager", "kube-scheduler", "kwok")
READY_TIMEOUT = 240.0
"""Seconds for a whole member cluster to come up: five processes cold-starting on two busy
cores (kube-apiserver alone takes 10-40 s there); a safety net, not a speed claim."""

MANAGED_LABEL = "edgefleet.test/kwok"
"""kwok manages (heartbeats, runs pods of) exactly the nodes with ``MANAGED_LABEL=managed``;
removing the label is how a node becomes unreachable (``make_unreachable``)."""
MANAGED_VALUE = "managed"

NODE_LEASE_SECONDS = 40
"""kwok's node lease duration (renewed every quarter of it), the kubelet's own default."""

NODE_ADDRESS = "127.0.0.1"
"""Every node's InternalIP: kwok's kubelet API listens on loopback only, because it runs any
command it is asked to (ClusterExec), so it must never be reachable from the network."""

DEFAULT_CAPACITY: Mapping[str, str] = {"cpu": "4", "memory": "8Gi", "pods": "110"}
"""Per-node capacity and allocatable: realistic numbers for status tests (kwok's own default
of 1000 CPUs and 1 TiB would make every figure meaningless)."""

FAST_EVICTION_CONTROLLER_MANAGER_ARGS: tuple[str, ...] = (
    "--node-monitor-period=1s",
    "--node-monitor-grace-period=20s",
)
"""kube-controller-manager flags for eviction tests: a node whose lease has not been renewed
for 20 s becomes Unknown and gets the ``node.kubernetes.io/unreachable`` NoExecute taint.
Pair with ``node_lease_seconds=FAST_EVICTION_NODE_LEASE_SECONDS``: kwok then renews every 2 s,
which leaves 18 s for a late renewal on two busy cores before a false alarm."""

FAST_EVICTION_NODE_LEASE_SECONDS = 8
"""Lease duration to pair with FAST_EVICTION_CONTROLLER_MANAGER_ARGS: renewed every 2 s."""

FAST_EVICTION_APISERVER_ARGS: tuple[str, ...] = (
    "--default-unreachable-toleration-seconds=5",
    "--default-not-ready-toleration-seconds=5",
)
"""kube-apiserver flags for eviction tests: pods tolerate the taints for 5 s, not 300 s."""

DEBUG_CRDS: tuple[tuple[str, str, str], ...] = (
    ("ClusterLogs", "clusterlogs", "Cluster"),
    ("Logs", "logs", "Namespaced"),
    ("ClusterPortForward", "clusterportforwards", "Cluster"),
    ("PortForward", "portforwards", "Namespaced"),
    ("ClusterAttach", "clusterattaches", "Cluster"),
    ("Attach", "attaches", "Namespaced"),
)
"""kwok kinds the tests create at run time (kind, plural, scope). ClusterExec is not among
them: one static rule in kwok's --config runs every exec as a local process."""

KWOK_GROUP = "kwok.x-k8s.io"
KWOK_VERSION = "v1alpha1"
_PROBE_PORT = 1
"""Pod port of the probe entry ``add_port_forward`` adds to each rule (tcpmux: no test uses it)."""


def member_bin_dir() -> Path:
    """The kube binaries folder, checked to also hold the member-cluster binaries."""
    folder = kube.kube_bin_dir()
    missing = [b for b in MEMBER_BINARIES if not (folder / b).is_file()]
    if missing:
        raise ServiceError(
            f"{', '.join(missing)} not found in {folder}: run scripts/kube-build, which builds "
            "kube-controller-manager and kube-scheduler and installs kwok"
        )
    return folder


# -- kwok's stages (from kwok v0.8.0 kustomize/stage/{node/fast,node/heartbeat-with-lease,
#    pod/fast}); statusTemplate bodies verbatim except where a comment says otherwise.

_NODE_INITIALIZE = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type  | Quote}}
{{ end }}

{{ $hasInternalIP := false }}
{{ $hasHostname := false }}
{{ range .status.addresses }}
  {{ if eq .type "InternalIP" }}
    {{ $hasInternalIP = true }}
  {{ end }}
  {{ if eq .type "Hostname" }}
    {{ $hasHostname = true }}
  {{ end }}
{{ end }}
{{ if or (not $hasInternalIP) (not $hasHostname) }}
addresses:
{{ end }}
{{ if not $hasInternalIP }}
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
{{ end }}
{{ if not $hasHostname }}
{{ with NodeName }}
- address: {{ . | Quote }}
  type: Hostname
{{ end }}
{{ end }}

{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}

allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}

{{ $nodeInfo := .status.nodeInfo }}
{{ $kwokVersion := printf "kwok-%s" Version }}
nodeInfo:
  architecture: {{ or $nodeInfo.architecture "amd64" }}
  bootID: {{ or $nodeInfo.bootID `""` }}
  containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
  kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
  kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
  kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
  machineID: {{ or $nodeInfo.machineID `""` }}
  operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
  osImage: {{ or $nodeInfo.osImage `""` }}
  systemUUID: {{ or $nodeInfo.systemUUID `""` }}
phase: Running
"""

_NODE_HEARTBEAT_WITH_LEASE = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}

addresses:
{{ with .status.addresses }}
{{ YAML . 1 }}
{{ else }}
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
{{ with NodeName }}
- address: {{ . | Quote }}
  type: Hostname
{{ end }}
{{ end }}

{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}
"""

_POD_READY = """\
{{ $now := Now }}

conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}

containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}

initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  {{ if eq .restartPolicy "Always" }}
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
  {{ else }}
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
  {{ end }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
__POD_IPS__
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
""".replace(
    "__POD_IPS__",
    "{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) "
    '( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}',
)

_POD_COMPLETE = """\
{{ $now := Now }}
{{ $root := . }}
containerStatuses:
{{ range $index, $item := .spec.containers }}
{{ $origin := index $root.status.containerStatuses $index }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


def _expr(key: str, operator: str, values: Sequence[str] = ()) -> dict[str, Any]:
    expression: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        expression["values"] = list(values)
    return expression


def _stage(name: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": kind}, **spec},
    }


_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def stages() -> list[dict[str, Any]]:
    """The Stages kwok plays: node-initialize, node-heartbeat-with-lease, pod-ready, ...

    Also pod-complete and pod-delete; node heartbeats proper are the node leases kwok renews.
    """
    return [
        _stage(
            "node-initialize",
            "Node",
            {
                "selector": {"matchExpressions": [_expr(_READY, "NotIn", ["True"])]},
                "next": {"statusTemplate": _NODE_INITIALIZE},
            },
        ),
        _stage(
            "node-heartbeat-with-lease",
            "Node",
            {
                "selector": {
                    "matchExpressions": [
                        _expr(".status.phase", "In", ["Running"]),
                        _expr(_READY, "In", ["True"]),
                    ]
                },
                "delay": {"durationMilliseconds": 600000, "jitterDurationMilliseconds": 610000},
                "next": {"statusTemplate": _NODE_HEARTBEAT_WITH_LEASE},
            },
        ),
        _stage(
            "pod-ready",
            "Pod",
            {
                "selector": {
                    "matchExpressions": [
                        _expr(".metadata.deletionTimestamp", "DoesNotExist"),
                        _expr(".status.phase", "In", ["Pending"]),
                        _expr(_READY, "NotIn", ["True"]),
                    ]
                },
                "next": {"statusTemplate": _POD_READY},
            },
        ),
        _stage(
            "pod-complete",
            "Pod",
            {
                "selector": {
                    "matchExpressions": [
                        _expr(".metadata.deletionTimestamp", "DoesNotExist"),
                        _expr(".status.phase", "In", ["Running"]),
                        _expr(".metadata.ownerReferences.[].kind", "In", ["Job"]),
                    ]
                },
                "next": {"statusTemplate": _POD_COMPLETE},
            },
        ),
        _stage(
            "pod-delete",
            "Pod",
            {
                "selector": {"matchExpressions": [_expr(".metadata.deletionTimestamp", "Exists")]},
                "next": {"delete": True},
            },
        ),
    ]


def _local_exec_rule(workdir: Path) -> dict[str, Any]:
    return {
        "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
        "kind": "ClusterExec",
        "metadata": {"name": "local"},
        "spec": {"execs": [{"local": {"workDir": str(workdir)}}]},
    }


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    # Schema-less (preserve unknown fields): kwok validates the rules itself, and the full
    # generated schemas (100 kB) are not available without the network.
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{KWOK_GROUP}"},
        "spec": {
            "group": KWOK_GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "scope": scope,
            "versions": [
                {
                    "name": KWOK_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def cri_log_line(text: str, *, stream: str = "stdout", at: dt.datetime | None = None) -> str:
    """One line in the CRI log format kwok's ``kubectl logs`` reads (plain text is refused)."""
    stamp = (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp} {stream} F {text}\n"


def write_cri_log(path: Path, lines: Sequence[str], *, append: bool = True) -> None:
    """Write ``lines`` (no newlines in them) to a container log file kwok serves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as out:
        out.writelines(cri_log_line(line) for line in lines)


@dataclass(kw_only=True)
class MemberCluster:
    """One running member cluster; ``plane`` is its kube-apiserver (see tests.harness.kube)."""

    name: str
    workdir: Path
    plane: kube.ControlPlane
    nodes: list[str]
    kubelet_port: int
    """The port of kwok's kubelet API, the same for every node (status.daemonEndpoints)."""
    controller_manager_port: int
    scheduler_port: int
    node_lease_seconds: int
    exec_workdir: Path
    """Where ``kubectl exec`` commands run (the local ClusterExec rule's workDir)."""
    node_capacity: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    """Capacity of the nodes the harness creates (``MemberSpec.node_capacity``)."""
    _procs: dict[str, ManagedProcess] = field(default_factory=dict)
    _argv: dict[str, list[str]] = field(default_factory=dict)
    _env: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- what clients need

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (token in system:masters) for kubectl and client libraries."""
        return self.plane.kubeconfig

    @property
    def url(self) -> str:
        return self.plane.url

    @property
    def pids(self) -> list[int]:
        return [*self.plane.pids, *(p.pid for p in self._procs.values())]

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl against this member as its admin; text in and out."""
        return self.plane.kubectl(*args, stdin=stdin, timeout=timeout, check=check)

    def api(self, method: str, path: str, body: object = None) -> Any:
        """One admin JSON request; the decoded answer, or ServiceError on a non-2xx status."""
        status, answer = self.plane.request(method, path, body)
        if not 200 <= status < 300:
            raise ServiceError(f"{method} {path} on member {self.name}: {status} {answer}")
        return answer

    def in_cluster_env(self) -> dict[str, str]:
        """The environment Kubernetes gives a pod to find its API server.

        client-go's in-cluster config reads these plus the files of
        ``write_service_account_files``.
        """
        return {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.plane.port),
        }

    def write_service_account_files(
        self, folder: Path, *, namespace: str = "default", name: str = "default"
    ) -> Path:
        """Write a service account's ``token``, ``ca.crt`` and ``namespace`` into ``folder``.

        The same files the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount.
        Creates the service account if missing and a long-lived token Secret that the
        controller manager's token controller fills (so the token survives restarts of the
        API server). Returns ``folder``.
        """
        if (
            self.plane.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")[0]
            == 404
        ):
            self.api(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            )
        secret = f"{name}-token-{secrets.token_hex(4)}"
        self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/service-account-token",
                "metadata": {
                    "name": secret,
                    "annotations": {"kubernetes.io/service-account.name": name},
                },
            },
        )
        data = eventually(
            lambda: (
                self.api("GET", f"/api/v1/namespaces/{namespace}/secrets/{secret}").get("data")
                or {}
            ),
            lambda found: "token" in found and "ca.crt" in found,
            what=f"the token controller filling Secret {namespace}/{secret} in member {self.name}",
            within=60.0,
            every=0.2,
        )
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("token", "ca.crt", "namespace"):
            path = folder / key
            path.write_bytes(base64.b64decode(data[key]))
            path.chmod(0o600)
        return folder

    # -- nodes

    def node(self, name: str) -> dict[str, Any]:
        node: dict[str, Any] = self.api("GET", f"/api/v1/nodes/{name}")
        return node

    def node_condition(self, name: str, kind: str = "Ready") -> str | None:
        """The status ("True", "False", "Unknown") of a node's condition, None if absent."""
        for condition in self.node(name).get("status", {}).get("conditions") or ():
            if condition.get("type") == kind:
                return str(condition.get("status"))
        return None

    def node_taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.node(name).get("spec", {}).get("taints") or ())

    def wait_nodes_ready(
        self, nodes: Sequence[str] | None = None, *, within: float = READY_TIMEOUT
    ) -> None:
        wanted = list(nodes if nodes is not None else self.nodes)

        def not_ready() -> list[str]:
            self.check_running()
            items = self.api("GET", "/api/v1/nodes")["items"]
            ready = {
                item["metadata"]["name"]
                for item in items
                for c in item.get("status", {}).get("conditions") or ()
                if c.get("type") == "Ready" and c.get("status") == "True"
            }
            return [n for n in wanted if n not in ready]

        eventually(
            not_ready,
            lambda missing: not missing,
            what=f"nodes Ready in member {self.name}",
            within=within,
            every=0.5,
            ignore=(OSError, ServiceError),
        )

    def add_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        capacity: Mapping[str, str] | None = None,
    ) -> None:
        """Create one more node like the others (kwok makes it Ready; see wait_nodes_ready)."""
        _create_node(self, name, labels or {}, capacity or self.node_capacity)
        self.nodes.append(name)

    def remove_node(self, name: str) -> None:
        """Delete a node object (its pods are garbage-collected by the controller manager)."""
        self.api("DELETE", f"/api/v1/nodes/{name}")
        self.nodes.remove(name)

    def label_node(self, name: str, labels: Mapping[str, str | None]) -> None:
        """Merge-patch a node's labels; a None value removes that label."""
        self.api("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"labels": dict(labels)}})

    def make_unreachable(self, name: str) -> None:
        """Make kwok stop managing the node: no lease renewals, its pods left alone.

        After ``--node-monitor-grace-period`` the node lifecycle controller marks it Unknown and
        taints it ``node.kubernetes.io/unreachable`` (NoExecute), as for a kubelet cut off from
        the control plane. Needs kwok_manage="label" (the default).
        """
        self._require_label_management()
        self.label_node(name, {MANAGED_LABEL: None})

    def make_reachable(self, name: str) -> None:
        """Let kwok manage the node again; it renews the node's lease at once (same holder)."""
        self._require_label_management()
        self.label_node(name, {MANAGED_LABEL: MANAGED_VALUE})

    def _require_label_management(self) -> None:
        if not any(a.startswith("--manage-nodes-with-label-selector") for a in self._argv["kwok"]):
            raise ServiceError(f"member {self.name} runs kwok with kwok_manage='all'")

    # -- kubectl logs / port-forward rules (kwok debugging CRs)

    def add_logs(
        self,
        name: str,
        logs_file: Path,
        *,
        namespaces: Sequence[str] = (),
        pods: Sequence[str] = (),
        containers: Sequence[str] = (),
        follow: bool = True,
        previous_logs_file: Path | None = None,
    ) -> None:
        """``kubectl logs`` of matching pods (all when empty) reads ``logs_file``.

        The file must be in CRI format (``write_cri_log``). Returns once kwok serves the rule.
        Rules must not overlap: kwok uses the first matching one.
        """
        marker = f"probe-{secrets.token_hex(6)}"
        probe_file = self.workdir / "probes" / f"{marker}.log"
        write_cri_log(probe_file, [marker], append=False)
        entry: dict[str, Any] = {"logsFile": str(logs_file), "follow": follow}
        if containers:
            entry["containers"] = list(containers)
        if previous_logs_file is not None:
            entry["previousLogsFile"] = str(previous_logs_file)
        spec = {
            "selector": _selector(namespaces, pods),
            "logs": [entry, {"containers": [marker], "logsFile": str(probe_file)}],
        }
        self._create_rule("clusterlogs", name, spec)
        namespace, pod = _probe_target(namespaces, pods)
        path = f"/containerLogs/{namespace}/{pod}/{marker}"
        eventually(
            lambda: self._kubelet_get(path),
            lambda answer: marker in answer,
            what=f"kwok serving ClusterLogs {name} in member {self.name}",
            within=60.0,
            every=0.2,
            ignore=(OSError, http.client.HTTPException),
        )

    def add_port_forward(
        self,
        name: str,
        target_port: int,
        *,
        address: str = "127.0.0.1",
        ports: Sequence[int] = (),
        namespaces: Sequence[str] = (),
        pods: Sequence[str] = (),
    ) -> None:
        """``kubectl port-forward`` to matching pods dials ``address:target_port`` from kwok.

        ``ports`` are the pod ports the rule covers (all when empty). Returns once kwok serves
        the rule; rules must not overlap (kwok uses the first matching one).
        """
        marker = f"probe-{secrets.token_hex(6)}"
        forward: dict[str, Any] = {"target": {"address": address, "port": target_port}}
        if ports:
            forward["ports"] = list(ports)
        spec = {
            "selector": _selector(namespaces, pods),
            "forwards": [forward, {"ports": [_PROBE_PORT], "command": ["echo", marker]}],
        }
        self._create_rule("clusterportforwards", name, spec)
        namespace, pod = _probe_target(namespaces, pods)
        eventually(
            lambda: _port_forward_probe(self.kubelet_port, namespace, pod, marker),
            lambda answer: marker in answer,
            what=f"kwok serving ClusterPortForward {name} in member {self.name}",
            within=60.0,
            every=0.2,
            ignore=(OSError, http.client.HTTPException),
        )

    def delete_rule(self, plural: str, name: str) -> None:
        """Delete a cluster-scoped kwok rule (``clusterlogs``, ``clusterportforwards``)."""
        self.api("DELETE", f"/apis/{KWOK_GROUP}/{KWOK_VERSION}/{plural}/{name}")

    def _create_rule(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        kind = {p: k for k, p, _ in DEBUG_CRDS}[plural]
        body = {
            "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        self.api("POST", f"/apis/{KWOK_GROUP}/{KWOK_VERSION}/{plural}", body)

    def _kubelet_get(self, path: str) -> str:
        # kwok serves plain HTTP and TLS on the same port; the plain side is enough here.
        connection = http.client.HTTPConnection(NODE_ADDRESS, self.kubelet_port, timeout=5.0)
        try:
            connection.request("GET", path)
            return connection.getresponse().read().decode(errors="replace")
        finally:
            connection.close()

    # -- processes

    def check_running(self) -> None:
        for proc in self._procs.values():
            proc.check_running()

    def stop_process(self, which: str, *, kill: bool = False) -> None:
        """Stop one of "kube-controller-manager", "kube-scheduler", "kwok"."""
        proc = self._procs.pop(which, None)
        if proc is None:
            return
        if kill:
            proc.kill()
        proc.stop()

    def argv(self, which: str) -> list[str]:
        """The command line of "kube-controller-manager", "kube-scheduler" or "kwok" (a copy)."""
        return list(self._argv[which])

    def start_process(self, which: str, extra_args: Sequence[str] = ()) -> None:
        """(Re)start one of the member's processes, with its flags merged with ``extra_args``.

        Before kwok starts, the node leases go: a restarted kwok has a new identity and would
        otherwise wait for the old holder's leases to expire, long enough (up to the lease
        duration plus a renewal interval) for the controller manager to call its nodes Unknown.
        """
        if which in self._procs and self._procs[which].popen.poll() is None:
            return
        if which == "kwok":
            self.api("DELETE", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
        if extra_args:
            argv = self._argv[which]
            self._argv[which] = [argv[0], *kube.merge_flags(argv[1:], extra_args)]
        self._procs[which] = ManagedProcess(
            f"{which}[{self.name}]",
            self._argv[which],
            log_path=self.workdir / f"{which}.log",
            env=self._env.get(which),
        )

    def wait_ready(
        self, *, within: float = READY_TIMEOUT, nodes: Sequence[str] | None = None
    ) -> None:
        """Wait until the control plane, the controllers, kwok and ``nodes`` (all) are ready."""
        try:
            self.plane.wait_ready(within)
            for which, port in (
                ("kube-controller-manager", self.controller_manager_port),
                ("kube-scheduler", self.scheduler_port),
            ):
                _wait_healthz(self, which, port, within)
            eventually(
                self._kwok_health,
                lambda body: body.strip() == "ok",
                what=f"kwok kubelet API /healthz in member {self.name}",
                within=within,
                every=0.25,
                ignore=(OSError, http.client.HTTPException),
            )
            self.wait_nodes_ready(nodes, within=within)
            # The serviceaccount controller must have made "default" before a pod can be
            # admitted (the ServiceAccount admission plugin is on in member clusters).
            eventually(
                lambda: self.plane.request(
                    "GET", "/api/v1/namespaces/default/serviceaccounts/default"
                )[0],
                lambda status: status == 200,
                what=f"default service account in member {self.name}",
                within=within,
                every=0.5,
                ignore=(OSError,),
            )
        except NotSeen as error:
            raise ServiceError(f"{error}\n{self.log_tails()}") from error

    def _kwok_health(self) -> str:
        self.check_running()
        return self._kubelet_get("/healthz")

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {which}:\n{proc.tail(lines)}" for which, proc in self._procs.items())

    def stop(self) -> None:
        for which in ("kwok", "kube-scheduler", "kube-controller-manager"):
            self.stop_process(which)
        self.plane.stop()


def _selector(namespaces: Sequence[str], pods: Sequence[str]) -> dict[str, list[str]]:
    selector: dict[str, list[str]] = {}
    if namespaces:
        selector["matchNamespaces"] = list(namespaces)
    if pods:
        selector["matchNames"] = list(pods)
    return selector


def _probe_target(namespaces: Sequence[str], pods: Sequence[str]) -> tuple[str, str]:
    # kwok looks rules up by the names in the URL, not by existing pods, so a probe can name a
    # pod that does not exist as long as the rule's selector matches it.
    return (namespaces[0] if namespaces else "default"), (pods[0] if pods else "kwok-probe")


def _wait_healthz(member: MemberCluster, which: str, port: int, within: float) -> None:
    # Self-signed serving certificates (their --cert-dir): liveness only, nothing secret.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def healthz() -> int:
        member.check_running()
        connection = http.client.HTTPSConnection(NODE_ADDRESS, port, timeout=5.0, context=context)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status
        finally:
            connection.close()

    eventually(
        healthz,
        lambda status: status == 200,
        what=f"{which} /healthz in member {member.name}",
        within=within,
        every=0.25,
        ignore=(OSError, http.client.HTTPException),
    )


def _port_forward_probe(port: int, namespace: str, pod: str, marker: str) -> str:
    """What kwok's kubelet API sends back for a port-forward to the probe port.

    A WebSocket port-forward (v4.channel.k8s.io); the data and error channels are read until
    ``marker`` arrives or kwok closes the connection.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    query = urllib.parse.urlencode({"port": _PROBE_PORT})
    head = (
        f"GET /portForward/{namespace}/{pod}?{query} HTTP/1.1\r\n"
        f"Host: {NODE_ADDRESS}:{port}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )
    seen = bytearray()
    with socket.create_connection((NODE_ADDRESS, port), timeout=5.0) as sock:
        sock.sendall(head.encode())
        reader = sock.makefile("rb")
        status = reader.readline()
        if b" 101 " not in status:
            return status.decode(errors="replace") + reader.read(2000).decode(errors="replace")
        while reader.readline() not in (b"\r\n", b""):
            pass
        while True:
            header = reader.read(2)
            if len(header) < 2:
                break
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", reader.read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", reader.read(8))
            payload = reader.read(length)
            if opcode == 0x8:  # close
                break
            # Each binary frame starts with its channel byte; the first frame of each channel
            # carries the port (2 bytes), later ones data (0) or an error message (1).
            seen += payload[1:]
            if marker.encode() in seen:
                break
    return seen.decode(errors="replace")


@dataclass(frozen=True, kw_only=True)
class MemberSpec:
    """How to build a member cluster; every function below also takes these as keywords."""

    nodes: int = 3
    """Fake nodes, named ``<cluster>-node-<i>``."""
    node_labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every node (``label_node`` changes one node later)."""
    node_capacity: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    """Capacity = allocatable of every node (Kubernetes quantities)."""
    apiserver_args: Sequence[str] = ()
    """Extra kube-apiserver flags, ``--name=value``; each replaces our flag of that name."""
    controller_manager_args: Sequence[str] = ()
    """Extra kube-controller-manager flags (e.g. FAST_EVICTION_CONTROLLER_MANAGER_ARGS)."""
    scheduler_args: Sequence[str] = ()
    kwok_args: Sequence[str] = ()
    kwok_manage: Literal["label", "all"] = "label"
    """"label": kwok manages nodes labelled MANAGED_LABEL (so ``make_unreachable`` works);
    "all": every node, including ones a test creates itself."""
    node_lease_seconds: int = NODE_LEASE_SECONDS
    """Node lease duration; kwok renews every quarter of it. Keep it well below the
    controller manager's --node-monitor-grace-period (50 s by default)."""
    extra_tokens: Mapping[str, str] = field(default_factory=dict)
    """Token -> user name (no groups) in kube-apiserver's token file, as in kube.launch."""


def _spec(spec: MemberSpec | None, options: Mapping[str, Any]) -> MemberSpec:
    # replace() refuses unknown names, so a misspelt keyword fails loudly.
    return dataclasses.replace(spec or MemberSpec(), **options)


_APISERVER_DEFAULTS = (
    # Nodes' Hostname addresses (the node names) resolve nowhere; kwok listens on the
    # InternalIP. Egress-selector tests override this to get one CONNECT target per node.
    "--kubelet-preferred-address-types=InternalIP,Hostname",
    # kube.py turns the ServiceAccount admission plugin off (no controller makes default
    # service accounts there); a member runs that controller, so pods get tokens as usual.
    "--disable-admission-plugins=",
)


def _launch_plane(name: str, workdir: Path, spec: MemberSpec) -> kube.ControlPlane:
    member_bin_dir()  # fail before starting anything if a binary is missing
    workdir.mkdir(parents=True, exist_ok=True)
    return kube.launch(
        name,
        workdir / "plane",
        extra_tokens=dict(spec.extra_tokens),
        apiserver_args=kube.merge_flags(_APISERVER_DEFAULTS, spec.apiserver_args),
    )


def _launch_on(plane: kube.ControlPlane, workdir: Path, spec: MemberSpec) -> MemberCluster:
    """Wait for the plane, add CRDs and nodes (kwok needs them first), start the rest."""
    member = MemberCluster(
        name=plane.name,
        workdir=workdir,
        plane=plane,
        nodes=[f"{plane.name}-node-{index}" for index in range(spec.nodes)],
        kubelet_port=free_port(),
        controller_manager_port=free_port(),
        scheduler_port=free_port(),
        node_lease_seconds=spec.node_lease_seconds,
        exec_workdir=workdir / "exec",
        node_capacity=dict(spec.node_capacity),
    )
    try:
        plane.wait_ready(READY_TIMEOUT)
        _install_debug_crds(member)
        for node_name in member.nodes:
            _create_node(member, node_name, spec.node_labels, spec.node_capacity)
        _prepare_argv(member, member_bin_dir(), spec)
        for which in ("kube-controller-manager", "kube-scheduler", "kwok"):
            member.start_process(which)
    except BaseException:
        member.stop()
        raise
    return member


def launch_member(
    name: str, workdir: Path, spec: MemberSpec | None = None, **options: Any
) -> MemberCluster:
    """Start a member cluster without waiting for it to be ready (then ``wait_ready``).

    ``options`` are ``MemberSpec`` fields overriding ``spec``. Waits for kube-apiserver only:
    the CRDs and Node objects must exist before kwok starts.
    """
    chosen = _spec(spec, options)
    plane = _launch_plane(name, workdir, chosen)
    return _launch_on(plane, workdir, chosen)


def start_member(
    name: str, workdir: Path, spec: MemberSpec | None = None, **options: Any
) -> MemberCluster:
    """``launch_member`` and wait until everything is ready; stops it all on failure."""
    member = launch_member(name, workdir, spec, **options)
    try:
        member.wait_ready()
    except BaseException:
        member.stop()
        raise
    return member


@contextlib.contextmanager
def running_member(
    name: str, workdir: Path, spec: MemberSpec | None = None, **options: Any
) -> Iterator[MemberCluster]:
    """A started member cluster for the ``with`` block; stopped afterwards."""
    member = start_member(name, workdir, spec, **options)
    try:
        yield member
    finally:
        member.stop()


@contextlib.contextmanager
def member_clusters(
    count: int, base: Path, spec: MemberSpec | None = None, **options: Any
) -> Iterator[list[MemberCluster]]:
    """``count`` member clusters ``member0``, ``member1``, ... (folders under ``base``).

    Their kube-apiservers start side by side (the slowest part), then the rest of each.
    """
    chosen = _spec(spec, options)
    planes: list[kube.ControlPlane] = []
    members: list[MemberCluster] = []
    try:
        for index in range(count):
            planes.append(_launch_plane(f"member{index}", base / f"member{index}", chosen))  # noqa: PERF401
        while planes:
            plane = planes.pop(0)
            members.append(_launch_on(plane, base / plane.name, chosen))
        for member in members:
            member.wait_ready()
        yield members
    finally:
        for plane in planes:
            plane.stop()
        for member in members:
            member.stop()


def _install_debug_crds(member: MemberCluster) -> None:
    for kind, plural, scope in DEBUG_CRDS:
        member.api(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            _crd(kind, plural, scope),
        )

    def established() -> list[str]:
        missing = []
        for _, plural, _ in DEBUG_CRDS:
            status, crd = member.plane.request(
                "GET",
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{KWOK_GROUP}",
            )
            conditions = (
                (crd or {}).get("status", {}).get("conditions") or () if status == 200 else ()
            )
            if not any(
                c.get("type") == "Established" and c.get("status") == "True" for c in conditions
            ):
                missing.append(plural)
        return missing

    eventually(
        established,
        lambda missing: not missing,
        what=f"kwok CRDs established in member {member.name}",
        within=60.0,
        every=0.2,
        ignore=(OSError,),
    )


def _create_node(
    member: MemberCluster, name: str, labels: Mapping[str, str], capacity: Mapping[str, str]
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                MANAGED_LABEL: MANAGED_VALUE,
                **labels,
            },
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "status": {
            # Set here, not by kwok's node-initialize, so each node has its own Hostname (the
            # CONNECT target an egress selector sees) while all share kwok's InternalIP.
            "addresses": [
                {"type": "InternalIP", "address": NODE_ADDRESS},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": member.kubelet_port}},
            "capacity": dict(capacity),
            "allocatable": dict(capacity),
        },
    }
    member.api("POST", "/api/v1/nodes", body)


def _prepare_argv(member: MemberCluster, bins: Path, spec: MemberSpec) -> None:
    plane = member.plane
    kubeconfig = str(plane.kubeconfig)
    assert plane.service_account_key is not None  # kube.launch always makes one
    member.exec_workdir.mkdir(parents=True, exist_ok=True)
    delegated = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",  # one replica; an election would only delay the start
        f"--bind-address={NODE_ADDRESS}",
        "--profiling=false",
        "--v=1",
    ]
    controller_manager = [
        *delegated,
        f"--secure-port={member.controller_manager_port}",
        f"--cert-dir={member.workdir / 'kube-controller-manager-pki'}",
        f"--cluster-name={member.name}",
        # The key kube-apiserver verifies service-account tokens with, so the tokens the
        # token controller writes into Secrets work; the CA goes into kube-root-ca.crt.
        f"--service-account-private-key-file={plane.service_account_key}",
        f"--root-ca-file={plane.ca_path}",
    ]
    scheduler = [
        *delegated,
        f"--secure-port={member.scheduler_port}",
        f"--cert-dir={member.workdir / 'kube-scheduler-pki'}",
    ]
    config_path = member.workdir / "kwok.yaml"
    config_path.write_text(
        yaml.safe_dump_all([*stages(), _local_exec_rule(member.exec_workdir)], sort_keys=False)
    )
    manage = (
        f"--manage-nodes-with-label-selector={MANAGED_LABEL}={MANAGED_VALUE}"
        if spec.kwok_manage == "label"
        else "--manage-all-nodes=true"
    )
    kwok = [
        f"--kubeconfig={kubeconfig}",
        f"--config={config_path}",
        manage,
        f"--node-ip={NODE_ADDRESS}",
        f"--node-port={member.kubelet_port}",
        # Loopback only: this API runs any command it is asked to (the ClusterExec rule).
        f"--server-address={NODE_ADDRESS}:{member.kubelet_port}",
        f"--node-lease-duration-seconds={member.node_lease_seconds}",
        "--cidr=10.244.0.0/16",  # pod IPs; the default /24 runs out at 254 pods
        f"--enable-crds={','.join(kind for kind, _, _ in DEBUG_CRDS)}",
    ]
    member._argv = {
        "kube-controller-manager": [
            str(bins / "kube-controller-manager"),
            *kube.merge_flags(controller_manager, spec.controller_manager_args),
        ],
        "kube-scheduler": [
            str(bins / "kube-scheduler"),
            *kube.merge_flags(scheduler, spec.scheduler_args),
        ],
        "kwok": [str(bins / "kwok"), *kube.merge_flags(kwok, spec.kwok_args)],
    }
    # kwok also reads ~/.kwok/kwok.yaml; a private HOME keeps a developer's file out.
    member._env = {"kwok": {"HOME": str(member.workdir)}}


@contextlib.contextmanager
def factory(folder_for: Callable[[str], Path]) -> Iterator[Callable[..., MemberCluster]]:
    """``make(name, spec=None, **options)`` starts member clusters, all stopped at the end.

    ``folder_for(name)`` gives each its folder. The body of a pytest fixture (this module does
    not import pytest: scripts/quickstart uses it without the test extras)::

        @pytest.fixture
        def member_factory(tmp_path_factory):
            with member.factory(lambda n: tmp_path_factory.mktemp(f"member-{n}")) as make:
                yield make
    """
    started: list[MemberCluster] = []

    def make(name: str, spec: MemberSpec | None = None, **options: Any) -> MemberCluster:
        cluster = start_member(name, folder_for(name), spec, **options)
        started.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            cluster.stop()

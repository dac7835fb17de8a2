"""packaging/kubernetes/tunnel-server/: both variants render, validate and grant what they say.

`kubectl kustomize` (the real kubectl of scripts/kube-build) renders the HA variant (the
folder itself) and ``single/``; a real kube-apiserver validates each with a server-side dry
run, then the HA variant is applied for real and SubjectAccessReviews prove what the replicas'
service account may do. The rendered objects are parsed to check what a dry run cannot: the
restricted security context, the anti-affinity, the budget, the probes and the commands.

The CRDs (``crds/``) belong to the Kubernetes store; where this checkout has none yet, the HA
variant is rendered from a copy without that one resource, and the CRD test is skipped with
that reason, never faked.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent import __version__
from tests.harness import kube
from tunnel_server import cli

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "packaging" / "kubernetes" / "tunnel-server"
CRDS = PACKAGE / "crds"
NAMESPACE = "edgefleet"
SA = f"system:serviceaccount:{NAMESPACE}:tunnel-server"
IMAGE = "localhost/edgefleet:0.1.0"
LABEL = {"app.kubernetes.io/name": "edgefleet-tunnel-server"}

Objects = dict[tuple[str, str], dict[str, Any]]


def kubectl_kustomize(folder: Path) -> str:
    done = subprocess.run(
        [str(kube.kube_bin_dir() / "kubectl"), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def has_crds() -> bool:
    return (CRDS / "kustomization.yaml").is_file()


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    """``{"ha": ..., "single": ...}``: each variant as `kubectl kustomize` prints it."""
    return {"ha": kubectl_kustomize(PACKAGE), "single": kubectl_kustomize(PACKAGE / "single")}


def documents(text: str) -> Objects:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.ControlPlane]:
    """This module's own control plane: the HA variant is applied to it for real."""
    started = kube.start("tunnel-install", tmp_path_factory.mktemp("kube-tunnel-install"))
    try:
        yield started
    finally:
        started.stop()


def dry_run(plane: kube.ControlPlane, text: str) -> str:
    """A server-side dry run of the whole stream; the namespace is created for real first.

    The NamespaceLifecycle admission plugin runs in a dry run too, and a dry-run namespace is
    never created, so namespaced objects need the real one.
    """
    namespaces = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == [NAMESPACE]
    plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(namespaces[0]))
    done = plane.kubectl("apply", "--dry-run=server", "-f", "-", stdin=text)
    return done.stdout


@pytest.mark.parametrize("variant", ["ha", "single"])
def test_each_variant_passes_a_server_side_dry_run(
    plane: kube.ControlPlane, rendered: dict[str, str], variant: str
) -> None:
    out = dry_run(plane, rendered[variant])
    lines = [line for line in out.splitlines() if line]
    # One line per object, each validated by the server (and nothing written).
    assert len(lines) == len(documents(rendered[variant])), out
    assert all(line.endswith("(server dry run)") for line in lines), out
    workload = "deployment.apps/tunnel-server" if variant == "ha" else "statefulset.apps/"
    assert any(line.startswith(workload) for line in lines), out
    # Nothing written (the HA variant may be applied for real by another test, never single).
    if variant == "single":
        absent = plane.kubectl("get", "-n", NAMESPACE, "statefulsets", "-o", "name")
        assert absent.stdout.strip() == ""


def test_the_server_dry_run_refuses_what_is_invalid(
    plane: kube.ControlPlane, rendered: dict[str, str]
) -> None:
    """The dry run is a real check: a budget the API server cannot accept is refused."""
    objects = documents(rendered["ha"])
    budget = objects["PodDisruptionBudget", "tunnel-server"]
    broken = json.loads(json.dumps(budget))
    broken["spec"]["minAvailable"] = -1
    dry_run(plane, rendered["ha"])  # the namespace exists
    done = plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(broken), check=False
    )
    assert done.returncode != 0
    assert "minAvailable" in done.stderr, done.stderr


def workload_pod(objects: Objects, kind: str) -> dict[str, Any]:
    pod: dict[str, Any] = objects[kind, "tunnel-server"]["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize(("variant", "kind"), [("ha", "Deployment"), ("single", "StatefulSet")])
def test_the_server_runs_restricted(rendered: dict[str, str], variant: str, kind: str) -> None:
    objects = documents(rendered[variant])
    namespace = objects["Namespace", NAMESPACE]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = workload_pod(objects, kind)
    assert pod["serviceAccountName"] == "tunnel-server"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod
    assert "initContainers" not in pod
    (server,) = pod["containers"]
    context = server["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in context
    assert server["image"] == IMAGE
    assert server["resources"]["requests"]["cpu"]
    assert server["resources"]["limits"]["memory"]
    # A read-only root: everything it writes is on the mounted volumes.
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert mounts == {"/var/lib/edgefleet", "/tmp"}  # noqa: S108 - the pod's tmpfs
    # Probes on the one TLS listener, by the port's name.
    (port,) = server["ports"]
    assert port == {"name": "https", "containerPort": 8443, "protocol": "TCP"}
    assert server["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "https",
        "scheme": "HTTPS",
    }
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    command = server["command"]
    assert command[:2] == ["tunnel-server", "run"]
    assert command[command.index("--listen") + 1] == "0.0.0.0:8443"
    assert command[command.index("--data-dir") + 1] == "/var/lib/edgefleet"


def test_the_image_tag_is_the_release(rendered: dict[str, str]) -> None:
    """The kustomizations pin the version edge_agent says (what packaging/image/build tags)."""
    for variant, kind in (("ha", "Deployment"), ("single", "StatefulSet")):
        (server,) = workload_pod(documents(rendered[variant]), kind)["containers"]
        assert server["image"] == f"localhost/edgefleet:{__version__}", variant


def test_ha_three_replicas_on_three_hosts_and_a_budget_of_two(rendered: dict[str, str]) -> None:
    objects = documents(rendered["ha"])
    deployment = objects["Deployment", "tunnel-server"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == LABEL
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == LABEL
    budget = objects["PodDisruptionBudget", "tunnel-server"]
    assert budget["spec"] == {"minAvailable": 2, "selector": {"matchLabels": LABEL}}
    (server,) = pod["containers"]
    command = server["command"]
    assert command[command.index("--store") + 1] == "kubernetes"
    assert command[command.index("--namespace") + 1] == NAMESPACE
    assert "--kubeconfig" not in command  # in-cluster: the service account's credentials


def test_single_is_one_sqlite_replica_with_its_own_volume(rendered: dict[str, str]) -> None:
    objects = documents(rendered["single"])
    assert not [key for key in objects if key[0] in ("Deployment", "Role", "RoleBinding")]
    assert not [key for key in objects if key[0] == "CustomResourceDefinition"]
    stateful = objects["StatefulSet", "tunnel-server"]
    assert stateful["spec"]["replicas"] == 1
    governing = objects["Service", stateful["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    pod = stateful["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (server,) = pod["containers"]
    command = server["command"]
    assert command[command.index("--store") + 1] == "sqlite"
    (claim,) = stateful["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    data = next(m for m in server["volumeMounts"] if m["mountPath"] == "/var/lib/edgefleet")
    # The data dir is the claim, not a pod volume that dies with the pod.
    assert data["name"] == claim["metadata"]["name"]
    assert data["name"] not in {v["name"] for v in pod.get("volumes", [])}


@pytest.mark.parametrize("variant", ["ha", "single"])
def test_the_tunnel_service_passes_tls_through(rendered: dict[str, str], variant: str) -> None:
    objects = documents(rendered[variant])
    tunnel = objects["Service", "tunnel-server-tunnel"]["spec"]
    api = objects["Service", "tunnel-server-api"]["spec"]
    for spec in (tunnel, api):
        assert spec["selector"] == LABEL
        (port,) = spec["ports"]
        # Plain TCP to the replica's TLS listener: no TLS-terminating hop in between.
        assert port["protocol"] == "TCP"
        assert port["targetPort"] == "https"
        assert "appProtocol" not in port
    assert tunnel["type"] == "LoadBalancer"
    assert tunnel["ports"][0]["port"] == 443
    assert api["type"] == "ClusterIP"
    # Nothing asks a controller to terminate TLS (no Ingress, no TLS annotations).
    assert not [key for key in objects if key[0] == "Ingress"]
    annotations = objects["Service", "tunnel-server-tunnel"]["metadata"].get("annotations", {})
    assert not [a for a in annotations if "ssl" in a or "tls" in a or "cert" in a]


def may(
    plane: kube.ControlPlane, verb: str, resource: str, *, namespace: str, **extra: str
) -> bool:
    """A SubjectAccessReview for the replicas' service account (no discovery of the resource).

    ``resource`` is spelled as kubectl does: ``plural.group`` (``leases.coordination.k8s.io``),
    ``plural`` for the core group, ``plural/subresource``.
    """
    resource, _, subresource = resource.partition("/")
    plural, _, group = resource.partition(".")
    attributes = {"verb": verb, "group": group, "resource": plural, "namespace": namespace}
    if subresource:
        attributes["subresource"] = subresource
    attributes.update(extra)
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": SA,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{NAMESPACE}",
                "system:authenticated",
            ],
            "resourceAttributes": attributes,
        },
    }
    done = plane.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review))
    allowed: bool = json.loads(done.stdout)["status"].get("allowed", False)
    return allowed


@pytest.fixture(scope="module")
def applied(plane: kube.ControlPlane, rendered: dict[str, str]) -> Objects:
    """The HA variant applied for real (RBAC checks need the Role and its binding)."""
    dry_run(plane, rendered["ha"])
    plane.kubectl("apply", "-f", "-", stdin=rendered["ha"])
    return documents(rendered["ha"])


def test_the_replicas_may_do_their_work_in_their_namespace_only(
    plane: kube.ControlPlane, applied: Objects
) -> None:
    assert ("Role", "tunnel-server") in applied
    assert not [key for key in applied if key[0] in ("ClusterRole", "ClusterRoleBinding")]
    # Their state (the group's resources and their status) and their Leases.
    for resource in ("nodes.edgefleet.io", "clusters.edgefleet.io", "users.edgefleet.io"):
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
            assert may(plane, verb, resource, namespace=NAMESPACE), (verb, resource)
    assert may(plane, "update", "nodes.edgefleet.io/status", namespace=NAMESPACE)
    # The fleet objects (fleet.edgefleet.io) and their status, in the namespace only.
    for resource in ("managedclusters.fleet.edgefleet.io", "works.fleet.edgefleet.io"):
        for verb in ("get", "list", "watch", "create", "update", "delete"):
            assert may(plane, verb, resource, namespace=NAMESPACE), (verb, resource)
        assert not may(plane, "get", resource, namespace="default"), resource
    assert may(plane, "update", "works.fleet.edgefleet.io/status", namespace=NAMESPACE)
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert may(plane, verb, "leases.coordination.k8s.io", namespace=NAMESPACE), verb
    # The CA Secret: created once by the first replica, then only read; no other Secret.
    for verb in ("get", "list", "watch"):
        assert may(plane, verb, "secrets", namespace=NAMESPACE, name="edgefleet-ca"), verb
    assert may(plane, "create", "secrets", namespace=NAMESPACE)
    for verb in ("update", "patch", "delete"):
        assert not may(plane, verb, "secrets", namespace=NAMESPACE, name="edgefleet-ca"), verb
    assert not may(plane, "list", "secrets", namespace=NAMESPACE)  # all of them: no
    assert not may(plane, "get", "secrets", namespace=NAMESPACE, name="other")
    assert not may(plane, "delete", "secrets", namespace=NAMESPACE, name="other")
    # Nothing elsewhere: the same rights in another namespace or cluster-wide are refused.
    for namespace in ("default", "kube-system", ""):
        assert not may(plane, "get", "nodes.edgefleet.io", namespace=namespace), namespace
        assert not may(plane, "get", "leases.coordination.k8s.io", namespace=namespace)
        assert not may(plane, "get", "secrets", namespace=namespace, name="edgefleet-ca")
        assert not may(plane, "create", "secrets", namespace=namespace)
    # Nor anything else of its own namespace.
    for verb, resource in (
        ("get", "configmaps"),
        ("create", "pods"),
        ("list", "pods"),
        ("get", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "serviceaccounts/token"),
        ("get", "nodes.otheredgefleet.io"),
    ):
        assert not may(plane, verb, resource, namespace=NAMESPACE), (verb, resource)


def test_the_crds_install_with_the_ha_variant(
    plane: kube.ControlPlane, applied: Objects, rendered: dict[str, str]
) -> None:
    """Whatever crds/kustomization.yaml lists is rendered, applied and established."""
    assert has_crds(), "packaging/kubernetes/tunnel-server/crds/ is part of the install"
    listed = yaml.safe_load((CRDS / "kustomization.yaml").read_text())["resources"]
    definitions = [key for key in applied if key[0] == "CustomResourceDefinition"]
    assert len(definitions) >= len(listed) > 0
    for _, name in definitions:
        assert name.endswith(".edgefleet.io"), name
        plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        scope = applied["CustomResourceDefinition", name]["spec"]["scope"]
        # Namespaced: the replicas' Role (namespaced) covers them only that way.
        assert scope == "Namespaced", name
    # Each kind can be listed in the namespace by the replicas' service account.
    for _, name in definitions:
        assert may(plane, "list", name, namespace=NAMESPACE), name
    assert rendered["ha"]


def pod_of(objects: Objects, kind: str) -> dict[str, Any]:
    """The Pod the workload's controller would create (no controller runs here)."""
    spec = json.loads(json.dumps(workload_pod(objects, kind)))
    if kind == "StatefulSet":
        # The StatefulSet controller adds each claim as a volume of the pod (claim-pod-ordinal).
        for claim in objects[kind, "tunnel-server"]["spec"]["volumeClaimTemplates"]:
            name = claim["metadata"]["name"]
            spec.setdefault("volumes", []).append(
                {"name": name, "persistentVolumeClaim": {"claimName": f"{name}-tunnel-server-0"}}
            )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"tunnel-server-{kind.lower()}", "namespace": NAMESPACE},
        "spec": spec,
    }


@pytest.mark.parametrize(("variant", "kind"), [("ha", "Deployment"), ("single", "StatefulSet")])
def test_the_pod_passes_the_restricted_pod_security_profile(
    plane: kube.ControlPlane, rendered: dict[str, str], variant: str, kind: str
) -> None:
    """The namespace enforces `restricted`: the API server's PodSecurity admission judges the pod.

    A Deployment is only warned about; a Pod is refused, so the template is tried as a Pod
    (dry run). The same Pod with one capability back is refused: the check is real.
    """
    objects = documents(rendered[variant])
    dry_run(plane, rendered[variant])  # the namespace, with its enforce label
    pod = pod_of(objects, kind)
    done = plane.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    assert "(server dry run)" in done.stdout
    assert "PodSecurity" not in done.stderr, done.stderr
    loose = json.loads(json.dumps(pod))
    loose["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_RAW"]}
    refused = plane.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(loose), check=False
    )
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted' in refused.stderr, refused.stderr


@pytest.mark.parametrize(("variant", "kind"), [("ha", "Deployment"), ("single", "StatefulSet")])
def test_the_command_is_one_the_cli_accepts(
    rendered: dict[str, str], variant: str, kind: str
) -> None:
    """The container's command parses with tunnel-server's own argument parser."""
    (server,) = workload_pod(documents(rendered[variant]), kind)["containers"]
    argv = server["command"][1:]
    args, unknown = cli.build_parser().parse_known_args(argv)
    assert unknown == []
    assert args.command == "run"
    assert args.listen == ("0.0.0.0", 8443)  # noqa: S104 - the pod's address
    assert str(args.data_dir) == "/var/lib/edgefleet"
    assert args.store == ("kubernetes" if variant == "ha" else "sqlite")
    if variant == "ha":
        assert args.namespace == NAMESPACE
        assert args.kubeconfig is None  # in-cluster

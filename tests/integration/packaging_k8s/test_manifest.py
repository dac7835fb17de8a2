"""The cluster agent's install manifest against a real kube-apiserver, and the RBAC it creates.

`tunnel-server token create --kind cluster --manifest` prints packaging/kubernetes/cluster-agent/
filled in; the API server validates it (server-side dry run), then it is applied for real and
`kubectl auth can-i --as` proves what the agent's service account and the three roles may do.
The control plane is this module's own: the manifest adds cluster-wide bindings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.harness import daemons, kube
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[3]
SA = "system:serviceaccount:edgefleet-system:cluster-agent"


def public_url(server_dir: Path) -> str:
    """The URL agents reach the server at, as ``run`` recorded it (``--public-name``, port)."""
    with contextlib.closing(sqlite3.connect(server_dir / "store.db")) as db:
        (url,) = db.execute("SELECT value FROM meta WHERE key = 'public_url'").fetchone()
    return str(url)


ROLES = ("edgefleet:admin", "edgefleet:operator", "edgefleet:viewer")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.ControlPlane]:
    """A control plane with the one controller that fills the aggregated roles.

    kine + kube-apiserver + kube-controller-manager running only clusterrole-aggregation:
    `view`, `edit` and `admin` have no rules until it has run.
    """
    workdir = tmp_path_factory.mktemp("kube-manifest")
    started = kube.start("manifest", workdir)
    controllers: ManagedProcess | None = None
    try:
        controllers = ManagedProcess(
            "kube-controller-manager[manifest]",
            [
                str(kube.kube_bin_dir() / "kube-controller-manager"),
                f"--kubeconfig={started.kubeconfig}",
                "--controllers=clusterrole-aggregation",
                "--leader-elect=false",
                "--secure-port=0",
            ],
            log_path=workdir / "kube-controller-manager.log",
        )

        def view_rules() -> int:
            assert controllers is not None
            controllers.check_running()
            status, body = started.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/view")
            return len(json.loads(body).get("rules") or []) if status == 200 else 0

        eventually(view_rules, lambda rules: rules > 0, what="rules in ClusterRole view")
        yield started
    finally:
        if controllers is not None:
            controllers.stop()
        started.stop()


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running tunnel server's data dir.

    The CLI's ``--data-dir`` shortcut reads the URL, CA and admin token there and talks to the
    API: management commands need a running server.
    """
    server = daemons.Server(workdir=tmp_path_factory.mktemp("tunnel-server"))
    server.start()
    try:
        yield server.data_dir
    finally:
        server.stop()


def tunnel_server(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(daemons.BIN / "tunnel-server"), *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def kubectl(
    plane: kube.ControlPlane, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kube.kube_bin_dir() / "kubectl"), "--kubeconfig", str(plane.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def can_i(plane: kube.ControlPlane, *args: str) -> str:
    done = kubectl(plane, "auth", "can-i", *args)
    # 0 = yes, 1 = no; anything else (or a message on stderr) is an error, not an answer.
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.strip()


def resource_args(resource: str) -> list[str]:
    """``pods/exec`` as `kubectl auth can-i` wants a sub-resource (``pods/x`` is a pod's name)."""
    kind, _, subresource = resource.partition("/")
    return [kind, f"--subresource={subresource}"] if subresource else [kind]


def agent_may(plane: kube.ControlPlane, resource: str, *, name: str, subresource: str = "") -> bool:
    """``impersonate`` on an authentication.k8s.io resource, by a SubjectAccessReview.

    `kubectl auth can-i` cannot ask this: it resolves resources by discovery, and userextras
    and uids are no API resources (it warns and asks about something else).
    """
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": SA,
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:edgefleet-system",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": "impersonate",
                "group": "authentication.k8s.io",
                "resource": resource,
                "subresource": subresource,
                "name": name,
            },
        },
    }
    done = kubectl(plane, "create", "-o", "json", "-f", "-", stdin=json.dumps(review))
    assert done.returncode == 0, done.stderr
    allowed: bool = json.loads(done.stdout)["status"].get("allowed", False)
    return allowed


def manifest(server_dir: Path, name: str, *extra: str) -> str:
    done = tunnel_server(
        server_dir, "token", "create", "--kind", "cluster", "--name", name, "--manifest", *extra
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def documents(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


@pytest.fixture(scope="module")
def applied(plane: kube.ControlPlane, server_dir: Path) -> str:
    """The manifest of cluster ``member-1``, checked by a server-side dry run, then applied."""
    text = manifest(server_dir, "member-1")
    # A server-side dry run of namespaced objects needs their namespace to exist (the
    # NamespaceLifecycle admission plugin runs in a dry run too, and a dry-run namespace is
    # never created), so the namespace goes first, as `kubectl apply` of the whole stream does.
    namespace = [d for d in text.split("\n---\n") if "kind: Namespace" in d]
    assert len(namespace) == 1
    done = kubectl(plane, "apply", "-f", "-", stdin=namespace[0])
    assert done.returncode == 0, done.stderr
    dry = kubectl(plane, "apply", "--dry-run=server", "-f", "-", stdin=text)
    assert dry.returncode == 0, dry.stderr
    assert "(server dry run)" in dry.stdout
    # The dry run wrote nothing.
    absent = kubectl(plane, "get", "clusterrole", "edgefleet:cluster-agent")
    assert absent.returncode != 0
    assert "NotFound" in absent.stderr
    done = kubectl(plane, "apply", "-f", "-", stdin=text)
    assert done.returncode == 0, done.stderr
    return text


def test_the_manifest_carries_the_token_server_and_ca_hash(applied: str, server_dir: Path) -> None:
    objects = documents(applied)
    secret = objects["Secret", "cluster-agent-join"]["stringData"]
    ca_hash = tunnel_server(server_dir, "ca-hash").stdout.strip()
    assert secret["name"] == "member-1"
    assert secret["server"] == public_url(server_dir)
    assert secret["ca-hash"] == ca_hash
    listed = tunnel_server(server_dir, "token", "list").stdout
    token_id = secret["token"].split(".")[0]
    row = next(line.split() for line in listed.splitlines() if line.startswith(token_id))
    assert row[1:4] == ["cluster", "member-1", "valid"]


def test_the_agent_may_impersonate_exactly_the_three_roles(
    plane: kube.ControlPlane, applied: str
) -> None:
    assert applied
    for role in ROLES:
        assert can_i(plane, f"--as={SA}", "impersonate", f"users/{role}") == "yes"
        assert can_i(plane, f"--as={SA}", "impersonate", f"groups/{role}") == "yes"
    # The extra's value (the cloud user's name) is any name: it names, it grants nothing.
    for value in ("alice", "bob%40example.com"):
        assert agent_may(plane, "userextras", subresource="user.edgefleet.io", name=value)
    for user in ("admin", "someone-else", "system:admin", "edgefleet:admin2", "edgefleet:"):
        assert can_i(plane, f"--as={SA}", "impersonate", f"users/{user}") == "no", user
    for group in ("system:masters", "system:authenticated", "edgefleet:admins", "system:nodes"):
        assert can_i(plane, f"--as={SA}", "impersonate", f"groups/{group}") == "no", group
    assert can_i(plane, f"--as={SA}", "impersonate", "serviceaccounts", "-A") == "no"
    assert not agent_may(plane, "uids", name="admin-uid")
    for key in ("scopes", "user.edgefleet.io2", "authentication.kubernetes.io/node-name"):
        assert not agent_may(plane, "userextras", subresource=key, name="x"), key


def test_the_agent_reads_cluster_status_and_nothing_else(
    plane: kube.ControlPlane, applied: str
) -> None:
    assert applied
    for resource in ("pods", "nodes"):
        for verb in ("get", "list", "watch"):
            assert can_i(plane, f"--as={SA}", verb, resource, "-A") == "yes", (verb, resource)
    for url in ("/version", "/readyz", "/livez"):
        assert can_i(plane, f"--as={SA}", "get", url) == "yes", url
    refused = [
        ("delete", "pods"),
        ("create", "pods"),
        ("create", "pods/exec"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("get", "configmaps"),
        ("patch", "nodes"),
        ("get", "nodes/proxy"),
        ("create", "nodes/proxy"),
        ("create", "serviceaccounts/token"),
        ("escalate", "clusterroles"),
        ("bind", "clusterroles"),
    ]
    for verb, resource in refused:
        answer = can_i(plane, f"--as={SA}", verb, *resource_args(resource), "-A")
        assert answer == "no", (verb, resource)


def test_works_are_applied_as_edgefleet_work_which_may_do_what_its_binding_gives(
    plane: kube.ControlPlane, applied: str
) -> None:
    """15-works-rbac.yaml: the agent may act as edgefleet:work, which is cluster-admin."""
    assert applied
    assert can_i(plane, f"--as={SA}", "impersonate", "users/edgefleet:work") == "yes"
    assert can_i(plane, f"--as={SA}", "impersonate", "groups/edgefleet:work") == "yes"
    assert can_i(plane, "--as=edgefleet:work", "create", "deployments.apps", "-A") == "yes"
    # Its own service account still may not write: only the impersonated user may.
    assert can_i(plane, f"--as={SA}", "create", "deployments.apps", "-A") == "no"


@pytest.mark.parametrize(
    ("role", "allowed", "refused"),
    [
        (
            "edgefleet:viewer",
            [("get", "pods"), ("list", "deployments.apps"), ("watch", "pods")],
            [("delete", "pods"), ("create", "pods/exec"), ("get", "secrets"), ("create", "pods")],
        ),
        (
            "edgefleet:operator",
            [
                ("delete", "pods"),
                ("create", "pods/exec"),
                ("get", "pods/exec"),
                ("create", "pods/portforward"),
                ("get", "pods/log"),
            ],
            [("create", "clusterrolebindings"), ("delete", "nodes"), ("create", "roles")],
        ),
        (
            "edgefleet:admin",
            [("create", "clusterrolebindings"), ("delete", "nodes"), ("get", "secrets")],
            [],
        ),
    ],
)
def test_each_role_gets_what_its_binding_gives(
    plane: kube.ControlPlane,
    applied: str,
    role: str,
    allowed: list[tuple[str, str]],
    refused: list[tuple[str, str]],
) -> None:
    """As the cloud impersonates: the role as user and as group (the group carries the grant)."""
    assert applied
    who = (f"--as={role}", f"--as-group={role}")
    for verb, resource in allowed:
        answer = can_i(plane, *who, verb, *resource_args(resource), "-n", "default")
        assert answer == "yes", (verb, resource)
    for verb, resource in refused:
        answer = can_i(plane, *who, verb, *resource_args(resource), "-n", "default")
        assert answer == "no", (verb, resource)
    # The user name alone grants nothing: only the group is bound.
    assert can_i(plane, f"--as={role}", "get", "pods", "-n", "default") == "no"


def test_the_deployment_runs_restricted_and_probes_the_local_api(applied: str) -> None:
    objects = documents(applied)
    config_map = objects["ConfigMap", "cluster-agent-config"]["data"]["edge-agent.toml"]
    config = tomllib.loads(config_map)
    assert config["cluster"]["in_cluster"] is True
    deployment = objects["Deployment", "cluster-agent"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cluster-agent"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (agent,) = pod["containers"]
    for container in [agent, *pod["initContainers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["image"] == "localhost/edgefleet:0.1.0"
    # The probe reaches the local API on the pod's address: it listens there, on that port.
    probe = agent["readinessProbe"]["httpGet"]
    assert probe["path"] == "/readyz"
    port = next(p for p in agent["ports"] if p["name"] == probe["port"])["containerPort"]
    assert config["local_api"] == {"host": "0.0.0.0", "port": port}  # noqa: S104 - the pod's
    # The identity outlives the pod: the data dir is on the claim, not in the container.
    claim = objects["PersistentVolumeClaim", "cluster-agent-state"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = next(m for m in agent["volumeMounts"] if m["mountPath"] == "/var/lib/edgefleet")
    assert volumes[state["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "--data-dir" in agent["command"]
    assert agent["command"][agent["command"].index("--data-dir") + 1] == "/var/lib/edgefleet"


def test_image_option_and_refusals(server_dir: Path) -> None:
    done = tunnel_server(
        server_dir,
        *("token", "create", "--kind", "cluster", "--name", "member-2", "--manifest"),
        *("--image", "registry.example.com/edgefleet:0.1.0"),
    )
    assert done.returncode == 0, done.stderr
    assert "# in cluster member-2, before " in done.stderr  # how to apply it, on stderr
    text = done.stdout
    pod = documents(text)["Deployment", "cluster-agent"]["spec"]["template"]["spec"]
    assert {c["image"] for c in [*pod["containers"], *pod["initContainers"]]} == {
        "registry.example.com/edgefleet:0.1.0"
    }
    before = tunnel_server(server_dir, "token", "list").stdout
    # The CLI refuses what it can tell alone (exit 2); the server checks the image (a 400: 1).
    for args, message, rc in [
        (("--kind", "node", "--name", "n1", "--manifest"), "give --kind cluster", 2),
        (("--kind", "cluster", "--name", "c1", "--image", "x"), "--image goes with --manifest", 2),
        (
            ("--kind", "cluster", "--name", "c1", "--manifest", "--image", 'evil"\nkind: Pod'),
            "image reference",
            1,
        ),
        (("--kind", "cluster", "--name", "c1", "--manifest", "--image", "a" * 600), "image", 1),
    ]:
        done = tunnel_server(server_dir, "token", "create", *args)
        assert done.returncode == rc, (args, done.stderr)
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout == ""
    # Nothing was made for a refused command.
    assert tunnel_server(server_dir, "token", "list").stdout == before


def test_the_wheel_carries_the_manifests() -> None:
    """pyproject.toml puts the YAML files into the wheel where the manifest module looks."""
    from tunnel_server.fleet import manifest as module  # noqa: PLC0415 - the module under test

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    forced = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert forced["packaging/kubernetes/cluster-agent"] == f"tunnel_server/fleet/{module.PACKAGED}"
    assert module.SOURCE == REPO / "packaging" / "kubernetes" / "cluster-agent"
    assert [f.name for f in module.manifest_files()] == sorted(
        p.name for p in module.SOURCE.glob("*.yaml")
    )


def _pod_path(text: str, mounts: dict[str, Path]) -> str:
    """The pod's paths as the local folders standing in for its volumes (in one pass)."""
    pattern = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    return re.sub(pattern, lambda match: str(mounts[match[0]]), text)


def _pod_volumes(
    plane: kube.ControlPlane, objects: dict[tuple[str, str], dict[str, Any]], root: Path
) -> tuple[dict[str, Path], int]:
    """Folders for the agent container's mounts, the ConfigMap in its folder.

    The config listens on a free port and names a service account folder holding a real token
    of the manifest's service account.
    """
    pod = objects["Deployment", "cluster-agent"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: root / m["name"] for m in container["volumeMounts"]}
    for folder in mounts.values():
        folder.mkdir(parents=True)
    port = free_port()
    sa_dir = root / "serviceaccount"
    sa_dir.mkdir()
    config = objects["ConfigMap", "cluster-agent-config"]["data"]["edge-agent.toml"]
    config = config.replace(
        "in_cluster = true", f'in_cluster = true\nservice_account_dir = "{sa_dir}"'
    ).replace("port = 10267", f"port = {port}")
    (mounts["/etc/edgefleet"] / "edge-agent.toml").write_text(config)
    token = kubectl(plane, "create", "token", "cluster-agent", "-n", "edgefleet-system")
    assert token.returncode == 0, token.stderr
    (sa_dir / "token").write_text(token.stdout.strip())
    (sa_dir / "ca.crt").write_bytes(plane.ca_path.read_bytes())
    return mounts, port


def test_the_pod_joins_once_then_serves_its_cluster(
    plane: kube.ControlPlane, applied: str, tmp_path: Path
) -> None:
    """The Deployment's own commands, config and probe, run as the kubelet would run them.

    There is no kubelet here, so the pod's volumes are folders and its service account is
    a folder with a real token of the manifest's service account (``service_account_dir``);
    ``KUBERNETES_SERVICE_HOST``/``_PORT`` name the real API server, as in a pod.
    """
    assert applied  # the RBAC is in place
    server = daemons.Server(workdir=tmp_path)
    server.start()
    agent: ManagedProcess | None = None
    try:
        objects = documents(
            server.cli("token", "create", "--kind", "cluster", "--name", "pod-1", "--manifest")
        )
        secret = objects["Secret", "cluster-agent-join"]["stringData"]
        pod = objects["Deployment", "cluster-agent"]["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        (container,) = pod["containers"]
        mounts, port = _pod_volumes(plane, objects, tmp_path / "pod")
        env = {
            **os.environ,
            "PATH": f"{daemons.BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(plane.port),
        }
        env |= {e["name"]: secret[e["valueFrom"]["secretKeyRef"]["key"]] for e in init["env"]}

        # The init container joins the first time, and only the first time: the token is
        # single-use, and the identity on the volume is what every later start uses.
        init_argv = [_pod_path(part, mounts) for part in init["command"]]
        for attempt in ("joins", "skips"):
            done = subprocess.run(
                init_argv, env=env, capture_output=True, text=True, timeout=120, check=False
            )
            assert done.returncode == 0, (attempt, done.stdout, done.stderr)
            assert (mounts["/var/lib/edgefleet"] / "identity.json").is_file()
            if attempt == "skips":
                assert "already joined" in done.stdout
        identity = json.loads((mounts["/var/lib/edgefleet"] / "identity.json").read_text())
        assert (identity["name"], identity["kind"]) == ("pod-1", "cluster")

        argv = [_pod_path(part, mounts) for part in container["command"]]
        argv[0] = str(daemons.BIN / argv[0])
        agent = ManagedProcess(
            "edge-agent[pod-1]",
            argv,
            log_path=tmp_path / "agent.log",
            env={
                k: env[k]
                for k in ("PYTHONPATH", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
            },
        )
        probe = container["readinessProbe"]["httpGet"]

        def ready() -> int:
            assert agent is not None
            agent.check_running()
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}{probe['path']}", timeout=5
            ) as answer:
                return int(answer.status)

        eventually(ready, lambda status: status == 200, what="the probe", ignore=(OSError,))
        # The kubelet probes the pod's address, not its loopback: the API listens on all.
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process(agent.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert ("0.0.0.0", port) in listening, listening  # noqa: S104 - what the pod needs

        # Through the cloud, as its admin: the member's RBAC as the manifest made it.
        cloud = write_kubeconfig(
            tmp_path / "cloud.kubeconfig",
            server=f"{server.url}/clusters/pod-1",
            token=server.admin_token,
            ca=server.data_dir / "ca.crt",
        )
        whoami = eventually(
            lambda: _kubectl_at(cloud, "auth", "whoami", "-o", "json"),
            lambda done: done.returncode == 0,
            what="the cluster through the cloud proxy",
        )
        user = json.loads(whoami.stdout)["status"]["userInfo"]
        assert user["username"] == "edgefleet:admin"
        assert "edgefleet:admin" in user["groups"]
        # The manifest's status RBAC is all the agent's cluster status report needs.
        status = eventually(
            lambda: json.loads(server.get("/api/v1/clusters/pod-1", token=server.admin_token)[1]),
            lambda body: body.get("version") == kube.KUBE_VERSION,
            what="the cluster's status report",
        )
        assert status["connected"] is True
        assert status["apiserverHealthy"] is True
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def _kubectl_at(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kube.kube_bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_kubeconfig(path: Path, *, server: str, token: str, ca: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path

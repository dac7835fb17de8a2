"""Registered member clusters for the cluster proxy tests.

Each is a real control plane, a cluster-mode ``edge-agent`` process joined with a cluster
token, and ``kubectl`` through the cloud.

The agent reaches its member with a ServiceAccount token whose RBAC is the one docs/clusters.md
gives: impersonate exactly ``edgefleet:admin|operator|viewer`` (users and groups) and the
``user.edgefleet.io`` extra, plus what its status needs. The member binds the three groups to
``cluster-admin``, ``edit`` and ``view``.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.harness import kube
from tests.harness.daemons import Agent, Server, TomlValue

NAMESPACE = "edgefleet-system"
SERVICE_ACCOUNT = "edgefleet-agent"

AGENT_RBAC = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {SERVICE_ACCOUNT}, namespace: {NAMESPACE}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "edgefleet:agent"}}
rules:
- apiGroups: [""]
  resources: [users, groups]
  verbs: [impersonate]
  resourceNames: ["edgefleet:admin", "edgefleet:operator", "edgefleet:viewer"]
- apiGroups: [authentication.k8s.io]
  resources: [userextras/user.edgefleet.io]
  verbs: [impersonate]
- apiGroups: [""]
  resources: [nodes, pods]
  verbs: [get, list, watch]
- nonResourceURLs: [/version, /readyz, /livez]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "edgefleet:agent"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "edgefleet:agent"}}
subjects:
- {{kind: ServiceAccount, name: {SERVICE_ACCOUNT}, namespace: {NAMESPACE}}}
""" + "".join(
    f"""---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "edgefleet:{role}"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {target}}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "edgefleet:{role}"}}
"""
    for role, target in (("admin", "cluster-admin"), ("operator", "edit"), ("viewer", "view"))
)


def kubectl_path() -> Path:
    return kube.kube_bin_dir() / "kubectl"


def run_kubectl(
    kubeconfig: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``kubectl --kubeconfig K args``; a loud error with its stderr unless ``check=False``."""
    done = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


def write_kubeconfig(
    path: Path, *, server: str, token: str, ca: Path, name: str = "edgefleet"
) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "user"}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def prepare_member(plane: kube.ControlPlane) -> str:
    """Apply the agent's RBAC and the role bindings; the agent's ServiceAccount token."""
    run_kubectl(plane.kubeconfig, "apply", "-f", "-", stdin=AGENT_RBAC)
    token = run_kubectl(
        plane.kubeconfig,
        "create",
        "token",
        SERVICE_ACCOUNT,
        "-n",
        NAMESPACE,
        "--duration=2h",
    ).stdout.strip()
    assert token
    return token


@dataclass(kw_only=True)
class ClusterAgent(Agent):
    """An ``edge-agent`` in cluster mode, joined with a cluster token."""

    kind: str = "cluster"
    plane: kube.ControlPlane | None = None
    agent_token: str = ""
    interval: float = 2.0
    cluster_table: dict[str, TomlValue] = field(default_factory=dict)
    serve_cluster: bool = True
    """False: run without ``[cluster]`` (a cluster identity that serves no API server)."""

    def member_kubeconfig(self) -> Path:
        assert self.plane is not None
        return write_kubeconfig(
            self.workdir / f"member-{self.name}.kubeconfig",
            server=self.plane.url,
            token=self.agent_token,
            ca=self.plane.ca_path,
        )

    def write_config(self) -> Path:
        if not self.serve_cluster:
            return super().write_config()
        self.tables["cluster"] = {
            "kubeconfig": str(self.member_kubeconfig()),
            "interval": self.interval,
            **self.cluster_table,
        }
        return super().write_config()


@dataclass(kw_only=True)
class Member:
    """One registered cluster as the tests use it."""

    name: str
    plane: kube.ControlPlane
    agent: ClusterAgent
    kubeconfig: Path
    """kubectl through the cloud proxy, as the cloud's admin."""

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl through the cloud proxy."""
        return run_kubectl(self.kubeconfig, *args, stdin=stdin, check=check)

    def direct(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl straight to the member, as its own admin (what happened there)."""
        return run_kubectl(self.plane.kubeconfig, *args, stdin=stdin, check=check)


def proxy_kubeconfig(path: Path, server: Server, cluster: str, *, token: str | None = None) -> Path:
    return write_kubeconfig(
        path,
        server=f"{server.url}/clusters/{cluster}",
        token=token or server.admin_token,
        ca=server.data_dir / "ca.crt",
        name=cluster,
    )


def register(
    server: Server, plane: kube.ControlPlane, name: str, workdir: Path, *, interval: float = 2.0
) -> Member:
    """Join and start a cluster agent for ``plane``; wait until it is connected and ready."""
    agent = ClusterAgent(
        name=name,
        workdir=workdir,
        server=server,
        plane=plane,
        agent_token=prepare_member(plane),
        interval=interval,
    )
    agent.join()
    agent.start()
    agent.wait_ready()
    agent.wait_connected()
    return Member(
        name=name,
        plane=plane,
        agent=agent,
        kubeconfig=proxy_kubeconfig(workdir / f"cloud-{name}.kubeconfig", server, name),
    )


def whoami(member: Member, kubeconfig: Path | None = None) -> dict[str, object]:
    out = run_kubectl(kubeconfig or member.kubeconfig, "auth", "whoami", "-o", "json").stdout
    status: dict[str, object] = json.loads(out)["status"]["userInfo"]
    return status

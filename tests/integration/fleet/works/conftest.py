"""A real member cluster and a ``WorkApplier`` driven directly against it.

The member runs kube-apiserver, kube-scheduler, kube-controller-manager and kwok nodes; the
applier reaches it through the agent's own ``MemberApi``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cluster import credentials
from edge_agent.cluster.member_api import MemberApi, open_member_api
from edge_agent.cluster.settings import ClusterSettings
from edge_agent.cluster.works import WorkApplier, WorkSettings
from tests.harness import member
from tests.harness.waiting import eventually_async

API_VERSION = "fleet.edgefleet.io/v1alpha1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[member.MemberCluster]:
    with member.running_member("works", tmp_path_factory.mktemp("member-works"), nodes=2) as m:
        yield m


@pytest.fixture
def namespace(cluster: member.MemberCluster) -> Iterator[str]:
    name = f"w-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
async def api(cluster: member.MemberCluster) -> AsyncIterator[MemberApi]:
    settings = ClusterSettings(kubeconfig=cluster.kubeconfig)
    async with open_member_api(credentials=credentials.load(settings), settings=settings) as client:
        yield client


@dataclass
class Agent:
    """An applier, its folder, and every status it reported, in order."""

    api: MemberApi
    state_dir: Path
    settings: WorkSettings
    reports: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    applier: WorkApplier = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A new applier on the same folder, as after an agent restart."""
        self.applier = WorkApplier(api=self.api, state_dir=self.state_dir, settings=self.settings)
        self.applier.on_status(lambda *report: self.reports.append(report))

    async def until(
        self,
        name: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        what: str,
        within: float = 120.0,
    ) -> dict[str, Any]:
        """Resync until work ``name``'s status passes ``check``; that status."""

        async def probe() -> dict[str, Any]:
            await self.applier.resync()
            return self.applier.status(name) or {}

        return await eventually_async(probe, check, what=what, within=within, every=0.5)


@pytest.fixture
def agent(api: MemberApi, tmp_path: Path) -> Agent:
    return Agent(api=api, state_dir=tmp_path / "works", settings=WorkSettings())


def work(
    name: str,
    manifests: list[dict[str, Any]],
    *,
    version: int = 1,
    configs: list[dict[str, Any]] | None = None,
    delete: str | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterName": "works", "workload": {"manifests": manifests}}
    if configs:
        spec["manifestConfigs"] = configs
    if delete:
        spec["deleteOption"] = {"propagationPolicy": delete}
    return {
        "apiVersion": API_VERSION,
        "kind": "Work",
        "metadata": {
            "name": name,
            "resourceVersion": str(version),
            "generation": generation or version,
        },
        "spec": spec,
    }


def config_map(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def deployment(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "example/app:1"}]},
            },
        },
    }


def cond(status: dict[str, Any], kind: str, ordinal: int | None = None) -> dict[str, Any]:
    """A condition of the work (``ordinal`` None) or of one of its manifests."""
    if ordinal is None:
        conditions = status.get("conditions", [])
    else:
        manifests = status.get("resourceStatus", {}).get("manifests", [])
        conditions = next(
            (m["conditions"] for m in manifests if m["resourceMeta"]["ordinal"] == ordinal), []
        )
    return next((c for c in conditions if c["type"] == kind), {})


def is_true(status: dict[str, Any], kind: str, ordinal: int | None = None) -> bool:
    return cond(status, kind, ordinal).get("status") == "True"


def feedback_of(status: dict[str, Any], ordinal: int) -> dict[str, Any]:
    manifests = status["resourceStatus"]["manifests"]
    entry = next(m for m in manifests if m["resourceMeta"]["ordinal"] == ordinal)
    values = entry.get("statusFeedback", {}).get("values", [])
    return {v["name"]: v["fieldValue"] for v in values}


def get(cluster: member.MemberCluster, *args: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return answer


def exists(cluster: member.MemberCluster, *args: str) -> bool:
    return cluster.kubectl("get", *args, "--ignore-not-found", "-o", "name").stdout.strip() != ""

"""The cluster agent's WorkApplier against a real member cluster (issue 14, "Work").

Deployments become Available through the real controller manager's ReplicaSets and pods that
kwok runs; the API server's own refusals, conflicts and field managers decide the rest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cluster.member_api import MemberApi, MemberApiError
from edge_agent.cluster.works import WorkApplier, WorkError, WorkSettings
from tests.harness import member
from tests.harness.waiting import eventually, eventually_async
from tests.integration.fleet.works.conftest import (
    Agent,
    cond,
    config_map,
    deployment,
    exists,
    feedback_of,
    get,
    is_true,
    work,
)

pytestmark = [pytest.mark.kube, pytest.mark.timeout(360)]


async def test_a_deployment_becomes_available_with_feedback_and_a_hand_edit_is_put_back(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    configs = [
        {
            "resourceIdentifier": {
                "group": "apps",
                "resource": "deployments",
                "namespace": namespace,
                "name": "web",
            },
            "feedbackRules": [
                {"type": "WellKnownStatus"},
                {
                    "type": "JSONPaths",
                    "jsonPaths": [
                        {
                            "name": "available",
                            "path": '.status.conditions[?(@.type=="Available")].status',
                        }
                    ],
                },
            ],
        }
    ]
    document = work("web", [deployment("web", namespace, 2)], configs=configs)
    await agent.applier.set_work(document)
    assert agent.applier.works() == {"web": 1}
    first = agent.reports[0][2]
    assert is_true(first, "Applied")
    status = await agent.until(
        "web", lambda s: is_true(s, "Available"), what="the Deployment Available"
    )
    assert feedback_of(status, 0)["readyReplicas"] == {"type": "Integer", "integer": 2}
    assert feedback_of(status, 0)["available"] == {"type": "String", "string": "True"}
    assert cond(status, "Progressing")["status"] == "False"
    assert cond(status, "Degraded")["status"] == "False"
    assert status["resourceStatus"]["manifests"][0]["resourceMeta"] == {
        "ordinal": 0,
        "group": "apps",
        "version": "v1",
        "kind": "Deployment",
        "resource": "deployments",
        "namespace": namespace,
        "name": "web",
    }
    # Nothing changes in the cluster: a resync reports nothing new.
    reported = len(agent.reports)
    await agent.applier.resync()
    assert len(agent.reports) == reported
    assert agent.reports[-1][:2] == ("web", 1)

    cluster.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=4")
    await agent.until(
        "web",
        lambda s: "put back" in cond(s, "Applied", 0).get("message", ""),
        what="the hand edit put back",
    )
    assert get(cluster, "deployment/web", "-n", namespace)["spec"]["replicas"] == 2
    assert is_true(agent.applier.status("web") or {}, "Applied")


async def test_a_refused_manifest_is_degraded_with_the_api_servers_message_others_applied(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    bad_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": {"ports": [{"port": 70000}]},
    }
    manifests = [
        config_map("before", namespace, a="1"),
        bad_service,
        config_map("after", namespace),
    ]
    await agent.applier.set_work(work("refused", manifests))
    status = agent.applier.status("refused") or {}
    applied = cond(status, "Applied", 1)
    assert (applied["status"], applied["reason"]) == ("False", "Refused")
    assert "spec.ports[0].port: Invalid value: 70000" in applied["message"]
    assert cond(status, "Degraded", 1)["message"] == applied["message"]
    assert is_true(status, "Applied", 0)
    assert is_true(status, "Applied", 2)
    assert exists(cluster, "configmap/before", "-n", namespace)
    assert exists(cluster, "configmap/after", "-n", namespace)
    assert not exists(cluster, "service/bad", "-n", namespace)
    assert cond(status, "Applied")["status"] == "False"
    assert is_true(status, "Degraded")
    assert "Service" in cond(status, "Degraded")["message"]
    assert "Invalid value" in cond(status, "Degraded")["message"]


async def test_a_conflict_with_another_applier_is_reported_and_forced(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    await agent.applier.set_work(work("shared", [config_map("shared", namespace, key="ours")]))
    assert is_true(agent.applier.status("shared") or {}, "Applied")
    # Another declarative owner (server-side apply by "gitops") takes the field.
    theirs = config_map("shared", namespace, key="theirs")
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=gitops",
        "-f",
        "-",
        stdin=json.dumps(theirs),
    )
    await agent.applier.resync()
    status = agent.applier.status("shared") or {}
    applied = cond(status, "Applied", 0)
    assert (applied["status"], applied["reason"]) == ("False", "Conflict")
    assert 'conflict with "gitops"' in applied["message"]
    assert get(cluster, "configmap/shared", "-n", namespace)["data"] == {"key": "theirs"}

    forced = [
        {
            "resourceIdentifier": {
                "resource": "configmaps",
                "namespace": namespace,
                "name": "shared",
            },
            "updateStrategy": {"type": "ServerSideApply", "serverSideApply": {"force": True}},
        }
    ]
    await agent.applier.set_work(
        work("shared", [config_map("shared", namespace, key="ours")], version=2, configs=forced)
    )
    assert is_true(agent.applier.status("shared") or {}, "Applied")
    assert get(cluster, "configmap/shared", "-n", namespace)["data"] == {"key": "ours"}


def strategy(namespace: str, name: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceIdentifier": {"resource": "configmaps", "namespace": namespace, "name": name},
        "updateStrategy": {"type": kind},
        **extra,
    }


async def test_update_create_only_and_read_only(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    cluster.kubectl("create", "configmap", "theirs", "-n", namespace, "--from-literal=x=42")
    configs = [
        strategy(namespace, "updated", "Update"),
        strategy(namespace, "created", "CreateOnly"),
        strategy(
            namespace,
            "theirs",
            "ReadOnly",
            feedbackRules=[{"type": "JSONPaths", "jsonPaths": [{"name": "x", "path": ".data.x"}]}],
        ),
        strategy(namespace, "absent", "ReadOnly"),
    ]
    manifests = [
        config_map("updated", namespace, v="1"),
        config_map("created", namespace, v="1"),
        config_map("theirs", namespace, x="ignored"),
        config_map("absent", namespace),
    ]
    await agent.applier.set_work(work("strategies", manifests, configs=configs))
    status = agent.applier.status("strategies") or {}
    assert [cond(status, "Applied", i)["reason"] for i in range(4)] == [
        "AppliedManifestComplete",
        "AppliedManifestComplete",
        "ReadOnly",
        "ReadOnly",
    ]
    assert feedback_of(status, 2) == {"x": {"type": "String", "string": "42"}}
    assert cond(status, "Available", 3)["reason"] == "ResourceNotFound"
    assert not exists(cluster, "configmap/absent", "-n", namespace)

    for name in ("updated", "created", "theirs"):
        cluster.kubectl(
            "patch", f"configmap/{name}", "-n", namespace, "-p", '{"data":{"v":"hand"}}'
        )
    await agent.applier.resync()
    # Update replaces the object as the work says; CreateOnly and ReadOnly leave it.
    assert get(cluster, "configmap/updated", "-n", namespace)["data"] == {"v": "1"}
    assert get(cluster, "configmap/created", "-n", namespace)["data"] == {"v": "hand"}
    assert get(cluster, "configmap/theirs", "-n", namespace)["data"] == {"x": "42", "v": "hand"}

    # A ReadOnly resource is never deleted with its work.
    await agent.applier.delete_work("strategies", propagation="Foreground")
    assert not exists(cluster, "configmap/updated", "-n", namespace)
    assert not exists(cluster, "configmap/created", "-n", namespace)
    assert exists(cluster, "configmap/theirs", "-n", namespace)


async def test_delete_foreground_removes_orphan_keeps_and_dropped_manifests_go(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    await agent.applier.set_work(
        work("fg", [config_map("fg-a", namespace), config_map("fg-b", namespace)])
    )
    await agent.applier.set_work(work("orphan", [config_map("or-a", namespace)], delete="Orphan"))
    assert exists(cluster, "configmap/fg-b", "-n", namespace)

    # A manifest dropped from a work is deleted with it (Foreground).
    await agent.applier.set_work(work("fg", [config_map("fg-a", namespace)], version=2))
    assert not exists(cluster, "configmap/fg-b", "-n", namespace)
    assert exists(cluster, "configmap/fg-a", "-n", namespace)

    await agent.applier.delete_work("fg", propagation="Foreground")
    await agent.applier.delete_work("orphan", propagation="Orphan")
    assert not exists(cluster, "configmap/fg-a", "-n", namespace)
    assert exists(cluster, "configmap/or-a", "-n", namespace)
    assert agent.applier.works() == {}
    assert list(agent.state_dir.iterdir()) == []
    assert agent.applier._locks == {}  # works that came and went leave no lock behind


async def test_a_work_deleted_while_the_agent_was_away_keeps_its_own_orphan_policy(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    await agent.applier.set_work(
        work("away-orphan", [config_map("ao", namespace)], delete="Orphan")
    )
    await agent.applier.set_work(work("away-fg", [config_map("af", namespace)]))
    agent.restart()
    # The hub deleted both meanwhile; it no longer knows their policies, so it sends none.
    await agent.applier.delete_work("away-orphan", propagation=None)
    await agent.applier.delete_work("away-fg", propagation=None)
    assert exists(cluster, "configmap/ao", "-n", namespace)
    assert not exists(cluster, "configmap/af", "-n", namespace)
    assert agent.applier.works() == {}


async def test_a_restarted_applier_keeps_its_works_without_recreating_them(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    await agent.applier.set_work(
        work("kept", [config_map("kept", namespace, a="1"), deployment("kept", namespace, 1)])
    )
    before = get(cluster, "configmap/kept", "-n", namespace)["metadata"]
    deploy = get(cluster, "deployment/kept", "-n", namespace)["metadata"]
    reported = len(agent.reports)

    agent.restart()
    assert agent.applier.works() == {"kept": 1}
    assert agent.applier.status("kept") == agent.reports[-1][2]
    await agent.applier.resync()
    after = get(cluster, "configmap/kept", "-n", namespace)["metadata"]
    assert (after["uid"], after["resourceVersion"]) == (before["uid"], before["resourceVersion"])
    assert get(cluster, "deployment/kept", "-n", namespace)["metadata"]["uid"] == deploy["uid"]

    # Removed by hand while the agent was away: put back by the next resync.
    cluster.kubectl("delete", "configmap/kept", "-n", namespace)
    await agent.applier.resync()
    assert get(cluster, "configmap/kept", "-n", namespace)["data"] == {"a": "1"}
    assert len(agent.reports) >= reported

    # A new version of the work with the same spec (labels changed at the hub) is reported
    # with its new resourceVersion even though the status is the same.
    again = work(
        "kept",
        [config_map("kept", namespace, a="1"), deployment("kept", namespace, 1)],
        version=2,
        generation=1,
    )
    await agent.applier.set_work(again)
    assert agent.reports[-1][:2] == ("kept", 2)


async def test_a_crd_and_its_custom_resource_in_one_work(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    group = f"{namespace}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gizmos.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
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
    gizmo = {
        "apiVersion": f"{group}/v1",
        "kind": "Gizmo",
        "metadata": {"name": "one", "namespace": namespace},
        "spec": {"size": 3},
    }
    # The custom resource comes first in the work: the applier orders CRDs before it.
    await agent.applier.set_work(work("crd", [gizmo, crd], delete="Foreground"))
    status = agent.applier.status("crd") or {}
    assert is_true(status, "Applied"), status["conditions"]
    assert get(cluster, f"gizmos.{group}/one", "-n", namespace)["spec"] == {"size": 3}
    await agent.applier.delete_work("crd", propagation="Foreground")
    # The CRD's own finalizer removes its custom resources first, then the CRD goes.
    eventually(
        lambda: not exists(cluster, f"crd/gizmos.{group}"),
        what="the CRD deleted with its work",
        within=60.0,
        every=0.5,
    )


async def test_an_unknown_kind_gets_a_clear_condition_and_bad_works_are_refused(
    cluster: member.MemberCluster, namespace: str, agent: Agent
) -> None:
    unknown = {
        "apiVersion": "nothing.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": namespace},
    }
    invalid = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}
    manifests = [unknown, invalid, config_map("fine", namespace)]
    await agent.applier.set_work(work("unknown", manifests))
    status = agent.applier.status("unknown") or {}
    first = cond(status, "Applied", 0)
    assert (first["reason"], first["message"]) == (
        "UnknownKind",
        "the member API server serves no kind Widget in nothing.example.com/v1",
    )
    assert cond(status, "Applied", 1)["reason"] == "InvalidManifest"
    assert is_true(status, "Applied", 2)
    assert exists(cluster, "configmap/fine", "-n", namespace)

    for bad in (
        {},
        {"metadata": {"name": "Bad_Name", "resourceVersion": "1"}},
        {"metadata": {"name": "x"}},
    ):
        with pytest.raises(WorkError):
            await agent.applier.set_work(bad)
    with pytest.raises(WorkError, match="at most"):
        await agent.applier.set_work(work("huge", [config_map("h", namespace, x="y" * 2_000_000)]))
    assert sorted(agent.applier.works()) == ["unknown"]


async def test_a_deployment_that_cannot_roll_out_becomes_degraded_after_the_delay(
    namespace: str, agent: Agent
) -> None:
    agent.settings = WorkSettings(degraded_after_seconds=2.0)
    agent.restart()
    stuck = deployment("stuck", namespace, 1)
    stuck["spec"]["template"]["spec"]["nodeSelector"] = {"no-such-node": "anywhere"}
    await agent.applier.set_work(work("stuck", [stuck]))
    first = agent.applier.status("stuck") or {}
    assert cond(first, "Degraded")["status"] == "False"
    assert is_true(first, "Applied")
    status = await agent.until(
        "stuck", lambda s: is_true(s, "Degraded"), what="the stuck Deployment Degraded"
    )
    degraded = cond(status, "Degraded", 0)
    assert (degraded["reason"], degraded["message"]) == (
        "ResourceNotReady",
        "0/1 available, 1/1 updated",
    )
    assert cond(status, "Available")["status"] == "False"
    assert is_true(status, "Progressing")


class Unplugged:
    """The member API client with a switch: while ``down`` no request gets an answer."""

    def __init__(self, api: MemberApi) -> None:
        self.api = api
        self.down = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        if self.down:
            raise MemberApiError(f"{method} {path}: connection refused (test)")
        return await self.api.request(
            method, path, body=body, content_type=content_type, headers=headers
        )


async def test_an_unreachable_api_server_keeps_the_last_status_and_deletes_wait(
    cluster: member.MemberCluster, namespace: str, api: MemberApi, tmp_path: Path
) -> None:
    plug = Unplugged(api)
    reports: list[str] = []
    applier = WorkApplier(api=plug, state_dir=tmp_path / "works", settings=WorkSettings())
    applier.on_status(lambda name, _version, _status: reports.append(name))
    await applier.set_work(work("gone", [config_map("gone", namespace)]))
    held = applier.status("gone")
    assert reports == ["gone"]

    plug.down = True
    await applier.resync()
    assert applier.status("gone") == held
    assert reports == ["gone"]
    await applier.delete_work("gone", propagation="Foreground")
    assert applier.works() == {}
    assert exists(cluster, "configmap/gone", "-n", namespace)
    assert (tmp_path / "works" / "gone.json").exists()  # the delete is still to do

    # A restart in between keeps the pending delete too.
    applier = WorkApplier(api=plug, state_dir=tmp_path / "works", settings=WorkSettings())
    plug.down = False
    await applier.resync()
    assert not exists(cluster, "configmap/gone", "-n", namespace)
    assert not (tmp_path / "works" / "gone.json").exists()


async def test_works_applied_by_impersonation_get_only_what_the_members_rbac_grants(
    cluster: member.MemberCluster, namespace: str, api: MemberApi, tmp_path: Path
) -> None:
    settings = WorkSettings(impersonate="edgefleet:work")
    applier = WorkApplier(api=api, state_dir=tmp_path / "works", settings=settings)
    await applier.set_work(work("limited", [config_map("limited", namespace)]))
    applied = cond(applier.status("limited") or {}, "Applied", 0)
    assert (applied["status"], applied["reason"]) == ("False", "Refused")
    assert 'User "edgefleet:work" cannot patch resource "configmaps"' in applied["message"]
    assert not exists(cluster, "configmap/limited", "-n", namespace)

    cluster.kubectl(
        "create",
        "rolebinding",
        "works",
        "-n",
        namespace,
        "--clusterrole=edit",
        "--user=edgefleet:work",
    )

    # The API server's authorizer sees a new RoleBinding a moment later (its informer).
    async def applied_now() -> dict[str, Any]:
        await applier.resync()
        return applier.status("limited") or {}

    await eventually_async(
        applied_now, lambda s: is_true(s, "Applied"), what="applied once bound", within=60.0
    )
    live = get(cluster, "configmap/limited", "-n", namespace, "--show-managed-fields")
    managers = live["metadata"]["managedFields"]
    assert [m["manager"] for m in managers] == ["edgefleet-work"]


async def test_the_resync_loop_puts_back_what_was_deleted_by_hand(
    cluster: member.MemberCluster, namespace: str, api: MemberApi, tmp_path: Path
) -> None:
    settings = WorkSettings(resync_seconds=1.0)
    applier = WorkApplier(api=api, state_dir=tmp_path / "works", settings=settings)
    await applier.set_work(work("looped", [config_map("looped", namespace, a="1")]))
    uid = get(cluster, "configmap/looped", "-n", namespace)["metadata"]["uid"]
    async with asyncio.TaskGroup() as group:
        loop = group.create_task(applier.run(), name="test.works-resync")
        cluster.kubectl("delete", "configmap/looped", "-n", namespace)

        async def recreated() -> str:
            found = await api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/looped")
            return (
                str((found[1] or {}).get("metadata", {}).get("uid", "")) if found[0] == 200 else ""
            )

        again = await eventually_async(
            recreated, lambda new: new not in ("", uid), what="the ConfigMap put back", within=60.0
        )
        loop.cancel()
    assert again != uid


async def test_a_job_is_available_once_complete_with_its_counts(
    namespace: str, agent: Agent
) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": namespace},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "example/job:1"}],
                }
            }
        },
    }
    configs = [
        {
            "resourceIdentifier": {
                "group": "batch",
                "resource": "jobs",
                "namespace": namespace,
                "name": "once",
            },
            "feedbackRules": [{"type": "WellKnownStatus"}],
        }
    ]
    await agent.applier.set_work(work("job", [job], configs=configs))
    assert cond(agent.applier.status("job") or {}, "Available")["status"] == "False"
    status = await agent.until("job", lambda s: is_true(s, "Available"), what="the Job complete")
    assert feedback_of(status, 0)["succeeded"] == {"type": "Integer", "integer": 1}
    assert cond(status, "Progressing")["status"] == "False"


async def test_many_works_at_once_are_all_applied_within_the_concurrency_bound(
    cluster: member.MemberCluster, namespace: str, api: MemberApi, tmp_path: Path
) -> None:
    in_flight = 0
    most = 0

    class Counting:
        async def request(
            self,
            method: str,
            path: str,
            *,
            body: object = None,
            content_type: str = "application/json",
            headers: Mapping[str, str] | None = None,
        ) -> tuple[int, Any]:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await api.request(
                    method, path, body=body, content_type=content_type, headers=headers
                )
            finally:
                in_flight -= 1

    settings = WorkSettings(concurrency=2)
    applier = WorkApplier(api=Counting(), state_dir=tmp_path / "works", settings=settings)
    documents = [work(f"many-{i}", [config_map(f"many-{i}", namespace)]) for i in range(12)]
    await asyncio.gather(*(applier.set_work(d) for d in documents))
    await asyncio.gather(applier.resync(), applier.set_work(documents[0]))
    assert sorted(applier.works()) == sorted(f"many-{i}" for i in range(12))
    assert all(is_true(applier.status(f"many-{i}") or {}, "Applied") for i in range(12))
    names = cluster.kubectl("get", "configmaps", "-n", namespace, "-o", "name").stdout.split()
    assert sum(n.startswith("configmap/many-") for n in names) == 12
    assert most == 2

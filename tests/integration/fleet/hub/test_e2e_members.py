"""The hub-managed fleet end to end: three real member clusters, their agents, the real server.

Each member is kine + kube-apiserver + kube-scheduler + kube-controller-manager + kwok nodes
(``tests.harness.fleet``); Deployments become Available through real ReplicaSets and pods
kwok runs. The hub controller places, rolls out and fails over; the agents apply through the
``fleet`` stream. Leases are renewed every 2 s, so a silent agent is Unknown after 10 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.fleet import Fleet, running_fleet
from tests.harness.waiting import eventually

pytestmark = pytest.mark.kube

UNREACHABLE = "fleet.edgefleet.io/unreachable"
LEASE_SECONDS = 2
WAIT = 120.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet-e2e"), lease_seconds=LEASE_SECONDS) as hub:
        hub.label_clusters(
            {"east": {"env": "prod"}, "west": {"env": "prod"}, "north": {"env": "dev"}},
            lease_seconds=LEASE_SECONDS,
        )
        yield hub


def _deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": "registry.example/web:1"}]},
            },
        },
    }


def _config_map(name: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"from": "the hub"},
    }


def _prod_placement(fleet: Fleet, name: str, **extra: Any) -> None:
    fleet.put(
        "Placement",
        name,
        {
            "predicates": [
                {"requiredClusterSelector": {"labelSelector": {"matchLabels": {"env": "prod"}}}}
            ],
            **extra,
        },
    )


def _condition(document: dict[str, Any] | None, type_: str) -> str | None:
    for condition in (document or {}).get("status", {}).get("conditions", []):
        if condition["type"] == type_:
            return str(condition["status"])
    return None


def _ready_replicas(work: dict[str, Any]) -> int | None:
    manifests = work.get("status", {}).get("resourceStatus", {}).get("manifests", [])
    for manifest in manifests:
        for value in manifest.get("statusFeedback", {}).get("values", []):
            if value["name"].lower() == "readyreplicas":
                return int(value["fieldValue"]["integer"])
    return None


STEADY = [{"key": UNREACHABLE, "operator": "Exists"}]
"""Tolerate a late lease for good: on two busy cores a renewal may come late, and these tests
are about placement by labels and rollouts, not failover."""


def test_a_deployment_placed_on_two_of_three_by_labels_lives_and_goes(fleet: Fleet) -> None:
    _prod_placement(fleet, "prod", tolerations=STEADY)
    fleet.put(
        "WorkSet",
        "web",
        {
            "placementRefs": [{"name": "prod"}],
            "manifestWorkTemplate": {
                "workload": {"manifests": [_deployment("web")]},
                "manifestConfigs": [
                    {
                        "resourceIdentifier": {
                            "group": "apps",
                            "resource": "deployments",
                            "namespace": "default",
                            "name": "web",
                        },
                        "feedbackRules": [{"type": "WellKnownStatus"}],
                    }
                ],
            },
        },
    )
    works = eventually(
        lambda: fleet.works("web"),
        lambda found: (
            sorted(found) == ["web.east", "web.west"]
            and all(
                _condition(w, "Available") == "True" and _ready_replicas(w) == 1
                for w in found.values()
            )
        ),
        what="web Available on east and west with readyReplicas 1 fed back",
        within=WAIT,
    )
    assert works is not None
    assert fleet.members["north"].get("deployment", "web") is None, "north is env=dev"
    summary = eventually(
        lambda: (fleet.get("WorkSet", "web") or {}).get("status", {}).get("summary"),
        lambda s: s is not None and s["total"] == 2 and s["available"] == 2,
        what="the WorkSet's summary counts both",
        within=WAIT,
    )
    assert summary is not None

    east = fleet.members["east"]
    east.kubectl("scale", "deployment", "web", "--replicas=3")
    eventually(
        lambda: (east.get("deployment", "web") or {}).get("spec", {}).get("replicas"),
        lambda replicas: replicas == 1,
        what="the hand edit in east put back",
        within=WAIT,
    )

    # Foreground (default) and Orphan side by side: the one goes, the other stays.
    fleet.put(
        "WorkSet",
        "kept",
        {
            "placementRefs": [{"name": "prod"}],
            "manifestWorkTemplate": {
                "workload": {"manifests": [_config_map("kept")]},
                "deleteOption": {"propagationPolicy": "Orphan"},
            },
        },
    )
    eventually(
        lambda: [fleet.members[m].get("configmap", "kept") is not None for m in ("east", "west")],
        lambda seen: seen == [True, True],
        what="the Orphan workset applied",
        within=WAIT,
    )
    fleet.delete("WorkSet", "kept")
    fleet.delete("WorkSet", "web")
    eventually(
        lambda: [fleet.members[m].get("deployment", "web") for m in ("east", "west")],
        lambda seen: seen == [None, None],
        what="deleting the workset removes the Deployment everywhere",
        within=WAIT,
    )
    eventually(
        lambda: fleet.works("kept"), lambda found: found == {}, what="works gone", within=WAIT
    )
    for name in ("east", "west"):
        assert fleet.members[name].get("configmap", "kept") is not None, "Orphan leaves it"


def test_a_progressive_rollout_halts_on_the_cluster_that_fails(fleet: Fleet) -> None:
    for name in ("east", "north"):  # west lacks the namespace: its API server refuses
        fleet.members[name].kubectl("create", "namespace", "rollout")
    fleet.put(
        "Placement",
        "everyone",
        {
            "predicates": [
                {
                    "requiredClusterSelector": {
                        "labelSelector": {
                            "matchExpressions": [{"key": "fleet-e2e/name", "operator": "Exists"}]
                        }
                    }
                }
            ],
            "tolerations": STEADY,
        },
    )
    fleet.put(
        "WorkSet",
        "slow",
        {
            "placementRefs": [
                {
                    "name": "everyone",
                    "rolloutStrategy": {
                        "type": "Progressive",
                        "progressive": {"maxConcurrency": 1},
                    },
                }
            ],
            "manifestWorkTemplate": {"workload": {"manifests": [_config_map("slow", "rollout")]}},
        },
    )
    placement = eventually(
        lambda: fleet.get("Placement", "everyone"),
        lambda doc: doc is not None and len(doc.get("status", {}).get("decisions", [])) == 3,
        what="all three chosen",
        within=WAIT,
    )
    assert placement is not None
    order = [d["clusterName"] for d in placement["status"]["decisions"]]
    halted = eventually(
        lambda: fleet.get("WorkSet", "slow"),
        lambda doc: (doc or {}).get("status", {}).get("rollout", {}).get("phase") == "Halted",
        what="the rollout halts at west",
        within=WAIT,
    )
    assert halted is not None
    assert "west" in halted["status"]["rollout"]["message"]
    after = order[order.index("west") + 1 :]
    works = fleet.works("slow")
    assert "slow.west" in works
    for name in after:
        assert f"slow.{name}" not in works, f"{name} comes after west: nothing while halted"
    west = works["slow.west"]
    assert _condition(west, "Degraded") == "True" or _condition(west, "Applied") == "False"


def test_a_silent_cluster_is_failed_over_gracefully_and_cleaned_when_back(fleet: Fleet) -> None:
    _prod_placement(
        fleet,
        "one",
        numberOfClusters=1,
        tolerations=[{"key": UNREACHABLE, "operator": "Exists", "tolerationSeconds": 5}],
    )
    fleet.put(
        "WorkSet",
        "moving",
        {
            "placementRefs": [{"name": "one"}],
            "manifestWorkTemplate": {"workload": {"manifests": [_config_map("moving")]}},
        },
    )
    works = eventually(
        lambda: fleet.works("moving"),
        lambda found: (
            len(found) == 1 and _condition(next(iter(found.values())), "Available") == "True"
        ),
        what="the work Available on one prod cluster",
        within=WAIT,
    )
    assert works is not None
    first = next(iter(works.values()))["spec"]["clusterName"]
    second = "west" if first == "east" else "east"
    silent = fleet.members[first]
    silent.agent.stop()
    eventually(
        lambda: fleet.cluster_condition(first, "Available"),
        lambda status: status == "Unknown",
        what=f"{first} Unknown after 5 x {LEASE_SECONDS} s",
        within=WAIT,
    )
    cluster = fleet.get("ManagedCluster", first)
    assert cluster is not None
    assert UNREACHABLE in [t["key"] for t in cluster["spec"]["taints"]]

    def moved() -> dict[str, dict[str, Any]]:
        found = fleet.works("moving")
        if f"moving.{first}" not in found:  # the old copy goes only after the new is Available
            assert _condition(found.get(f"moving.{second}"), "Available") == "True", found
        return found

    eventually(
        moved,
        lambda found: sorted(found) == [f"moving.{second}"],
        what=f"moved to {second}, the old copy removed once the new one is Available",
        within=WAIT,
    )
    assert fleet.members[first].get("configmap", "moving") is not None, "still there, unseen"
    silent.agent.start()
    silent.agent.wait_connected()
    eventually(
        lambda: fleet.members[first].get("configmap", "moving"),
        lambda found: found is None,
        what=f"{first} back: what it still ran of the moved work removed",
        within=WAIT,
    )

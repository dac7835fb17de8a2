"""The hub controller's passes as synchronous scripts, on the real stores (SQLite files).

The controller runs against the real node store (``tunnel_server.store.SqliteStore``) and the
real fleet store (``SqliteFleetStore`` behind ``FleetHub``); only its clock is the test's, so
5 x N lease expiries, ``tolerationSeconds`` and rollout soaks are checked to the second without
waiting. ``cut_off`` records the sessions it would close (the server tests close real ones).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleet_model.cluster import format_time
from tunnel_server.fleet.hub.controller import ControllerSettings, HubController
from tunnel_server.fleet.hub.setup import FleetHub, FleetSettings, Lease, open_hub
from tunnel_server.store import CertificateRecord, NodeRecord, SqliteStore, TokenRecord

T0 = 1_800_000_000.0


@dataclass
class Rig:
    hub: FleetHub
    nodes: SqliteStore
    controller: HubController
    now: list[float]
    cut: list[str] = field(default_factory=list)

    def at(self, seconds: float) -> None:
        """Set the clock to T0 + seconds and run one pass."""
        self.now[0] = T0 + seconds
        self.controller.pass_once()

    def clock(self, seconds: float) -> None:
        """Set the clock to T0 + seconds (renewals and agent reports happen then)."""
        self.now[0] = T0 + seconds

    def join(self, name: str, *, approved: bool, certificate: bool = True) -> None:
        token = TokenRecord(
            id=secrets.token_hex(8),
            secret_hash="x",
            kind="cluster",
            name=name,
            created_at=self.now[0],
            expires_at=self.now[0] + 3600,
            require_approval=not approved,
        )
        self.nodes.add_token(token)
        node = NodeRecord(
            name=name,
            kind="cluster",
            state="approved" if approved else "pending",
            created_at=self.now[0],
        )
        self.nodes.redeem_token(token.id, now=self.now[0], node=node)
        if certificate and approved:
            self.certify(name)

    def certify(self, name: str) -> None:
        self.nodes.record_certificate(
            CertificateRecord(
                serial=secrets.token_hex(8),
                name=name,
                not_after=self.now[0] + 86400,
                issued_at=self.now[0],
            )
        )

    def get(self, kind: str, name: str) -> Any:
        obj = self.hub.store.get(kind, name)
        assert obj is not None, f"{kind} {name} missing"
        return obj

    def put(self, kind: str, name: str, spec: Mapping[str, Any], **labels: str) -> None:
        self.hub.put(kind, name, labels=labels, annotations={}, spec=spec, now=self.now[0])

    def patch_spec(self, kind: str, name: str, **changes: Any) -> None:
        obj = self.get(kind, name)
        self.hub.put(
            kind,
            name,
            labels=obj.labels,
            annotations=obj.annotations,
            spec={**obj.spec, **changes},
            expected_version=obj.resource_version,
            now=self.now[0],
        )

    def label(self, name: str, **labels: str) -> None:
        obj = self.get("ManagedCluster", name)
        self.hub.put(
            "ManagedCluster",
            name,
            labels={**obj.labels, **labels},
            annotations=obj.annotations,
            spec=obj.spec,
            now=self.now[0],
        )

    def renew(self, name: str, *, healthy: bool | None = True, cpu: str = "4") -> None:
        self.hub.leases[name] = Lease(
            renewed_at=self.now[0],
            apiserver_healthy=healthy,
            claims={"kubernetes.version": "v1.36.3", "region": "eu"},
            allocatable={"cpu": cpu, "memory": "8Gi"},
            capacity={"cpu": cpu, "memory": "8Gi"},
        )

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        for c in self.get(kind, name).status.get("conditions", []):
            if c["type"] == type_:
                return dict(c)
        raise AssertionError(f"{kind} {name} has no condition {type_}")

    def taints(self, name: str) -> dict[str, str]:
        return {
            t["key"]: t.get("timeAdded", "")
            for t in self.get("ManagedCluster", name).spec.get("taints", [])
        }

    def decisions(self, placement: str) -> list[str]:
        return [
            d["clusterName"] for d in self.get("Placement", placement).status.get("decisions", [])
        ]

    def works(self) -> dict[str, Any]:
        return {w.name: w for w in self.hub.store.list("Work")}

    def agent_reports(self, work: str, *, available: bool = True, degraded: bool = False) -> None:
        """Play the agent: the Work's status as its applier would write it."""
        obj = self.get("Work", work)
        when = format_time(self.now[0])

        def condition(kind: str, *, value: bool) -> dict[str, Any]:
            return {
                "type": kind,
                "status": "True" if value else "False",
                "reason": "AsExpected" if value != (kind == "Degraded") else "NotAsExpected",
                "message": "the API server refused it: quota exceeded"
                if kind == "Degraded" and value
                else "",
                "lastTransitionTime": when,
                "observedGeneration": obj.generation,
            }

        self.hub.set_status(
            "Work",
            work,
            {
                "conditions": [
                    condition("Applied", value=True),
                    condition("Available", value=available),
                    condition("Degraded", value=degraded),
                ],
                "observedGeneration": obj.generation,
            },
        )


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    nodes = SqliteStore.open(tmp_path)
    kept = getattr(request, "param", 10_000)
    hub = open_hub(tmp_path, FleetSettings(changes_kept=kept))
    now = [T0]
    cut: list[str] = []

    def cut_off(name: str) -> bool:
        cut.append(name)
        return True

    controller = HubController(
        hub=hub,
        node_store=nodes,
        cut_off=cut_off,
        settings=ControllerSettings(renew_write_seconds=30.0),
        clock=lambda: now[0],
    )
    yield Rig(hub=hub, nodes=nodes, controller=controller, now=now, cut=cut)
    hub.store.close()
    nodes.close()


def _state(rig: Rig, name: str) -> str:
    record = rig.nodes.get_node(name)
    assert record is not None
    return record.state


# ---------------------------------------------------------------- registration


def test_a_pending_cluster_appears_unaccepted_and_hub_accepts_client_approves_it(rig: Rig) -> None:
    rig.join("pend", approved=False)
    rig.join("auto", approved=True)
    rig.at(0)
    pend, auto = rig.get("ManagedCluster", "pend"), rig.get("ManagedCluster", "auto")
    assert pend.spec["hubAcceptsClient"] is False
    assert auto.spec["hubAcceptsClient"] is True, "a token without approval is the admin's yes"
    accepted = rig.condition("ManagedCluster", "pend", "HubAcceptedManagedCluster")
    assert (accepted["status"], accepted["reason"]) == ("False", "HubClusterAdminNotAccepted")
    joined = rig.condition("ManagedCluster", "pend", "ManagedClusterJoined")
    assert (joined["status"], joined["reason"]) == ("False", "ManagedClusterPendingApproval")
    assert rig.condition("ManagedCluster", "auto", "ManagedClusterJoined")["status"] == "True"
    assert _state(rig, "pend") == "pending"

    rig.patch_spec("ManagedCluster", "pend", hubAcceptsClient=True)
    rig.at(1)
    assert _state(rig, "pend") == "approved"
    assert rig.condition("ManagedCluster", "pend", "HubAcceptedManagedCluster")["status"] == "True"
    rig.certify("pend")  # the agent fetched its certificate
    rig.at(2)
    assert rig.condition("ManagedCluster", "pend", "ManagedClusterJoined")["status"] == "True"
    assert rig.cut == []


def test_hub_accepts_client_false_on_an_accepted_cluster_revokes_and_cuts_it_off(rig: Rig) -> None:
    rig.join("c1", approved=True)
    rig.at(0)
    rig.patch_spec("ManagedCluster", "c1", hubAcceptsClient=False)
    rig.at(1)
    assert _state(rig, "c1") == "revoked"
    assert rig.cut == ["c1"]
    accepted = rig.condition("ManagedCluster", "c1", "HubAcceptedManagedCluster")
    assert (accepted["status"], accepted["reason"]) == ("False", "HubClusterAdminDenied")
    rig.patch_spec("ManagedCluster", "c1", hubAcceptsClient=True)
    rig.at(2)
    assert rig.get("ManagedCluster", "c1").spec["hubAcceptsClient"] is False, (
        "a revoked cluster joins again with a new token; accepting it does not undo that"
    )
    assert _state(rig, "c1") == "revoked"


def test_deleting_a_managed_cluster_revokes_it_and_it_is_not_made_again(rig: Rig) -> None:
    rig.join("c1", approved=True)
    rig.join("c2", approved=False)
    rig.at(0)
    rig.hub.delete("ManagedCluster", "c1")
    rig.hub.delete("ManagedCluster", "c2")
    rig.at(1)
    assert (_state(rig, "c1"), _state(rig, "c2")) == ("revoked", "revoked")
    assert sorted(rig.cut) == ["c1", "c2"]
    assert rig.hub.store.get("ManagedCluster", "c1") is None
    rig.at(2)
    assert rig.hub.store.get("ManagedCluster", "c1") is None
    rig.join("c1", approved=False)  # joins again with a new approval token
    rig.at(3)
    assert rig.get("ManagedCluster", "c1").spec["hubAcceptsClient"] is False


def test_an_approval_by_the_clusters_api_makes_the_managed_cluster_accept(rig: Rig) -> None:
    rig.join("c1", approved=False)
    rig.at(0)
    rig.nodes.change_node_state("c1", "approved", only_from=("pending",))  # POST .../approve
    rig.at(1)
    assert rig.get("ManagedCluster", "c1").spec["hubAcceptsClient"] is True
    assert _state(rig, "c1") == "approved", "not mistaken for a deny"


@pytest.mark.parametrize("rig", [3], indirect=True)
def test_a_change_log_trimmed_under_the_controller_is_read_afresh(rig: Rig) -> None:
    rig.join("c1", approved=True)
    rig.join("c2", approved=True)
    rig.at(0)
    rig.hub.delete("ManagedCluster", "c1")  # then more writes than the log keeps
    for index in range(5):
        rig.put("Placement", f"p{index}", {})
    rig.at(1)
    assert _state(rig, "c1") == "revoked", "the delete is seen though its change was trimmed"
    assert rig.cut == ["c1"]
    assert sorted(p.name for p in rig.hub.store.list("Placement")) == [f"p{i}" for i in range(5)]
    assert all("decisions" in p.status for p in rig.hub.store.list("Placement"))


# ---------------------------------------------------------------- health


def test_a_lease_not_renewed_for_5n_makes_available_unknown_and_taints_unreachable(
    rig: Rig,
) -> None:
    rig.join("c1", approved=True)
    rig.at(0)
    rig.patch_spec("ManagedCluster", "c1", leaseDurationSeconds=2)
    rig.clock(0.5)
    rig.renew("c1")
    rig.at(0.5)
    available = rig.condition("ManagedCluster", "c1", "Available")
    assert available["status"] == "True"
    status = rig.get("ManagedCluster", "c1").status
    assert status["allocatable"] == {"cpu": "4", "memory": "8Gi"}
    assert {"name": "region", "value": "eu"} in status["clusterClaims"]
    assert status["version"] == {"kubernetes": "v1.36.3"}
    assert status["lease"]["durationSeconds"] == 2
    assert rig.taints("c1") == {}
    assert rig.controller._next_deadline() == T0 + 0.5 + 10, "a timer at 5 x N, no polling"

    version = rig.get("ManagedCluster", "c1").resource_version
    rig.clock(3)
    rig.renew("c1")
    rig.at(3)
    assert rig.get("ManagedCluster", "c1").resource_version == version, (
        "a renewal alone is no write within max(N, renew_write_seconds)"
    )
    rig.at(12.9)
    assert rig.condition("ManagedCluster", "c1", "Available")["status"] == "True"
    rig.at(13)  # 5 x 2 s after the renewal at 3 s
    available = rig.condition("ManagedCluster", "c1", "Available")
    assert (available["status"], available["reason"]) == (
        "Unknown",
        "ManagedClusterLeaseUpdateStopped",
    )
    assert rig.taints("c1") == {"fleet.edgefleet.io/unreachable": format_time(T0 + 13)}

    rig.clock(14)
    rig.renew("c1", healthy=False)
    rig.at(14)
    available = rig.condition("ManagedCluster", "c1", "Available")
    assert (available["status"], available["reason"]) == (
        "False",
        "ManagedClusterKubeAPIServerUnavailable",
    )
    assert list(rig.taints("c1")) == ["fleet.edgefleet.io/unavailable"]
    rig.clock(15)
    rig.renew("c1", healthy=True)
    rig.at(15)
    assert rig.condition("ManagedCluster", "c1", "Available")["status"] == "True"
    assert rig.taints("c1") == {}
    rig.clock(44)
    rig.renew("c1")
    rig.at(44)
    assert rig.get("ManagedCluster", "c1").status["lease"]["renewTime"] == format_time(T0 + 15)
    rig.clock(46)
    rig.renew("c1")
    rig.at(46)
    assert rig.get("ManagedCluster", "c1").status["lease"]["renewTime"] == format_time(T0 + 46), (
        "renewTime is rewritten once max(N, renew_write_seconds) has passed"
    )


def test_after_a_restart_a_cluster_that_had_renewed_gets_one_5n_of_grace(rig: Rig) -> None:
    rig.join("c1", approved=True)
    rig.join("never", approved=True)
    rig.at(0)
    rig.patch_spec("ManagedCluster", "c1", leaseDurationSeconds=2)
    rig.patch_spec("ManagedCluster", "never", leaseDurationSeconds=2)
    rig.clock(1)
    rig.renew("c1")
    rig.at(1)
    assert rig.condition("ManagedCluster", "c1", "Available")["status"] == "True"
    renew_time = rig.get("ManagedCluster", "c1").status["lease"]["renewTime"]

    rig.now[0] = T0 + 100
    restarted = HubController(
        hub=FleetHub(store=rig.hub.store, events=rig.hub.events, settings=rig.hub.settings),
        node_store=rig.nodes,
        cut_off=rig.cut.append,  # type: ignore[arg-type]
        clock=lambda: rig.now[0],
    )
    rig.controller = restarted
    rig.at(100)
    assert rig.condition("ManagedCluster", "c1", "Available")["status"] == "True", "grace"
    assert rig.get("ManagedCluster", "c1").status["lease"]["renewTime"] == renew_time, (
        "the grace is not a renewal"
    )
    assert rig.condition("ManagedCluster", "never", "Available")["status"] == "Unknown"
    rig.at(110)
    assert rig.condition("ManagedCluster", "c1", "Available")["status"] == "Unknown"


def test_a_lease_that_leaves_memory_counts_from_its_last_renewal(rig: Rig) -> None:
    rig.join("c1", approved=True)
    rig.at(0)
    rig.patch_spec("ManagedCluster", "c1", leaseDurationSeconds=2)
    rig.clock(50)
    rig.renew("c1")
    rig.at(50)
    del rig.hub.leases["c1"]
    rig.at(59.9)
    assert rig.condition("ManagedCluster", "c1", "Available")["status"] == "True"
    rig.at(60)
    assert rig.condition("ManagedCluster", "c1", "Available")["status"] == "Unknown"


# ---------------------------------------------------------------- placement


def _clusters(rig: Rig, *names: str, **labels: str) -> None:
    for name in names:
        rig.join(name, approved=True)
    rig.at(0)
    for name in names:
        rig.label(name, **labels)
        rig.renew(name)


def test_placement_status_lists_decisions_and_why_the_others_were_not_chosen(rig: Rig) -> None:
    _clusters(rig, "a", "b", "c", env="prod")
    rig.label("c", env="dev")
    rig.put(
        "Placement",
        "web",
        {
            "predicates": [
                {"requiredClusterSelector": {"labelSelector": {"matchLabels": {"env": "prod"}}}}
            ]
        },
    )
    rig.at(1)
    assert rig.decisions("web") == ["a", "b"]
    not_selected = rig.get("Placement", "web").status["notSelected"]
    assert not_selected == [{"clusterName": "c", "reason": not_selected[0]["reason"]}]
    assert "env" in not_selected[0]["reason"]
    version = rig.get("Placement", "web").resource_version
    rig.at(2)
    assert rig.get("Placement", "web").resource_version == version, "no write when unchanged"
    rig.label("c", env="prod")
    rig.at(3)
    assert rig.decisions("web") == ["a", "b", "c"]


def test_a_tolerated_unreachable_cluster_stays_chosen_until_toleration_seconds(rig: Rig) -> None:
    _clusters(rig, "a", "b", "c", env="prod")
    for name in ("a", "b", "c"):
        rig.patch_spec("ManagedCluster", name, leaseDurationSeconds=1)
    rig.put(
        "Placement",
        "web",
        {
            "numberOfClusters": 2,
            "tolerations": [
                {
                    "key": "fleet.edgefleet.io/unreachable",
                    "operator": "Exists",
                    "tolerationSeconds": 20,
                }
            ],
        },
    )
    rig.at(1)
    assert rig.decisions("web") == ["a", "b"]
    for second in range(2, 7):
        rig.clock(second)
        rig.renew("b")
        rig.renew("c")
        rig.at(second)
    assert "fleet.edgefleet.io/unreachable" in rig.taints("a"), "a's lease ran out at 5 s"
    assert rig.decisions("web") == ["a", "b"], "tolerated for 20 s"
    tainted_at = T0 + 5
    deadline = rig.controller._wakes[("Placement", "web")]
    assert deadline == pytest.approx(tainted_at + 20)
    rig.clock(24.9)
    rig.renew("b")
    rig.renew("c")
    rig.at(24.9)
    assert rig.decisions("web") == ["a", "b"]
    rig.clock(25)
    rig.renew("b")
    rig.renew("c")
    rig.at(25)
    assert rig.decisions("web") == ["b", "c"]
    reasons = {
        n["clusterName"]: n["reason"] for n in rig.get("Placement", "web").status["notSelected"]
    }
    assert "unreachable" in reasons["a"]


# ---------------------------------------------------------------- worksets


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]},
        },
    },
}


def _workset(rollout: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": "web"}
    if rollout is not None:
        ref["rolloutStrategy"] = rollout
    return {
        "placementRefs": [ref],
        "manifestWorkTemplate": {"workload": {"manifests": [DEPLOYMENT]}},
        **extra,
    }


def test_a_workset_makes_one_work_per_decision_with_its_overrides(rig: Rig) -> None:
    _clusters(rig, "a", "b", "c", env="prod")
    rig.label("b", size="big")
    rig.put("Placement", "web", {"numberOfClusters": 2})
    rig.put(
        "WorkSet",
        "shop",
        _workset(
            overrides=[
                {
                    "clusterSelector": {"labelSelector": {"matchLabels": {"size": "big"}}},
                    "resourceSelector": {"kind": "Deployment", "name": "web"},
                    "mergePatch": {"spec": {"replicas": 5}},
                }
            ]
        ),
    )
    rig.at(1)
    works = rig.works()
    assert sorted(works) == ["shop.a", "shop.b"]
    assert works["shop.a"].labels["fleet.edgefleet.io/workset"] == "shop"
    assert works["shop.b"].labels["fleet.edgefleet.io/cluster"] == "b"
    assert works["shop.b"].spec["clusterName"] == "b"
    assert works["shop.b"].spec["workload"]["manifests"][0]["spec"]["replicas"] == 5
    assert works["shop.a"].spec["workload"]["manifests"][0]["spec"]["replicas"] == 1
    rig.agent_reports("shop.a")
    rig.agent_reports("shop.b")
    rig.at(2)
    status = rig.get("WorkSet", "shop").status
    assert status["summary"]["total"] == 2
    assert status["summary"]["available"] == 2
    assert status["rollout"]["phase"] == "Succeeded"

    rig.hub.delete("WorkSet", "shop")
    rig.at(3)
    assert rig.works() == {}, "deleting the WorkSet deletes its Works"


def test_a_hand_made_work_of_the_same_name_is_not_overwritten(rig: Rig) -> None:
    _clusters(rig, "a", env="prod")
    hand_made = {"clusterName": "a", "workload": {"manifests": []}}
    rig.put("Work", "shop.a", hand_made)
    rig.put("Placement", "web", {})
    rig.put("WorkSet", "shop", _workset())
    rig.at(1)
    assert rig.get("Work", "shop.a").spec == hand_made
    rendered = rig.condition("WorkSet", "shop", "WorksRendered")
    assert rendered["status"] == "False"
    assert "did not make" in rendered["message"]


def test_a_progressive_rollout_halts_when_a_work_is_degraded(rig: Rig) -> None:
    _clusters(rig, "a", "b", "c", env="prod")
    rig.put("Placement", "web", {})
    rig.put(
        "WorkSet",
        "shop",
        _workset({"type": "Progressive", "progressive": {"maxConcurrency": 1}}),
    )
    rig.at(1)
    assert sorted(rig.works()) == ["shop.a"], "one at a time"
    rig.agent_reports("shop.a")
    rig.at(2)
    assert sorted(rig.works()) == ["shop.a", "shop.b"]
    rig.agent_reports("shop.b", available=False, degraded=True)
    rig.at(3)
    assert sorted(rig.works()) == ["shop.a", "shop.b"], "halted: c gets nothing"
    status = rig.get("WorkSet", "shop").status
    assert status["rollout"]["phase"] == "Halted"
    assert rig.condition("WorkSet", "shop", "RolloutHalted")["status"] == "True"
    rig.at(30)
    assert sorted(rig.works()) == ["shop.a", "shop.b"], "still halted later"


def test_graceful_failover_removes_the_old_work_only_once_the_new_one_is_available(
    rig: Rig,
) -> None:
    _clusters(rig, "a", "b", "c", env="prod")
    for name in ("a", "b", "c"):
        rig.patch_spec("ManagedCluster", name, leaseDurationSeconds=1)
    rig.put(
        "Placement",
        "web",
        {
            "numberOfClusters": 2,
            "tolerations": [
                {
                    "key": "fleet.edgefleet.io/unreachable",
                    "operator": "Exists",
                    "tolerationSeconds": 5,
                }
            ],
        },
    )
    rig.put("WorkSet", "shop", _workset())
    rig.at(1)
    assert sorted(rig.works()) == ["shop.a", "shop.b"]
    rig.agent_reports("shop.a")
    rig.agent_reports("shop.b")
    for second in range(2, 12):
        rig.clock(second)
        rig.renew("b")
        rig.renew("c")
        rig.at(second)
    assert rig.decisions("web") == ["b", "c"], "a unreachable at 5 s, toleration out at 10 s"
    assert sorted(rig.works()) == ["shop.a", "shop.b", "shop.c"], "a's copy stays for now"
    clusters = {
        c["cluster"]: c["status"] for c in rig.get("WorkSet", "shop").status["rollout"]["clusters"]
    }
    assert clusters["a"] == "Removing"
    rig.clock(12)
    rig.renew("b")
    rig.renew("c")
    rig.agent_reports("shop.c")
    rig.at(12)
    assert sorted(rig.works()) == ["shop.b", "shop.c"], "gone once c is Available"

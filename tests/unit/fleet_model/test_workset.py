"""WorkSets: parsing, rendering per cluster, and the rollout state machine as scripts.

The scripts drive ``plan_rollout`` the way the hub's controller will: a ``World`` holds the
Works the hub wrote (and what their agents reported), carries out each plan (writes the Works
it says to apply, deletes the ones it says to delete), and lets the test move time and make
agents report. Hypothesis then runs random worlds against the invariants.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.documents import API_VERSION, validate_document
from fleet_model.overrides import OverrideError
from fleet_model.problems import SpecError
from fleet_model.work import rfc3339
from fleet_model.workset import (
    ClusterRollout,
    Decision,
    RolloutPlan,
    WorkSetSpec,
    WorkState,
    parse_spec,
    plan_rollout,
    previous_rollout,
    render_work_spec,
    with_previous,
    work_name,
    workset_conditions,
)

T0 = 1_796_000_000.0
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"replicas": 2},
}


def spec(rollout: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "placementRefs": [{"name": "web", "rolloutStrategy": rollout or {"type": "All"}}],
        "manifestWorkTemplate": {"workload": {"manifests": [DEPLOYMENT]}},
    }
    out.update(fields)
    return out


def progressive(**config: Any) -> WorkSetSpec:
    return parse_spec(spec({"type": "Progressive", "progressive": config}))


def problems_of(value: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(value)
    return caught.value.problems


# ---------------------------------------------------------------- parsing


def test_a_workset_is_taken_with_ocm_defaults() -> None:
    parsed = parse_spec(spec(None))
    (ref,) = parsed.placement_refs
    assert (ref.name, ref.rollout.type, ref.rollout.progress_deadline) == ("web", "All", None)
    assert parsed.template.manifests[0].name == "web"
    strategy = (
        progressive(
            maxConcurrency="50%", minSuccessTime="1m30s", progressDeadline="10m", maxFailures=1
        )
        .placement_refs[0]
        .rollout
    )
    assert strategy.type == "Progressive"
    assert strategy.max_concurrency is not None
    assert strategy.max_concurrency.of(3) == 2  # 50% of 3, rounded up
    assert (strategy.min_success_time, strategy.progress_deadline) == (90.0, 600.0)
    assert strategy.max_failures.of(3) == 1
    assert strategy.max_failures.of(0) == 0
    none = progressive(progressDeadline="None").placement_refs[0].rollout
    assert (none.progress_deadline, none.max_concurrency, none.max_failures.of(5)) == (
        None,
        None,
        0,
    )
    assert progressive(minSuccessTime="0").placement_refs[0].rollout.min_success_time == 0


def test_every_problem_of_a_workset_is_reported() -> None:
    bad = {
        "placementRefs": [
            {"name": "web", "rolloutStrategy": {"type": "Canary"}},
            {
                "name": "web2",
                "rolloutStrategy": {
                    "type": "Progressive",
                    "progressive": {
                        "maxConcurrency": 0,
                        "minSuccessTime": "soon",
                        "progressDeadline": "5 minutes",
                        "maxFailures": "120%",
                        "timeout": "1m",
                    },
                    "all": {},
                },
            },
            {"name": "web2"},
            {"name": "Web"},
        ],
        "manifestWorkTemplate": {"clusterName": "east", "workload": {"manifests": []}},
        "overrides": [{"mergePatch": []}],
        "extra": 1,
    }
    assert [path for path, _ in problems_of(bad)] == [
        "/spec/extra",
        "/spec/placementRefs/0/rolloutStrategy/type",
        "/spec/placementRefs/1/rolloutStrategy/all",
        "/spec/placementRefs/1/rolloutStrategy/progressive/timeout",
        "/spec/placementRefs/1/rolloutStrategy/progressive/progressDeadline",
        "/spec/placementRefs/1/rolloutStrategy/progressive/minSuccessTime",
        "/spec/placementRefs/1/rolloutStrategy/progressive/maxConcurrency",
        "/spec/placementRefs/1/rolloutStrategy/progressive/maxFailures",
        "/spec/placementRefs/2/name",
        "/spec/placementRefs/3/name",
        "/spec/manifestWorkTemplate/clusterName",
        "/spec/manifestWorkTemplate/workload/manifests",
        "/spec/overrides/0/mergePatch",
    ]
    assert problems_of({"manifestWorkTemplate": None}) == [
        ("/spec/placementRefs", "must list 1 to 16 placements"),
        ("/spec/manifestWorkTemplate", "must be an object (a Work spec without clusterName)"),
    ]
    assert problems_of(spec({"type": "Progressive", "progressive": {"minSuccessTime": "800h"}}))[
        0
    ] == (
        "/spec/placementRefs/0/rolloutStrategy/progressive/minSuccessTime",
        "must be at most 30 days (720h)",
    )


def test_the_document_envelope_hands_the_spec_here() -> None:
    doc = {"apiVersion": API_VERSION, "kind": "WorkSet", "metadata": {"name": "web"}}
    assert isinstance(validate_document({**doc, "spec": spec()}).parsed, WorkSetSpec)
    with pytest.raises(SpecError, match="/spec/placementRefs"):
        validate_document({**doc, "spec": {}})


@dataclass(frozen=True)
class Cluster:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def test_each_cluster_gets_the_template_with_its_overrides() -> None:
    parsed = parse_spec(
        spec(
            manifestWorkTemplate={
                "workload": {"manifests": [DEPLOYMENT]},
                "deleteOption": {"propagationPolicy": "Orphan"},
            },
            overrides=[
                {
                    "clusterSelector": {"labelSelector": {"matchLabels": {"size": "big"}}},
                    "resourceSelector": {"kind": "Deployment"},
                    "jsonPatch": [{"op": "replace", "path": "/spec/replicas", "value": 10}],
                }
            ],
        )
    )
    big = render_work_spec(parsed, Cluster("east", {"size": "big"}))
    small = render_work_spec(parsed, Cluster("west"))
    assert big["clusterName"] == "east"
    assert big["deleteOption"] == {"propagationPolicy": "Orphan"}
    assert big["workload"]["manifests"][0]["spec"] == {"replicas": 10}
    assert small["workload"]["manifests"] == [DEPLOYMENT]
    assert work_name("web", "east") == "web.east"
    # What is rendered is itself a valid Work spec.
    doc = {"apiVersion": API_VERSION, "kind": "Work", "metadata": {"name": "web.east"}}
    validate_document({**doc, "spec": big}, kind="Work")
    broken = parse_spec(spec(overrides=[{"jsonPatch": [{"op": "remove", "path": "/spec/x"}]}]))
    with pytest.raises(OverrideError, match=r"manifest 0 .* on west"):
        render_work_spec(broken, Cluster("west"))


# ---------------------------------------------------------------- the world the scripts run in


@dataclass
class Written:
    """One Work as the hub wrote it and as its agent last reported on it."""

    revision: int
    updated_at: float
    observed: bool = False
    applied: bool = False
    available: bool = False
    degraded: bool = False
    available_since: float | None = None
    degraded_since: float | None = None
    message: str = ""


@dataclass
class World:
    workset: WorkSetSpec
    now: float = T0
    revision: int = 1
    """Bumped when the template changes: Works of an older revision are not current."""
    works: dict[str, Written] = field(default_factory=dict)
    previous: dict[str, ClusterRollout] = field(default_factory=dict)
    plans: list[RolloutPlan] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def states(self) -> dict[str, WorkState]:
        return {
            name: WorkState(
                current=w.revision == self.revision,
                observed=w.observed,
                applied=w.applied,
                available=w.available,
                degraded=w.degraded,
                updated_at=w.updated_at,
                available_since=w.available_since,
                degraded_since=w.degraded_since,
                message=w.message,
            )
            for name, w in self.works.items()
        }

    def plan(self, *chosen: str | tuple[str, int], placement: str = "web") -> RolloutPlan:
        return self.plan_all({placement: chosen})

    def plan_all(self, chosen: Mapping[str, Sequence[str | tuple[str, int]]]) -> RolloutPlan:
        decisions = {
            name: [
                Decision(cluster=c, group_index=0)
                if isinstance(c, str)
                else Decision(cluster=c[0], group_index=c[1])
                for c in clusters
            ]
            for name, clusters in chosen.items()
        }
        plan = plan_rollout(
            workset=self.workset,
            decisions=decisions,
            works=self.states(),
            now=self.now,
            previous=self.previous,
        )
        assert plan == plan_rollout(
            workset=self.workset,
            decisions=decisions,
            works=self.states(),
            now=self.now,
            previous=self.previous,
        ), "deterministic"
        for cluster in plan.apply:
            self.works[cluster] = Written(revision=self.revision, updated_at=self.now)
        for cluster in plan.delete:
            del self.works[cluster]
            self.deleted.append(cluster)
        self.previous = with_previous(plan)
        self.plans.append(plan)
        return plan

    def report(
        self, cluster: str, *, available: bool = True, degraded: bool = False, message: str = ""
    ) -> None:
        """The agent's status for the Work it holds (at the Work's current revision)."""
        old = self.works[cluster]
        self.works[cluster] = replace(
            old,
            observed=True,
            applied=True,
            available=available,
            degraded=degraded,
            available_since=(old.available_since or self.now) if available else None,
            degraded_since=(old.degraded_since or self.now) if degraded else None,
            message=message,
        )

    def tick(self, seconds: float) -> None:
        self.now += seconds


def statuses(plan: RolloutPlan) -> dict[str, str]:
    return {c.cluster: c.status for c in plan.clusters}


# ---------------------------------------------------------------- scripts


def test_progressive_one_at_a_time_halts_when_a_cluster_fails() -> None:
    """Progressive, one at a time over 3 clusters, no failure allowed.

    The second cluster fails, so the rollout halts before the third and says who failed since
    when.
    """
    world = World(progressive(maxConcurrency=1, minSuccessTime="30s", progressDeadline="10m"))
    first = world.plan("north", "east", "west")
    assert first.apply == ("north",)
    assert statuses(first) == {"north": "Progressing", "east": "ToApply", "west": "ToApply"}
    assert (first.phase, first.wake_at) == ("Progressing", T0 + 600)

    world.tick(5)
    world.report("north")
    soaking = world.plan("north", "east", "west")
    assert soaking.apply == ()  # Available, but inside minSuccessTime: still holds the slot
    assert statuses(soaking)["north"] == "Progressing"
    assert soaking.wake_at == T0 + 35

    world.tick(30)
    second = world.plan("north", "east", "west")
    assert second.apply == ("east",)
    assert statuses(second) == {"north": "Succeeded", "east": "Progressing", "west": "ToApply"}

    world.tick(10)
    world.report("east", available=False, degraded=True, message='Deployment.apps "web" is invalid')
    halted = world.plan("north", "east", "west")
    assert halted.apply == ()
    assert statuses(halted) == {"north": "Succeeded", "east": "Failed", "west": "ToApply"}
    assert halted.phase == "Halted"
    assert halted.message == (
        "halted: 1 of 3 clusters failed (maxFailures 0): "
        f'east: Degraded since {rfc3339(T0 + 45)} (Deployment.apps "web" is invalid)'
    )
    conditions = {c["type"]: c for c in workset_conditions(halted, generation=1, now=world.now)}
    assert conditions["RolloutHalted"]["status"] == "True"
    assert conditions["RolloutHalted"]["message"] == halted.message
    assert conditions["ManifestworkApplied"]["reason"] == "NotAsExpected"

    world.tick(3600)  # the deadline turns Failed into TimeOut; still halted, west never starts
    later = world.plan("north", "east", "west")
    assert statuses(later)["east"] == "TimeOut"
    assert later.phase == "Halted"
    assert later.apply == ()
    assert "west" not in world.works

    world.report("east")  # the failure heals, past its deadline: TimeOut through its soak...
    soaking = world.plan("north", "east", "west")
    assert (statuses(soaking)["east"], soaking.phase, soaking.apply) == (
        "TimeOut",
        "Halted",
        (),
    )
    world.tick(30)
    healed = world.plan("north", "east", "west")  # ...then it Succeeded: the rollout goes on
    assert statuses(healed)["east"] == "Succeeded"
    assert healed.apply == ("west",)


def test_max_failures_lets_the_rollout_go_on_past_a_failure() -> None:
    world = World(progressive(maxConcurrency=1, maxFailures=1, progressDeadline="1m"))
    assert world.plan("a", "b", "c").apply == ("a",)
    world.report("a", available=False, degraded=True)
    failed = world.plan("a", "b", "c")
    assert (failed.apply, failed.phase) == ((), "Progressing")  # Failed holds its slot...
    assert failed.wake_at == T0 + 60
    world.tick(60)
    timed_out = world.plan("a", "b", "c")
    assert statuses(timed_out)["a"] == "TimeOut"  # ...until its deadline
    assert timed_out.apply == ("b",)
    world.tick(61)  # b never becomes Available: a second failure is one too many
    second = world.plan("a", "b", "c")
    assert statuses(second) == {"a": "TimeOut", "b": "TimeOut", "c": "ToApply"}
    assert second.phase == "Halted"
    assert second.message.startswith(
        "halted: 2 of 3 clusters failed (maxFailures 1): a: Degraded since"
    )
    assert "b: not Available within progressDeadline 1m" in second.message


def test_a_cluster_available_only_after_its_deadline_soaks_without_a_slot() -> None:
    world = World(
        progressive(maxConcurrency=1, maxFailures=1, progressDeadline="30s", minSuccessTime="1m")
    )
    assert world.plan("a", "b").apply == ("a",)
    world.tick(30)
    assert world.plan("a", "b").apply == ("b",)  # a timed out: its slot goes to b
    world.report("a")
    late = world.plan("a", "b")
    assert statuses(late) == {"a": "TimeOut", "b": "Progressing"}
    assert next(c for c in late.clusters if c.cluster == "a").message.startswith(
        "Available after its progressDeadline 30s; soaking until"
    )
    assert late.wake_at == T0 + 60  # b's deadline comes before a's soak ends
    world.tick(20)
    world.report("b")  # in time: b soaks in its slot
    world.tick(40)
    assert statuses(world.plan("a", "b")) == {"a": "Succeeded", "b": "Progressing"}


def test_progressive_goes_by_decision_group_then_decision_order() -> None:
    world = World(progressive(maxConcurrency=2))
    plan = world.plan(("z", 0), ("c", 1), ("a", 1), ("b", 0))
    assert plan.apply == ("z", "b")
    assert [c.cluster for c in plan.clusters] == ["z", "b", "c", "a"]
    # Default maxConcurrency: the largest decision group.
    default = World(progressive())
    assert default.plan(("a", 0), ("b", 0), ("c", 1)).apply == ("a", "b")
    percent = World(progressive(maxConcurrency="34%"))  # of 3: 1.02, rounded up to 2
    assert percent.plan("a", "b", "c").apply == ("a", "b")


def test_all_applies_everywhere_at_once_and_never_halts() -> None:
    world = World(parse_spec(spec({"type": "All", "all": {"progressDeadline": "5m"}})))
    first = world.plan("a", "b", "c")
    assert first.apply == ("a", "b", "c")
    assert first.summary.total == 3
    world.report("a")
    world.report("b", available=False, degraded=True, message="quota exceeded")
    world.tick(1)
    second = world.plan("a", "b", "c")
    assert statuses(second) == {"a": "Succeeded", "b": "Failed", "c": "Progressing"}
    assert second.phase == "Progressing"
    assert second.message == "1 of 3 clusters succeeded, 1 progressing, 1 failed"
    assert (second.summary.applied, second.summary.available, second.summary.degraded) == (2, 1, 1)
    world.report("b")
    world.report("c")
    done = world.plan("a", "b", "c")
    assert (done.phase, done.message, done.wake_at) == (
        "Succeeded",
        "3 of 3 clusters succeeded",
        None,
    )
    conditions = {
        c["type"]: c["status"] for c in workset_conditions(done, generation=1, now=world.now)
    }
    assert conditions == {
        "PlacementVerified": "True",
        "ManifestworkApplied": "True",
        "RolloutHalted": "False",
    }


def test_a_template_change_rolls_out_progressively_while_old_works_keep_serving() -> None:
    world = World(progressive(maxConcurrency=1))
    for cluster in ("a", "b", "c"):
        world.plan("a", "b", "c")
        world.report(cluster)
    assert world.plan("a", "b", "c").phase == "Succeeded"
    world.revision += 1  # the template changed: every Work is now an older rendering
    update = world.plan("a", "b", "c")
    assert update.apply == ("a",)
    assert statuses(update) == {"a": "Progressing", "b": "ToApply", "c": "ToApply"}
    assert update.delete == ()
    assert sorted(world.works) == ["a", "b", "c"]  # b and c keep the old rendering meanwhile


def test_failover_removes_the_old_work_only_once_its_replacement_is_available() -> None:
    """Graceful failover (Karmada #2281).

    East drops out of the decisions (unreachable), north replaces it; east's Work stays
    (Removing) until north's is Available, then goes.
    """
    world = World(parse_spec(spec()))
    world.plan("east", "west")
    world.report("east")
    world.report("west")
    assert world.plan("east", "west").phase == "Succeeded"

    world.tick(300)
    moved = world.plan("north", "west")
    assert moved.apply == ("north",)
    assert moved.delete == ()
    removing = next(c for c in moved.clusters if c.cluster == "east")
    assert (removing.status, removing.since) == ("Removing", T0 + 300)
    assert removing.message == "kept until north is Available"
    assert moved.summary.total == 2  # a leaving cluster is not counted

    world.tick(10)
    world.report("north", available=False)  # applied, not yet Available
    waiting = world.plan("north", "west")
    assert waiting.delete == ()
    assert next(c for c in waiting.clusters if c.cluster == "east").since == T0 + 300

    world.tick(10)
    world.report("north")
    done = world.plan("north", "west")
    assert done.delete == ("east",)
    assert "east" not in statuses(done)
    assert done.phase == "Succeeded"


def test_a_cluster_that_returns_before_its_work_went_keeps_it() -> None:
    world = World(parse_spec(spec()))
    world.plan("east", "west")
    world.report("east")
    world.report("west")
    world.plan("north", "west")  # east leaves; north is not Available yet
    assert "east" in world.works
    back = world.plan("east", "west")  # east is back (its toleration was not yet used up)
    assert back.apply == ()
    assert statuses(back)["east"] == "Succeeded"
    # north now left without ever being Available: it serves nothing, so it goes at once.
    assert back.delete == ("north",)


def test_a_cluster_that_returns_after_its_work_went_starts_over() -> None:
    world = World(parse_spec(spec()))
    world.plan("east", "west")
    world.report("east")
    world.report("west")
    world.plan("north", "west")
    world.report("north")
    assert world.plan("north", "west").delete == ("east",)
    world.tick(60)
    back = world.plan("east", "north", "west")
    assert back.apply == ("east",)
    assert statuses(back)["east"] == "Progressing"


def test_a_failed_leaving_cluster_goes_at_once_and_a_shrink_needs_no_replacement() -> None:
    world = World(parse_spec(spec()))
    world.plan("a", "b", "c")
    world.report("a")
    world.report("b", available=False, degraded=True)
    world.report("c")
    shrink = world.plan("a", "c")
    assert shrink.delete == ("b",)
    shrink = world.plan("a")
    assert shrink.delete == ("c",)


def test_two_placements_roll_out_on_their_own_and_share_no_cluster() -> None:
    world = World(
        parse_spec(
            {
                "placementRefs": [
                    {"name": "canary", "rolloutStrategy": {"type": "All"}},
                    {
                        "name": "rest",
                        "rolloutStrategy": {
                            "type": "Progressive",
                            "progressive": {"maxConcurrency": 1},
                        },
                    },
                ],
                "manifestWorkTemplate": {"workload": {"manifests": [DEPLOYMENT]}},
            }
        )
    )
    plan = world.plan_all({"canary": ["a", "b"], "rest": ["b", "c", "d"]})
    assert plan.apply == ("a", "b", "c")
    assert {c.cluster: c.placement for c in plan.clusters} == {
        "a": "canary",
        "b": "canary",
        "c": "rest",
        "d": "rest",
    }
    document = plan.status_document()
    assert [p["name"] for p in document["placementsSummary"]] == ["canary", "rest"]
    assert (
        document["placementsSummary"][1]["availableDecisionGroups"] == "1 (1 / 2 clusters applied)"
    )
    assert document["summary"]["total"] == 4


def test_the_status_round_trips_and_keeps_since() -> None:
    world = World(progressive(maxConcurrency=1))
    plan = world.plan("a", "b")
    document = plan.status_document()
    assert document["rollout"]["clusters"] == [
        {
            "cluster": "a",
            "status": "Progressing",
            "since": rfc3339(T0),
            "placement": "web",
            "message": "written now",
        },
        {"cluster": "b", "status": "ToApply", "since": rfc3339(T0), "placement": "web"},
    ]
    previous = previous_rollout(document)
    assert previous["b"] == ClusterRollout(cluster="b", status="ToApply", since=T0)
    world.tick(100)
    later = plan_rollout(
        workset=world.workset,
        decisions={"web": [Decision(cluster="a"), Decision(cluster="b")]},
        works=world.states(),
        now=world.now,
        previous=previous,
    )
    assert next(c for c in later.clusters if c.cluster == "b").since == T0
    assert (
        previous_rollout({"rollout": {"clusters": [1, {"cluster": "x", "status": "Nope"}]}}) == {}
    )
    assert previous_rollout("junk") == {}


def test_no_decisions_and_missing_placements_are_said() -> None:
    world = World(parse_spec(spec()))
    plan = world.plan()
    assert (plan.phase, plan.message) == ("Succeeded", "no cluster is chosen")
    conditions = {c["type"]: c for c in workset_conditions(plan, generation=3, now=T0)}
    assert conditions["PlacementVerified"]["reason"] == "PlacementDecisionEmpty"
    missing = workset_conditions(plan, generation=3, now=T0, missing_placements=["web"])
    assert missing[0]["reason"] == "PlacementDecisionNotFound"
    assert missing[0]["observedGeneration"] == 3


def test_work_state_from_a_stored_status() -> None:
    status = {
        "conditions": [
            {
                "type": "Applied",
                "status": "True",
                "observedGeneration": 4,
                "lastTransitionTime": rfc3339(T0),
            },
            {
                "type": "Available",
                "status": "True",
                "observedGeneration": 4,
                "lastTransitionTime": rfc3339(T0 + 9),
            },
            {
                "type": "Degraded",
                "status": "True",
                "observedGeneration": 4,
                "lastTransitionTime": rfc3339(T0 + 20),
                "message": "refused",
            },
        ]
    }
    state = WorkState.from_status(status, generation=4, current=True, updated_at=T0)
    assert (state.observed, state.applied, state.available, state.degraded) == (
        True,
        True,
        True,
        True,
    )
    assert (state.available_since, state.degraded_since, state.message) == (
        T0 + 9,
        T0 + 20,
        "refused",
    )
    stale = WorkState.from_status(status, generation=5, current=True, updated_at=T0)
    assert not stale.observed
    empty = WorkState.from_status({}, generation=1, current=False, updated_at=None)
    assert (empty.observed, empty.available, empty.current) == (False, False, False)


# ---------------------------------------------------------------- invariants, on random worlds

CLUSTERS = ("a", "b", "c", "d", "e")


@st.composite
def strategies(draw: st.DrawFn) -> WorkSetSpec:
    kind = draw(st.sampled_from(["All", "Progressive"]))
    if kind == "All":
        return parse_spec(spec({"type": "All"}))
    config = {
        "maxConcurrency": draw(st.sampled_from([1, 2, 3, "40%"])),
        "minSuccessTime": draw(st.sampled_from(["0", "10s", "1m"])),
        "progressDeadline": draw(st.sampled_from(["None", "30s", "2m"])),
        "maxFailures": draw(st.sampled_from([0, 1, "50%"])),
    }
    return progressive(**config)


def agents_report(world: World, rng: random.Random, *, regress: bool = False) -> bool:
    """Agents report on the Works they hold; True if a good one fell back.

    A Work written is seen once (Available, Degraded or neither), a bad one may heal later,
    and with ``regress`` a good one may fall back.
    """
    fell = False
    for name, written in sorted(world.works.items()):
        roll = rng.random()
        if not written.observed:
            if roll < 0.5:
                world.report(name, available=rng.random() < 0.8, degraded=rng.random() < 0.2)
        elif not written.available or written.degraded:
            if roll < 0.3:
                world.report(name)
        elif regress and roll < 0.05:
            world.report(name, available=False, degraded=True)
            fell = True
    return fell


@pytest.mark.parametrize("fall_back", [False, True], ids=["forward", "with-fall-backs"])
@settings(max_examples=100, deadline=None)
@given(
    strategies(),
    st.integers(0, 2**32),
    st.lists(st.sampled_from([0, 5, 20, 70]), min_size=5, max_size=25),
)
def test_never_more_in_flight_than_max_concurrency(
    fall_back: bool,  # noqa: FBT001 - a pytest parameter
    workset: WorkSetSpec,
    seed: int,
    steps: list[int],
) -> None:
    """Strictly while clusters only move forward; with fall backs, nothing starts when full."""
    world = World(workset)
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    chosen = CLUSTERS[: rng.randint(1, len(CLUSTERS))]
    regressed = False
    for step in steps:
        world.tick(step)
        if rng.random() < 0.1:
            world.revision += 1
        plan = world.plan(*chosen)
        (placement,) = plan.placements
        busy = sum(1 for c in plan.clusters if c.status in {"Progressing", "Failed"})
        if plan.apply or not regressed:  # only a fall back may overfill, and then none starts
            assert busy <= placement.max_concurrency
        if plan.phase == "Halted":
            assert plan.apply == ()
            assert placement.failures > placement.max_failures
        if workset.placement_refs[0].rollout.type == "All":
            assert set(plan.apply) == {c.cluster for c in plan.clusters if c.cluster in plan.apply}
            assert not any(c.status == "ToApply" for c in plan.clusters)
        if plan.wake_at is not None:
            assert plan.wake_at > world.now
        regressed |= agents_report(world, rng, regress=fall_back)


@settings(max_examples=100, deadline=None)
@given(
    strategies(),
    st.integers(0, 2**32),
    st.lists(st.sampled_from([0, 5, 20, 70]), min_size=5, max_size=25),
)
def test_no_work_is_deleted_before_its_replacement_is_available(
    workset: WorkSetSpec, seed: int, steps: list[int]
) -> None:
    world = World(workset)
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    for step in steps:
        world.tick(step)
        chosen = [c for c in CLUSTERS if rng.random() < 0.6]
        rng.shuffle(chosen)
        before = world.states()
        plan = world.plan(*chosen)
        gaps = [c for c in chosen if not (c in before and before[c].available)]
        for cluster in plan.delete:
            assert cluster not in chosen
            assert not before[cluster].available or not gaps, (cluster, gaps)
        for removing in (c for c in plan.clusters if c.status == "Removing"):
            assert removing.cluster in world.works
        agents_report(world, rng)


@settings(max_examples=60, deadline=None)
@given(
    strategies(),
    st.integers(0, 2**32),
    st.lists(st.sampled_from([0, 5, 20, 70]), min_size=3, max_size=12),
)
def test_the_plan_depends_on_the_input_only_not_its_order(
    workset: WorkSetSpec, seed: int, steps: list[int]
) -> None:
    world = World(workset)
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    for step in steps:
        world.tick(step)
        chosen = [
            Decision(cluster=c, group_index=rng.randint(0, 1))
            for c in CLUSTERS
            if rng.random() < 0.7
        ]
        states = world.states()
        shuffled = list(states.items())
        rng.shuffle(shuffled)
        plans = [
            plan_rollout(
                workset=workset,
                decisions={"web": chosen},
                works=works,
                now=world.now,
                previous=world.previous,
            )
            for works in (states, dict(shuffled))
        ]
        assert plans[0] == plans[1]
        world.plan(*((d.cluster, d.group_index) for d in chosen))
        agents_report(world, rng)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
rollout_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["All", "Progressive", "x"]),
        "progressive": st.fixed_dictionaries(
            {},
            optional={
                "maxConcurrency": st.sampled_from([0, 1, -1, "0%", "50%", "101%", "2", True]),
                "minSuccessTime": st.sampled_from(["0", "30s", "1h30m", "s", 5, "None"]),
                "progressDeadline": st.sampled_from(["None", "10m", "", "1d", None]),
                "maxFailures": st.sampled_from([0, 3, "100%", "x%", 1.5]),
            },
        )
        | json_values,
    },
)
workset_like: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "placementRefs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["web", "web", "Web", ""])},
                optional={"rolloutStrategy": rollout_like},
            ),
            max_size=3,
        )
        | json_values,
        "manifestWorkTemplate": st.just({"workload": {"manifests": [DEPLOYMENT]}}) | json_values,
        "overrides": st.lists(st.just({"mergePatch": {}}) | json_values, max_size=2),
    },
)


@given(workset_like | json_values)
def test_any_workset_spec_is_taken_or_refused_with_problems(value: object) -> None:
    problems: list[tuple[str, str]] = []
    try:
        parsed = parse_spec(value)
    except SpecError as error:
        problems = error.problems
        assert problems, "a refusal must say why"
        assert all(path.startswith("/spec") for path, _ in problems)
    else:
        assert parsed.placement_refs
        assert len({ref.name for ref in parsed.placement_refs}) == len(parsed.placement_refs)


def test_a_percentage_of_failures_is_of_the_chosen_clusters_rounded_up() -> None:
    world = World(progressive(maxConcurrency="100%", maxFailures="50%"))  # of 3: 1.5 -> 2
    assert world.plan("a", "b", "c").apply == ("a", "b", "c")
    world.report("a", available=False, degraded=True)
    world.report("b", available=False, degraded=True)
    assert world.plan("a", "b", "c").phase == "Progressing"
    world.report("c", available=False, degraded=True)
    halted = world.plan("a", "b", "c")
    assert halted.phase == "Halted"
    assert halted.message.startswith("halted: 3 of 3 clusters failed (maxFailures 50%): a: ")

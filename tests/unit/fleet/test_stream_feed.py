"""The cloud end of the fleet stream decides what to send and which statuses to keep."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet_model import wire
from tunnel_server.fleet.hub.stream_feed import ClusterFeed, Held, status_fields


@dataclass(frozen=True)
class Work:
    name: str
    resource_version: int
    generation: int = 1
    cluster: str = "a"
    policy: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec: dict[str, Any] = {"clusterName": self.cluster, "workload": {"manifests": []}}
        if self.policy is not None:
            spec["deleteOption"] = {"propagationPolicy": self.policy}
        return spec

    def document(self) -> dict[str, Any]:
        return {
            "apiVersion": "fleet.edgefleet.io/v1alpha1",
            "kind": "Work",
            "metadata": {
                "name": self.name,
                "resourceVersion": str(self.resource_version),
                "generation": self.generation,
            },
            "spec": dict(self.spec),
            "status": {"conditions": []},
        }


def names(messages: list[wire.CloudMessage]) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for message in messages:
        if isinstance(message, wire.WorkMessage):
            out.append(("work", message.name, str(message.resource_version)))
        elif isinstance(message, wire.Delete):
            out.append(("delete", message.work, message.propagation_policy))
    return out


def test_hello_gets_what_the_agent_lacks_or_holds_older_and_deletes_for_the_gone() -> None:
    feed = ClusterFeed("a")
    feed.hello({"same": 5, "older": 3, "gone": 9})
    current = [Work("same", 5), Work("older", 7, generation=2), Work("new", 8)]
    assert names(feed.resync(list(current))) == [
        ("work", "new", "8"),
        ("work", "older", "7"),
        ("delete", "gone", None),  # deleted while away: the agent uses its copy's policy
    ]
    assert feed.held == {"same": Held(5, 1), "older": Held(7, 2), "new": Held(8, 1)}


def test_pushed_works_carry_no_status() -> None:
    feed = ClusterFeed("a")
    (message,) = feed.changed(Work("w", 4))
    assert isinstance(message, wire.WorkMessage)
    assert "status" not in message.document
    # and what is sent always passes the agent's decoder
    assert wire.Decoder(sender="cloud").feed(wire.encode(message)) == [message]


def test_a_status_only_write_is_not_sent_again() -> None:
    feed = ClusterFeed("a")
    feed.changed(Work("w", 4, generation=1))
    assert feed.changed(Work("w", 6, generation=1)) == []
    assert names(feed.changed(Work("w", 9, generation=2))) == [("work", "w", "9")]


def test_other_clusters_works_are_not_sent_and_a_moved_work_is_deleted() -> None:
    feed = ClusterFeed("a")
    assert feed.changed(Work("b-only", 3, cluster="b")) == []
    feed.changed(Work("w", 4, policy="Orphan"))
    assert names(feed.changed(Work("w", 5, generation=2, cluster="b", policy="Orphan"))) == [
        ("delete", "w", "Orphan")
    ]
    assert "w" not in feed.held


def test_a_deleted_work_is_deleted_with_its_policy_once() -> None:
    feed = ClusterFeed("a")
    feed.changed(Work("w", 4))
    assert names(feed.deleted(Work("w", 4))) == [("delete", "w", "Foreground")]
    assert feed.deleted(Work("w", 4)) == []


def test_a_resync_after_an_expired_log_sends_only_what_changed() -> None:
    feed = ClusterFeed("a")
    feed.hello({})
    feed.resync([Work("x", 2), Work("y", 3)])
    # Later: y's status was written (rv 10, same generation), x's spec changed, z is new.
    again = feed.resync([Work("x", 11, generation=2), Work("y", 10), Work("z", 12)])
    assert names(again) == [("work", "x", "11"), ("work", "z", "12")]


def test_status_is_kept_only_for_the_version_the_agent_was_given_at_the_current_spec() -> None:
    feed = ClusterFeed("a")
    feed.changed(Work("w", 4, generation=1))
    assert feed.status_applies(Work("w", 4, generation=1), 4) == "current"
    # A status write moved the rv; the agent's status still describes generation 1.
    assert feed.status_applies(Work("w", 7, generation=1), 4) == "current"
    # The spec changed (generation 2, not yet applied there): its old status is stale.
    assert feed.status_applies(Work("w", 8, generation=2), 4) == "stale"
    assert feed.status_applies(Work("w", 4), 3) == "stale"
    assert feed.status_applies(None, 4) == "unknown_work"
    assert feed.status_applies(Work("w", 4, cluster="b"), 4) == "unknown_work"


def test_a_hello_version_that_is_not_current_gets_no_status_until_resent() -> None:
    feed = ClusterFeed("a")
    feed.hello({"w": 3})
    assert feed.status_applies(Work("w", 5), 3) == "stale"
    feed.resync([Work("w", 5)])
    assert feed.status_applies(Work("w", 5), 5) == "current"


def test_a_work_only_its_status_moved_is_not_resent_when_the_hello_says_its_generation() -> None:
    feed = ClusterFeed("a")
    feed.hello({"status-moved": 3, "spec-moved": 3}, {"status-moved": 1, "spec-moved": 1})
    current = [Work("status-moved", 9, generation=1), Work("spec-moved", 9, generation=2)]
    assert names(feed.resync(list(current))) == [("work", "spec-moved", "9")]
    # A status the agent made from the copy it holds still describes the current spec.
    assert feed.status_applies(current[0], 3) == "current"
    # An older agent says no generations: everything not at the current version is resent.
    old = ClusterFeed("a")
    old.hello({"status-moved": 3})
    assert names(old.resync([current[0]])) == [("work", "status-moved", "9")]


def test_removed_forgets() -> None:
    feed = ClusterFeed("a")
    feed.hello({"w": 3})
    feed.removed("w")
    assert feed.held == {}


def test_works_over_the_cap_wait() -> None:
    feed = ClusterFeed("a")
    works = [Work(f"w{i:05d}", i + 1) for i in range(wire.MAX_WORKS + 3)]
    assert len(feed.resync(list(works))) == wire.MAX_WORKS
    assert feed.changed(Work("late", 99_999)) == []


def test_only_status_fields_are_written() -> None:
    status = {"conditions": [], "observedGeneration": 2, "spec": {"evil": 1}, "x": 1}
    assert status_fields(status) == {"conditions": [], "observedGeneration": 2}

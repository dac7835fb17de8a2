"""Edge/cloud sync: exactly-once changes, the conflict rule, and convergence."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import (
    MAX_PENDING_KEYS,
    DocumentError,
    JsonObject,
    JsonValue,
    LimitExceededError,
    Replica,
    Role,
    Section,
    SequenceGapError,
    TwinChange,
    VersionConflictError,
    apply_change,
    builtin_model,
    write_change,
)
from tests.unit.device_models.strategies import patches

DESIRED, REPORTED = Section.DESIRED, Section.REPORTED


def edge() -> Replica:
    return Replica(origin="edge-1", role=Role.EDGE)


def cloud() -> Replica:
    return Replica(origin="cloud", role=Role.CLOUD)


def deliver(replica: Replica, *changes: TwinChange) -> Replica:
    for change in changes:
        replica = apply_change(replica, change).replica
    return replica


def state(replica: Replica) -> dict[str, JsonValue]:
    """What must converge: values and per-key metadata (not $version or the root stamp)."""
    result: dict[str, JsonValue] = {}
    for section in Section:
        part = replica.twin.section(section)
        metadata = {key: value for key, value in part.metadata.items() if key != "$lastUpdated"}
        result[str(section)] = {"values": dict(part.values), "metadata": metadata}
    return result


def test_after_an_outage_desired_goes_to_the_cloud_and_reported_to_the_edge() -> None:
    """Both sides edit both sections of the same twin while the link is down."""
    e, c = edge(), cloud()
    e, e1 = write_change(e, REPORTED, {"temp": 20.5, "mode": "eco"}, now=10)
    c, c1 = write_change(c, DESIRED, {"sp": 21, "fan": "low"}, now=11)
    # Link up: everything so far has been seen by both.
    e, c = deliver(e, c1), deliver(c, e1)
    # Outage: conflicting edits on both sides, plus edits nobody else touches.
    e, e2 = write_change(e, DESIRED, {"sp": 25, "light": "on"}, now=20)  # local override
    e, e3 = write_change(e, REPORTED, {"temp": 22.0, "mode": None}, now=21)
    c, c2 = write_change(c, DESIRED, {"sp": 19, "fan": None}, now=22)
    c, c3 = write_change(c, REPORTED, {"temp": -1, "note": "set by an operator"}, now=23)
    # Link back: queues drain in whatever order.
    c_result = apply_change(c, e2)
    assert c_result.overridden == ("sp",)  # the cloud keeps its own desired sp
    c = deliver(c_result.replica, e3)
    e_result = apply_change(e, c2)
    assert e_result.overridden == ()  # the edge yields desired...
    assert e_result.patch == {"sp": 19, "fan": None}  # ...and learns what to tell the device
    e_result = apply_change(e_result.replica, c3)
    assert e_result.overridden == ("temp",)  # ...but keeps its reported temp
    e = e_result.replica
    assert state(e) == state(c)
    assert dict(e.twin.desired.values) == {"sp": 19, "light": "on"}
    assert dict(e.twin.reported.values) == {"temp": 22.0, "note": "set by an operator"}


def test_a_write_made_after_seeing_the_other_side_wins_whoever_made_it() -> None:
    e, c = edge(), cloud()
    c, c1 = write_change(c, DESIRED, {"sp": 21}, now=1)
    e = deliver(e, c1)
    e, e1 = write_change(e, DESIRED, {"sp": 23}, now=2)  # the edge saw 21 and changed it
    c = deliver(c, e1)
    assert c.twin.desired.values == {"sp": 23}
    assert state(c) == state(e)


def test_redelivery_and_echoes_change_nothing() -> None:
    e, c = edge(), cloud()
    e, e1 = write_change(e, REPORTED, {"temp": 1}, now=1)
    first = apply_change(c, e1)
    assert first.applied
    again = apply_change(first.replica, e1)
    assert not again.applied
    assert again.replica is first.replica
    assert again.patch == {}
    echoed = apply_change(e, e1)  # our own change coming back
    assert not echoed.applied
    assert echoed.replica is e


def test_a_gap_in_an_origins_sequence_is_refused() -> None:
    e, c = edge(), cloud()
    e, _ = write_change(e, REPORTED, {"temp": 1}, now=1)
    e, e2 = write_change(e, REPORTED, {"temp": 2}, now=2)
    with pytest.raises(SequenceGapError) as caught:
        apply_change(c, e2)
    assert str(caught.value.problems[0]) == "seq: change edge-1#2 arrived but edge-1#1 is next"


def test_write_change_honours_expected_version() -> None:
    c, _ = write_change(cloud(), DESIRED, {"sp": 1}, now=1, expected_version=0)
    with pytest.raises(VersionConflictError):
        write_change(c, DESIRED, {"sp": 2}, now=2, expected_version=0)


def test_change_and_replica_json_round_trip() -> None:
    e, c = edge(), cloud()
    e, e1 = write_change(e, REPORTED, {"cfg": {"a": [1, None]}, "gone": None}, now=1.5)
    c = deliver(c, e1)
    c, _ = write_change(c, DESIRED, {"sp": 20}, now=2)
    assert e1.to_json() == {
        "origin": "edge-1",
        "seq": 1,
        "role": "edge",
        "section": "reported",
        "at": 1.5,
        "seen": {},
        "values": {"cfg": {"a": [1, None]}, "gone": None},
        "metadata": {"cfg": {"$lastUpdated": 1.5, "a": {"$lastUpdated": 1.5}}},
    }
    assert TwinChange.from_json(e1.to_json()) == e1
    assert Replica.from_json(c.to_json()) == c
    assert c.to_json()["pending"] == {"desired": {"sp": 1}, "reported": {}}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        ({"seq": 0}, "seq: must be an integer >= 1 (got int)"),
        (
            {"origin": "no spaces"},
            (
                "origin: must be 1 to 128 of letters, digits and ._:/@- "
                "starting with a letter or digit"
            ),
        ),
        ({"role": "fog"}, "role: must be one of edge, cloud (got string)"),
        ({"metadata": {}}, "metadata.temp: must be an object with $lastUpdated (got null)"),
        ({"values": {"temp": {"x": None}}}, "values.temp.x: null is not a value (it deletes)"),
        (
            {"extra": 1},
            (
                "extra: unknown field (expected at, metadata, origin, role, section, seen, seq, "
                "values)"
            ),
        ),
    ],
)
def test_change_from_json_explains_what_is_wrong(mutate: JsonObject, expected: str) -> None:
    _, change = write_change(edge(), REPORTED, {"temp": 1}, now=1)
    document = change.to_json() | mutate
    with pytest.raises(DocumentError) as caught:
        TwinChange.from_json(document)
    assert str(caught.value.problems[0]) == expected


# ----------------------------------------------------------------- random interleavings


@dataclass
class Link:
    """One direction of the link: an outbox delivered in order, at least once."""

    queue: list[TwinChange] = field(default_factory=list)
    delivered: int = 0


@dataclass
class World:
    replicas: dict[Role, Replica]
    links: dict[Role, Link]  # keyed by the sender

    def write(self, role: Role, section: Section, patch: JsonObject, now: float) -> None:
        before = self.replicas[role]
        after, change = write_change(before, section, patch, now=now)
        assert_version_step(before, after, section, 1)
        self.replicas[role] = after
        self.links[role].queue.append(change)

    def deliver(self, sender: Role, *, redeliver: bool) -> None:
        link = self.links[sender]
        receiver = Role.CLOUD if sender is Role.EDGE else Role.EDGE
        before = self.replicas[receiver]
        if redeliver and link.delivered:
            result = apply_change(before, link.queue[link.delivered - 1])
            assert not result.applied
            assert result.replica is before
            return
        if link.delivered == len(link.queue):
            return
        change = link.queue[link.delivered]
        result = apply_change(before, change)
        assert result.applied
        assert_version_step(before, result.replica, change.section, 1)
        self.replicas[receiver] = result.replica
        link.delivered += 1

    def drain(self) -> None:
        for sender in Role:
            while self.links[sender].delivered < len(self.links[sender].queue):
                self.deliver(sender, redeliver=False)


def assert_version_step(before: Replica, after: Replica, section: Section, step: int) -> None:
    other = REPORTED if section is DESIRED else DESIRED
    assert after.twin.section(section).version == before.twin.section(section).version + step
    assert after.twin.section(other).version == before.twin.section(other).version


operations = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(Role), st.sampled_from(Section), patches),
    st.tuples(st.just("deliver"), st.sampled_from(Role), st.booleans()),
)


@settings(max_examples=100, deadline=None)
@given(program=st.lists(operations, max_size=30))
def test_edge_and_cloud_converge_whatever_the_interleaving(
    program: list[tuple[object, ...]],
) -> None:
    world = World(
        replicas={Role.EDGE: edge(), Role.CLOUD: cloud()},
        links={Role.EDGE: Link(), Role.CLOUD: Link()},
    )
    for now, operation in enumerate(program):
        match operation:
            case ("write", Role() as role, Section() as section, dict() as patch):
                world.write(role, section, patch, now)
            case ("deliver", Role() as sender, bool() as redeliver):
                world.deliver(sender, redeliver=redeliver)
    world.drain()
    edge_state, cloud_state = world.replicas[Role.EDGE], world.replicas[Role.CLOUD]
    assert state(edge_state) == state(cloud_state)
    # Round trips through JSON keep everything, so a restart in between would not matter.
    assert Replica.from_json(edge_state.to_json()) == edge_state
    assert Replica.from_json(cloud_state.to_json()) == cloud_state


@settings(max_examples=50, deadline=None)
@given(
    edge_patches=st.lists(patches, min_size=1, max_size=4),
    cloud_patches=st.lists(patches, min_size=1, max_size=4),
    section=st.sampled_from(Section),
)
def test_fully_concurrent_writes_resolve_to_the_authority(
    edge_patches: list[JsonObject], cloud_patches: list[JsonObject], section: Section
) -> None:
    """Nobody sees anything until both are done: every shared key ends as the authority left it."""
    e, c = edge(), cloud()
    edge_changes, cloud_changes = [], []
    for now, patch in enumerate(edge_patches):
        e, change = write_change(e, section, patch, now=now)
        edge_changes.append(change)
    for now, patch in enumerate(cloud_patches):
        c, change = write_change(c, section, patch, now=now)
        cloud_changes.append(change)
    winner = c if section is DESIRED else e
    winner_values = dict(winner.twin.section(section).values)
    touched_by_winner = {
        key for patch in (cloud_patches if section is DESIRED else edge_patches) for key in patch
    }
    e, c = deliver(e, *cloud_changes), deliver(c, *edge_changes)
    assert state(e) == state(c)
    final = c.twin.section(section).values
    for key in touched_by_winner:
        assert final.get(key) == winner_values.get(key)


def test_a_replica_checks_its_identity() -> None:
    with pytest.raises(DocumentError, match="origin: must be 1 to 128"):
        Replica(origin="", role=Role.EDGE)


def test_plain_strings_work_where_enums_are_expected() -> None:
    replica, change = write_change(edge(), "desired", {"sp": 1}, now=1)  # type: ignore[arg-type]  # an untyped caller
    assert replica.twin.desired.values == {"sp": 1}
    assert change.section == DESIRED


def test_a_peers_change_can_be_checked_against_the_model() -> None:
    thermostat = builtin_model("thermostat")
    _, change = write_change(cloud(), DESIRED, {"setpoint": 21, "mode": None}, now=1)
    assert thermostat.validate_desired(change.values) == {"setpoint": 21, "mode": None}


def test_unacknowledged_keys_are_bounded() -> None:
    deletes: JsonObject = {f"k{index}": None for index in range(MAX_PENDING_KEYS + 1)}
    with pytest.raises(LimitExceededError, match="not yet seen by the peer"):
        write_change(edge(), REPORTED, deletes, now=1)


def test_an_unknown_section_is_a_library_error() -> None:
    with pytest.raises(DocumentError, match="section: must be one of desired, reported"):
        write_change(edge(), "tags", {}, now=1)  # type: ignore[arg-type]  # an untyped caller

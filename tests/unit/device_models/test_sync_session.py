"""The twin sync session as synchronous scripts: both roles, every rule, a hostile peer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import Role
from device_models import sync_wire as wire
from device_models.sync_session import (
    MAX_WINDOW,
    Ack,
    Batch,
    BatchAck,
    BatchError,
    Change,
    Command,
    Hello,
    LocalProtocolError,
    RemoteProtocolError,
    StreamEnded,
    SyncSession,
    Welcome,
)
from tests.unit.device_models.sync_pair import MAX_BYTES, SyncPair, session

FUZZ = settings(max_examples=200, deadline=None)


def raw(message: dict[str, Any]) -> bytes:
    """A message framed as a hostile or buggy peer would write it."""
    return wire.encode(message, max_bytes=MAX_BYTES)


def hello_cloud(**fields: Any) -> SyncSession:
    cloud = session(Role.CLOUD)
    message = {"type": "hello", "version": 1, "origin": "node1.b", "window": 4} | fields
    cloud.receive_data(raw(message))
    return cloud


# ---------------------------------------------------------------------- handshake


def test_the_handshake_opens_both_ends_with_the_smaller_window() -> None:
    pair = SyncPair(edge_window=8, cloud_window=3)
    assert pair.edge.open
    assert pair.cloud.open
    assert pair.cloud.peer_origin == "node1.boot1"
    assert pair.edge.peer_origin == "cloud.1"
    assert pair.cloud.window == 3
    assert pair.edge.window == 8  # what the edge accepts; the cloud keeps to the smaller


def test_the_handshake_survives_any_chunking() -> None:
    pair = SyncPair(handshake=False)
    pair.send(pair.edge, Hello(origin="n.b", window=2))
    assert pair.to_cloud(chunk=1) == [Hello(origin="n.b", window=2)]
    pair.send(pair.cloud, Welcome(origin="c"))
    assert pair.to_edge(chunk=3) == [Welcome(origin="c")]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"version": 9}, "version 9 is not supported"),
        ({"origin": 5}, "hello needs the agent's origin"),
        ({"window": 0}, "window must be an integer"),
        ({"window": MAX_WINDOW + 1}, "window must be an integer"),
        ({"window": True}, "window must be an integer"),
    ],
)
def test_the_cloud_refuses_a_bad_hello(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        hello_cloud(**fields)


def test_the_first_message_must_be_a_hello() -> None:
    cloud = session(Role.CLOUD)
    with pytest.raises(RemoteProtocolError, match="first message must be a hello"):
        cloud.receive_data(raw({"type": "batch", "id": 1, "records": [{}]}))
    with pytest.raises(LocalProtocolError, match="broken"):
        cloud.receive_data(raw({"type": "hello"}))


def test_an_end_before_the_hello_is_the_agents_fault() -> None:
    with pytest.raises(RemoteProtocolError, match="first message must be a hello"):
        session(Role.CLOUD).receive_data(b"")


def test_the_edge_wants_a_welcome_of_its_version() -> None:
    edge = session(Role.EDGE)
    edge.send(Hello(origin="n.b", window=4))
    with pytest.raises(RemoteProtocolError, match="did not answer the hello with a welcome"):
        edge.receive_data(raw({"type": "change", "id": 1}))
    edge = session(Role.EDGE)
    edge.send(Hello(origin="n.b", window=4))
    with pytest.raises(RemoteProtocolError, match="the cloud speaks version 2"):
        edge.receive_data(raw({"type": "welcome", "version": 2, "origin": "c"}))
    edge = session(Role.EDGE)
    edge.send(Hello(origin="n.b", window=4))
    with pytest.raises(RemoteProtocolError, match="did not answer the hello with a welcome"):
        edge.receive_data(b"")


def test_a_long_cloud_origin_is_cut() -> None:
    edge = session(Role.EDGE)
    edge.send(Hello(origin="n.b", window=4))
    edge.receive_data(raw({"type": "welcome", "version": 1, "origin": "c" * 500}))
    assert edge.peer_origin == "c" * 160


def test_nothing_but_the_handshake_may_be_sent_before_it() -> None:
    edge, cloud = session(Role.EDGE), session(Role.CLOUD)
    with pytest.raises(LocalProtocolError, match="cannot send batch"):
        edge.send_batches([{"outboxId": 1}])
    with pytest.raises(LocalProtocolError, match="cannot send welcome"):
        cloud.send(Welcome(origin="c"))
    with pytest.raises(LocalProtocolError, match="cannot send hello"):
        cloud.send(Hello(origin="c", window=1))
    cloud = hello_cloud()
    with pytest.raises(LocalProtocolError, match="cannot send change"):
        cloud.send(Change(id=1))
    with pytest.raises(LocalProtocolError, match="window must be in"):
        session(Role.EDGE).send(Hello(origin="n.b", window=0))


# ---------------------------------------------------------------------- uplink


def test_batches_cross_and_every_answer_reaches_the_edge() -> None:
    pair = SyncPair()
    records = [{"outboxId": i} for i in range(1, 4)]
    assert pair.send_batches(records) == [1]
    assert pair.to_cloud() == [Batch(id=1, records=records)]
    pair.send(pair.cloud, BatchAck(id=1, body={"applied": 3}))
    assert pair.to_edge() == [BatchAck(id=1, body={"applied": 3})]
    assert pair.send_batches(records[:1]) == [2]
    pair.to_cloud()
    pair.send(pair.cloud, BatchError(id=2, error="unavailable", message="disk full"))
    assert pair.to_edge() == [BatchError(id=2, error="unavailable", message="disk full")]
    assert not pair.edge.batches_in_flight
    assert not pair.cloud.batches_in_flight


def test_big_batches_are_split_and_numbered_in_order() -> None:
    pair = SyncPair()
    records = [{"outboxId": i, "pad": "z" * 300} for i in range(1, 40)]
    ids = pair.send_batches(records)
    assert len(ids) > 1
    assert ids == list(range(1, len(ids) + 1))
    events = pair.to_cloud(chunk=97)
    assert [r for e in events if isinstance(e, Batch) for r in e.records] == records


def test_the_cloud_answers_only_batches_it_got() -> None:
    pair = SyncPair()
    with pytest.raises(LocalProtocolError, match="batch 1 is not waiting"):
        pair.cloud.send(BatchAck(id=1))


def test_stray_and_abandoned_answers_are_dropped() -> None:
    pair = SyncPair()
    assert pair.edge.receive_data(raw({"type": "batch-ack", "id": 7})) == []
    assert pair.edge.receive_data(raw({"type": "batch-ack", "id": "x"})) == []
    pair.send_batches([{"outboxId": 1}])
    pair.to_cloud()
    pair.edge.abandon_batches([1])  # the edge's wait timed out
    pair.send(pair.cloud, BatchAck(id=1))
    assert pair.to_edge() == []


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "batch", "id": "1", "records": [{}]}, "integer id"),
        ({"type": "batch", "id": 1, "records": []}, "non-empty list"),
        ({"type": "batch", "id": 1, "records": {}}, "non-empty list"),
        ({"type": "batch", "id": 1, "records": [{}] * 17}, "at most 16 records"),
        ({"type": "change", "id": 1}, "unexpected message type 'change'"),
    ],
)
def test_the_cloud_refuses_a_bad_batch(message: dict[str, Any], reason: str) -> None:
    pair = SyncPair()
    with pytest.raises(RemoteProtocolError, match=reason):
        pair.cloud.receive_data(raw(message))


# ---------------------------------------------------------------------- downlink


def test_changes_and_commands_go_down_within_the_window_and_are_acked() -> None:
    pair = SyncPair(edge_window=8, cloud_window=2)
    pair.send(pair.cloud, Change(id=1, body={"device": "d", "change": {"seq": 1}}))
    pair.send(pair.cloud, Command(id=2, body={"device": "d", "command": {"move": "n2"}}))
    assert pair.cloud.room == 0
    with pytest.raises(LocalProtocolError, match="2 changes are in flight"):
        pair.cloud.send(Change(id=3))
    pair2 = SyncPair(edge_window=8, cloud_window=2)  # the session above is broken now
    pair2.send(pair2.cloud, Change(id=1, body={"device": "d", "change": {"seq": 1}}))
    pair2.send(pair2.cloud, Command(id=2, body={"device": "d", "command": {"move": "n2"}}))
    assert pair2.to_edge(chunk=5) == [
        Change(id=1, body={"device": "d", "change": {"seq": 1}}),
        Command(id=2, body={"device": "d", "command": {"move": "n2"}}),
    ]
    pair2.send(pair2.edge, Ack(id=2, result="applied", body={"version": 3}))
    assert pair2.to_cloud() == [Ack(id=2, result="applied", body={"version": 3})]
    assert pair2.cloud.room == 1
    pair2.send(pair2.edge, Ack(id=1, result="failed", body={"error": "x", "message": "y"}))
    assert pair2.to_cloud() == [Ack(id=1, result="failed", body={"error": "x", "message": "y"})]
    assert pair2.cloud.in_flight == 0
    assert pair2.edge.in_flight == 0


def test_a_cloud_that_overruns_the_window_breaks_the_protocol() -> None:
    pair = SyncPair(edge_window=1, cloud_window=1)
    pair.edge.receive_data(raw({"type": "change", "id": 1}))
    with pytest.raises(RemoteProtocolError, match="more than 1 changes in flight"):
        pair.edge.receive_data(raw({"type": "change", "id": 2}))


def test_a_change_needs_an_integer_id() -> None:
    pair = SyncPair()
    with pytest.raises(RemoteProtocolError, match="a command needs an integer id"):
        pair.edge.receive_data(raw({"type": "command", "id": True}))


def test_acks_must_name_a_change_in_flight_with_a_known_result() -> None:
    pair = SyncPair()
    with pytest.raises(LocalProtocolError, match="change 5 is not in flight"):
        pair.edge.send(Ack(id=5, result="applied"))
    pair = SyncPair()
    with pytest.raises(RemoteProtocolError, match="an ack must name a change in flight"):
        pair.cloud.receive_data(raw({"type": "ack", "id": 5, "result": "applied"}))
    pair = SyncPair()
    pair.send(pair.cloud, Change(id=1))
    pair.to_edge()
    with pytest.raises(LocalProtocolError, match="ack result 'maybe'"):
        pair.edge.send(Ack(id=1, result="maybe"))
    with pytest.raises(RemoteProtocolError, match="ack result must be"):
        pair.cloud.receive_data(raw({"type": "ack", "id": 1, "result": "maybe"}))


# ---------------------------------------------------------------------- the end


def test_a_clean_end_between_messages_and_a_torn_one() -> None:
    pair = SyncPair()
    assert pair.edge.receive_data(b"") == [StreamEnded()]
    with pytest.raises(LocalProtocolError, match="ended"):
        pair.edge.receive_data(b"x")
    pair = SyncPair()
    assert pair.cloud.receive_data(raw({"type": "ack", "id": 1})[:6]) == []
    with pytest.raises(RemoteProtocolError, match="ended inside a message"):
        pair.cloud.receive_data(b"")


def test_framing_errors_are_the_peers() -> None:
    pair = SyncPair()
    with pytest.raises(RemoteProtocolError, match="not within"):
        pair.cloud.receive_data(b"\xff\xff\xff\xff")


# ---------------------------------------------------------------------- properties

# One step of a script: who acts and how.
STEPS = st.lists(
    st.one_of(
        # at most the cloud's max_batch_records (16 here), as the outbox's batches are
        st.tuples(st.just("batch"), st.integers(min_value=1, max_value=16)),
        st.tuples(st.just("answer"), st.booleans()),
        st.tuples(st.just("change"), st.booleans()),
        st.tuples(st.just("ack"), st.sampled_from(["applied", "duplicate", "failed"])),
        st.tuples(st.just("deliver"), st.integers(min_value=1, max_value=64)),
    ),
    max_size=60,
)


@FUZZ
@given(STEPS, st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=5))
def test_any_correct_script_crosses_intact_in_any_chunks(  # noqa: C901 - one branch a step
    steps: list[tuple[str, Any]], edge_window: int, cloud_window: int
) -> None:
    pair = SyncPair(edge_window=edge_window, cloud_window=cloud_window)
    sent: dict[Role, list[Any]] = {Role.EDGE: [], Role.CLOUD: []}
    got: dict[Role, list[Any]] = {Role.EDGE: [], Role.CLOUD: []}
    next_row = 1
    batches_got: list[int] = []
    changes_got: list[int] = []

    def deliver(chunk: int) -> None:
        for event in pair.to_cloud(chunk=chunk):
            got[Role.CLOUD].append(event)
            if isinstance(event, Batch):
                batches_got.append(event.id)
        for event in pair.to_edge(chunk=chunk):
            got[Role.EDGE].append(event)
            if isinstance(event, Change | Command):
                changes_got.append(event.id)

    for action, value in steps:
        if action == "batch":
            records = [{"outboxId": i, "pad": "p" * 50} for i in range(value)]
            ids = pair.send_batches(records)
            sent[Role.EDGE] += [("batch", i) for i in ids]
        elif action == "answer" and batches_got:
            batch_id = batches_got.pop(0)
            answer = (
                BatchAck(id=batch_id) if value else BatchError(id=batch_id, error="e", message="m")
            )
            pair.send(pair.cloud, answer)
            sent[Role.CLOUD].append(answer)
        elif action == "change" and pair.cloud.room:
            change = (Command if value else Change)(id=next_row, body={"device": "d"})
            next_row += 1
            pair.send(pair.cloud, change)
            sent[Role.CLOUD].append(change)
        elif action == "ack" and changes_got:
            ack = Ack(id=changes_got.pop(0), result=value)
            pair.send(pair.edge, ack)
            sent[Role.EDGE].append(ack)
        elif action == "deliver":
            deliver(value)
    deliver(7)
    as_sent = [("batch", e.id) if isinstance(e, Batch) else e for e in got[Role.CLOUD]]
    assert as_sent == sent[Role.EDGE]
    assert got[Role.EDGE] == sent[Role.CLOUD]
    # Everything delivered: in flight are exactly the changes the edge got and did not ack.
    assert pair.cloud.in_flight == len(changes_got)
    assert pair.edge.in_flight == len(changes_got)
    assert pair.cloud.in_flight <= min(edge_window, cloud_window)
    assert pair.edge.batches_in_flight == frozenset(batches_got) | pair.cloud.batches_in_flight


@FUZZ
@given(
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=40),
    st.sampled_from(["before", "after"]),
)
def test_any_bytes_fail_only_with_a_remote_protocol_error(
    data: bytes, step: int, handshake: str
) -> None:
    pair = SyncPair(handshake=handshake == "after")
    if handshake == "before":
        pair.edge.send(Hello(origin="n.b", window=2))
    for receiver in (pair.edge, pair.cloud):
        try:
            for start in range(0, len(data), step):
                receiver.receive_data(data[start : start + step])
            receiver.receive_data(b"")
        except RemoteProtocolError:
            pass

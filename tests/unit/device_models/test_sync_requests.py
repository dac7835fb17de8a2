"""Desired requests on the sync session: the cloud's opt-in, bounds, answers; fuzzed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import Role
from device_models.sync_requests import (
    FEATURES,
    MAX_PATCH_BYTES,
    DesiredAnswer,
    DesiredRequest,
    RequestSyncSession,
    check_patch,
)
from device_models.sync_session import (
    Hello,
    LocalProtocolError,
    RemoteProtocolError,
    SyncSession,
    Welcome,
)
from device_models.sync_wire import encode

MAX_BYTES = 16 * 1024


def pair(
    *, cloud_features: frozenset[str] = FEATURES
) -> tuple[RequestSyncSession, RequestSyncSession]:
    """An open edge and cloud; the cloud advertises `cloud_features`."""
    edge = RequestSyncSession(Role.EDGE, max_message_bytes=MAX_BYTES, max_depth=8, window=4)
    cloud = RequestSyncSession(
        Role.CLOUD,
        features=cloud_features,
        max_pending=2,
        max_message_bytes=MAX_BYTES,
        max_depth=8,
        window=4,
    )
    cloud.receive_data(edge.send(Hello(origin="n1.b1", window=4)))
    edge.receive_data(cloud.send(Welcome(origin="cloud")))
    return edge, cloud


def request(request_id: int = 1, patch: object = None) -> DesiredRequest:
    body = {"on": True} if patch is None else patch
    assert isinstance(body, dict)
    return DesiredRequest(id=request_id, device="relay-1", patch=body, source="home-assistant")


def test_a_request_and_its_answer_cross() -> None:
    edge, cloud = pair()
    assert edge.accepts_requests
    assert isinstance(cloud, RequestSyncSession)
    assert cloud.receive_data(edge.send(request(7))) == []  # not a base event
    assert cloud.take_requests() == [request(7)]
    assert cloud.take_requests() == []
    edge.receive_data(cloud.send(DesiredAnswer(id=7, accepted=True, version=3)))
    assert edge.take_requests() == [DesiredAnswer(id=7, accepted=True, version=3)]
    assert edge.requests_room == 16


def test_a_refusal_carries_its_reason_and_a_stray_answer_is_dropped() -> None:
    edge, cloud = pair()
    assert isinstance(cloud, RequestSyncSession)
    cloud.receive_data(edge.send(request(1)))
    cloud.take_requests()
    edge.abandon_request(1)  # the edge gave up (a timeout)
    edge.receive_data(cloud.send(DesiredAnswer(id=1, accepted=False, reason="on is read-only")))
    assert edge.take_requests() == []
    cloud.receive_data(edge.send(request(2)))
    cloud.take_requests()
    edge.receive_data(cloud.send(DesiredAnswer(id=2, accepted=False, reason="x" * 1000)))
    [answer] = edge.take_requests()
    assert isinstance(answer, DesiredAnswer)
    assert not answer.accepted
    assert answer.reason == "x" * 256


def test_an_older_cloud_gets_no_request_and_would_reset_on_one() -> None:
    edge, _ = pair(cloud_features=frozenset())
    assert not edge.accepts_requests
    with pytest.raises(LocalProtocolError, match="does not take"):
        edge.send(request())
    # What an older cloud does with the unknown type: a protocol error (the stream resets).
    old = SyncSession(Role.CLOUD, max_message_bytes=MAX_BYTES, max_depth=8, window=4)
    old.receive_data(
        encode({"type": "hello", "version": 1, "origin": "n.b", "window": 4}, max_bytes=MAX_BYTES)
    )
    old.send(Welcome(origin="cloud"))
    raw = {"type": "desired-request", "id": 1, "device": "d", "patch": {"on": True}}
    with pytest.raises(RemoteProtocolError, match="unexpected message type"):
        old.receive_data(encode({**raw, "source": "home-assistant"}, max_bytes=MAX_BYTES))


def test_an_older_agent_ignores_the_welcome_features() -> None:
    old = SyncSession(Role.EDGE, max_message_bytes=MAX_BYTES, max_depth=8, window=4)
    cloud = RequestSyncSession(
        Role.CLOUD, features=FEATURES, max_message_bytes=MAX_BYTES, max_depth=8, window=4
    )
    cloud.receive_data(old.send(Hello(origin="n1.b1", window=4)))
    assert old.receive_data(cloud.send(Welcome(origin="cloud"))) == [Welcome(origin="cloud")]
    assert old.open


def test_bounds_are_kept_on_both_sides() -> None:
    edge, cloud = pair()
    big = {"text": "x" * MAX_PATCH_BYTES}
    with pytest.raises(LocalProtocolError, match="at most"):
        edge.send(request(1, big))
    edge, cloud = pair()
    cloud.receive_data(edge.send(request(1)))
    cloud.receive_data(edge.send(request(2)))
    with pytest.raises(RemoteProtocolError, match="in flight"):
        cloud.receive_data(edge.send(request(3)))  # the cloud's max_pending is 2
    edge, cloud = pair()
    forged = {"type": "desired-request", "id": 1, "device": "../x", "patch": {"on": True}}
    with pytest.raises(RemoteProtocolError, match="device"):
        cloud.receive_data(encode({**forged, "source": "home-assistant"}, max_bytes=MAX_BYTES))
    edge, cloud = pair()
    raw = {"type": "desired-request", "id": 1, "device": "d1", "patch": {"on": True}}
    with pytest.raises(RemoteProtocolError, match="source"):
        cloud.receive_data(encode({**raw, "source": "operator"}, max_bytes=MAX_BYTES))


def test_requests_only_once_open_and_only_one_way() -> None:
    edge, _ = pair()
    raw = {"type": "desired-request", "id": 1, "device": "d1", "patch": {"on": True}}
    with pytest.raises(RemoteProtocolError):
        edge.receive_data(encode({**raw, "source": "home-assistant"}, max_bytes=MAX_BYTES))
    fresh = RequestSyncSession(
        Role.CLOUD, features=FEATURES, max_message_bytes=MAX_BYTES, max_depth=8, window=4
    )
    with pytest.raises(RemoteProtocolError):
        fresh.receive_data(encode({**raw, "source": "home-assistant"}, max_bytes=MAX_BYTES))


def test_check_patch() -> None:
    assert check_patch({"on": True}) is None
    assert check_patch({}) is not None
    assert check_patch([1]) is not None
    assert check_patch({"x": float("nan")}) is not None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["desired-request", "desired-answer", "welcome", "change"]),
    body=st.dictionaries(
        st.sampled_from(
            ["id", "device", "patch", "source", "result", "reason", "version", "features"]
        ),
        _json,
        max_size=8,
    ),
)
def test_any_message_is_an_event_a_request_or_a_protocol_error(
    kind: str, body: dict[str, object]
) -> None:
    for receiver in pair():
        data = encode({**body, "type": kind}, max_bytes=MAX_BYTES)
        try:
            receiver.receive_data(data)
        except RemoteProtocolError:
            continue
        assert isinstance(receiver, RequestSyncSession)
        for item in receiver.take_requests():
            assert isinstance(item, DesiredRequest | DesiredAnswer)
            if isinstance(item, DesiredRequest):
                assert check_patch(item.patch) is None
                assert len(json.dumps(item.patch)) <= 2 * MAX_PATCH_BYTES

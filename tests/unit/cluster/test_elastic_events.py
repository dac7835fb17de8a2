"""The pure parts of the elastic EventRecorder: the Event it writes, its key, its rate limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.elastic.events import (
    COMPONENT,
    MAX_MESSAGE,
    EventSettings,
    TokenBucket,
    check_reason,
    clip,
    event_body,
    event_key,
    involved_object,
)

NODE = {
    "metadata": {"name": "burst-1", "uid": "u-1", "resourceVersion": "7", "labels": {"a": "b"}},
    "apiVersion": "v1",
    "kind": "Node",
}
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-2"},
}


def test_a_cluster_scoped_objects_event_lives_in_default() -> None:
    ref = involved_object(NODE)
    # No resourceVersion: one Event aggregates repeats over many versions of the node.
    assert ref == {"apiVersion": "v1", "kind": "Node", "name": "burst-1", "uid": "u-1"}
    body = event_body(
        ref,
        type_="Warning",
        reason="DrainBlocked",
        message="m",
        component=COMPONENT,
        now=0.0,
        suffix="00ff",
    )
    assert body["metadata"] == {"name": "burst-1.00ff", "namespace": "default"}
    assert body["involvedObject"] == ref
    assert body["source"] == {"component": "edgefleet-elastic"}
    assert body["count"] == 1
    assert body["firstTimestamp"] == body["lastTimestamp"] == "1970-01-01T00:00:00Z"
    assert (body["type"], body["reason"], body["message"]) == ("Warning", "DrainBlocked", "m")


def test_a_namespaced_objects_event_lives_beside_it() -> None:
    ref = involved_object(POD)
    assert ref["namespace"] == "shop"
    body = event_body(
        ref, type_="Normal", reason="R", message="m", component="c", now=0.0, suffix="1"
    )
    assert body["metadata"]["namespace"] == "shop"


def test_an_object_without_kind_or_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"kind and metadata\.name"):
        involved_object({"metadata": {"name": "x"}})
    with pytest.raises(ValueError, match=r"kind and metadata\.name"):
        involved_object({"kind": "Pod", "metadata": {}})


def test_a_long_name_still_makes_a_valid_event_name() -> None:
    ref = involved_object({"kind": "Pod", "metadata": {"name": "p" * 253, "namespace": "n"}})
    body = event_body(
        ref, type_="Normal", reason="R", message="m", component="c", now=0.0, suffix="0" * 16
    )
    assert len(body["metadata"]["name"]) == 253


def test_the_key_tells_apart_what_aggregation_must_not_merge() -> None:
    ref = involved_object(NODE)
    key = event_key(ref, type_="Warning", reason="R", message="m")
    assert key == event_key(dict(ref), type_="Warning", reason="R", message="m")
    assert key != event_key(ref, type_="Normal", reason="R", message="m")
    assert key != event_key(ref, type_="Warning", reason="R", message="other")
    assert key != event_key({**ref, "uid": "u-9"}, type_="Warning", reason="R", message="m")


@given(st.text(max_size=3000))
def test_messages_are_cut_and_cleaned(message: str) -> None:
    text = clip(message)
    assert len(text) <= MAX_MESSAGE
    assert not any(ord(c) < 32 and c not in "\t\n" for c in text)
    if len(message) <= MAX_MESSAGE and message.isprintable():
        assert text == message


def test_type_and_reason_are_checked() -> None:
    check_reason("Warning", "ProviderFailed")
    for type_, reason in (("Error", "R"), ("Normal", "lower"), ("Normal", ""), ("Normal", "A b")):
        with pytest.raises(ValueError, match="an Event's"):
            check_reason(type_, reason)
    with pytest.raises(ValueError, match="reason"):
        check_reason("Normal", "R" * 129)


def test_the_bucket_allows_a_burst_then_its_rate() -> None:
    bucket = TokenBucket(burst=3, rate=2.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)  # 0.8 of a token
    assert bucket.take(100.5)
    assert not bucket.take(100.5)
    # A long pause refills to the burst, not beyond.
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]
    # A clock that steps back takes nothing and gives nothing.
    assert not bucket.take(50.0)


def test_settings_are_checked() -> None:
    EventSettings(repeat_write_seconds=0)
    for bad in (
        {"max_tracked": 0},
        {"burst": 0},
        {"writes_per_second": 0.0},
        {"write_timeout_seconds": float("inf")},
        {"repeat_write_seconds": -1.0},
    ):
        with pytest.raises(ValueError, match="must be"):
            EventSettings(**bad)

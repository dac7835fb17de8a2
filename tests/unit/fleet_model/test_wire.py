"""The ``fleet`` stream's messages: round trips, every bound, and fuzzing of both decoders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model import wire
from fleet_model.wire import (
    HEADER,
    MAX_MESSAGE_BYTES,
    Decoder,
    Delete,
    Hello,
    LeaseRenewal,
    Removed,
    Settings,
    Status,
    WireError,
    WorkMessage,
)


def frame(message: object) -> bytes:
    body = json.dumps(message).encode()
    return HEADER.pack(len(body)) + body


def work_document(name: str = "web.a", version: str = "12") -> dict[str, Any]:
    return {
        "apiVersion": "fleet.edgefleet.io/v1alpha1",
        "kind": "Work",
        "metadata": {"name": name, "resourceVersion": version, "generation": 2},
        "spec": {"clusterName": "a", "workload": {"manifests": []}},
    }


AGENT_MESSAGES: list[wire.AgentMessage] = [
    Hello(
        works={"web.a": 12, "db": 3},
        claims={"kubernetes.version": "v1.36.3", "region": "eu-west", "fleet.edgefleet.io/x": ""},
        allocatable={"cpu": "9500m", "memory": "14Gi"},
        capacity={"cpu": "10", "memory": "16Gi"},
        apiserver_healthy=True,
    ),
    Hello(works={}),
    LeaseRenewal(apiserver_healthy=False),
    LeaseRenewal(apiserver_healthy=None, claims={"nodes": "3"}, allocatable={"cpu": "1"}),
    LeaseRenewal(apiserver_healthy=True, ready_endpoints={"demo/web:80": 2, "demo/b-1:65535": 0}),
    LeaseRenewal(apiserver_healthy=True, ready_endpoints={}),
    Status(work="web.a", resource_version=12, status={"conditions": [{"type": "Applied"}]}),
    Removed(work="web.a"),
]
CLOUD_MESSAGES: list[wire.CloudMessage] = [
    Settings(lease_duration_seconds=10),
    WorkMessage(document=work_document()),
    Delete(work="web.a", propagation_policy="Orphan"),
    Delete(work="web.a"),
]


@pytest.mark.parametrize("message", AGENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_agent_messages_round_trip(message: wire.AgentMessage) -> None:
    assert Decoder(sender="agent").feed(wire.encode(message)) == [message]


@pytest.mark.parametrize("message", CLOUD_MESSAGES, ids=lambda m: type(m).__name__)
def test_cloud_messages_round_trip(message: wire.CloudMessage) -> None:
    assert Decoder(sender="cloud").feed(wire.encode(message)) == [message]


def test_work_message_names_its_work() -> None:
    message = WorkMessage(document=work_document("x.y", "77"))
    assert (message.name, message.resource_version) == ("x.y", 77)


def test_messages_split_anywhere_are_reassembled() -> None:
    data = b"".join(wire.encode(m) for m in AGENT_MESSAGES)
    decoder = Decoder(sender="agent")
    out: list[object] = []
    for i in range(0, len(data), 7):
        out += decoder.feed(data[i : i + 7])
    assert out == AGENT_MESSAGES
    assert decoder.buffered == 0


def test_a_side_cannot_send_the_others_messages() -> None:
    with pytest.raises(WireError, match="an agent sends"):
        Decoder(sender="agent").feed(wire.encode(Settings(lease_duration_seconds=10)))
    with pytest.raises(WireError, match="the cloud sends"):
        Decoder(sender="cloud").feed(wire.encode(Removed(work="a")))


BAD_FROM_AGENT: list[tuple[object, str]] = [
    ({"type": "hello", "protocol": 2, "works": {}}, "protocol"),
    ({"type": "hello", "protocol": 1}, "works"),
    ({"type": "hello", "protocol": 1, "works": {"Not_A_Name": 1}}, "DNS-1123"),
    ({"type": "hello", "protocol": 1, "works": {"a": 0}}, "positive integer"),
    ({"type": "hello", "protocol": 1, "works": {"a": True}}, "positive integer"),
    ({"type": "hello", "protocol": 1, "works": {"a": "3"}}, "positive integer"),
    ({"type": "hello", "protocol": 1, "works": {"a": 2**63}}, "positive integer"),
    ({"type": "hello", "protocol": 1, "works": {}, "claims": {"bad name!": "x"}}, "qualified"),
    ({"type": "hello", "protocol": 1, "works": {}, "claims": {"region": 3}}, "string"),
    ({"type": "hello", "protocol": 1, "works": {}, "claims": {"a": "x" * 1025}}, "at most"),
    ({"type": "hello", "protocol": 1, "works": {}, "allocatable": {"gpu": "1"}}, "only cpu"),
    ({"type": "hello", "protocol": 1, "works": {}, "capacity": {"cpu": "1 Gi"}}, "quantity"),
    ({"type": "hello", "protocol": 1, "works": {}, "apiserverHealthy": "yes"}, "true, false"),
    ({"type": "hello", "protocol": 1, "works": {"a": 1}, "generations": []}, "generations"),
    ({"type": "hello", "protocol": 1, "works": {"a": 1}, "generations": {"b": 1}}, "does not"),
    ({"type": "hello", "protocol": 1, "works": {"a": 1}, "generations": {"a": 0}}, "positive"),
    ({"type": "lease", "apiserverHealthy": 1}, "true, false"),
    ({"type": "lease", "apiserverHealthy": True, "claims": []}, "claims"),
    ({"type": "lease", "readyEndpoints": []}, "readyEndpoints must be an object"),
    ({"type": "lease", "readyEndpoints": {"demo/web": 1}}, "namespace/name:port"),
    ({"type": "lease", "readyEndpoints": {"demo/web:0": 1}}, "namespace/name:port"),
    ({"type": "lease", "readyEndpoints": {"demo/web:65536": 1}}, "namespace/name:port"),
    ({"type": "lease", "readyEndpoints": {"demo/web:080": 1}}, "namespace/name:port"),
    ({"type": "lease", "readyEndpoints": {"Demo/web:80": 1}}, "namespace/name:port"),
    ({"type": "lease", "readyEndpoints": {"demo/a.b:80": 1}}, "namespace/name:port"),
    ({"type": "lease", "readyEndpoints": {"demo/web:80/x": 1}}, "namespace/name:port"),
    ({"type": "lease", "readyEndpoints": {"demo/web:80": -1}}, "0..1000000"),
    ({"type": "lease", "readyEndpoints": {"demo/web:80": True}}, "0..1000000"),
    ({"type": "lease", "readyEndpoints": {"demo/web:80": 1.0}}, "0..1000000"),
    ({"type": "lease", "readyEndpoints": {"demo/web:80": 10**6 + 1}}, "0..1000000"),
    (
        {"type": "lease", "readyEndpoints": {f"demo/w{i}:80": 1 for i in range(257)}},
        "at most 256",
    ),
    ({"type": "status", "work": "a", "resourceVersion": 3, "status": []}, "object"),
    ({"type": "status", "work": "a", "status": {}}, "resourceVersion"),
    ({"type": "status", "work": "../a", "resourceVersion": 3, "status": {}}, "DNS-1123"),
    ({"type": "removed"}, "removed.work"),
    ({"type": "work", "document": work_document()}, "an agent sends"),
    ({"type": 3}, "string"),
    ([1, 2], "JSON object"),
]


@pytest.mark.parametrize(("message", "error"), BAD_FROM_AGENT)
def test_bad_agent_messages_are_refused(message: object, error: str) -> None:
    with pytest.raises(WireError, match=error):
        Decoder(sender="agent").feed(frame(message))


def bad_work(**changes: Any) -> dict[str, Any]:
    document = work_document()
    for path, value in changes.items():
        *parents, last = path.split("__")
        holder = document
        for parent in parents:
            holder = holder[parent]
        holder[last] = value
    return {"type": "work", "document": document}


BAD_FROM_CLOUD: list[tuple[object, str]] = [
    ({"type": "settings", "leaseDurationSeconds": 0}, "1..3600"),
    ({"type": "settings", "leaseDurationSeconds": 3601}, "1..3600"),
    ({"type": "settings", "leaseDurationSeconds": 10.0}, "1..3600"),
    ({"type": "work", "document": []}, "object"),
    (bad_work(kind="Placement"), "Work"),
    (bad_work(metadata__name="A"), "metadata.name"),
    (bad_work(metadata__resourceVersion=12), "resourceVersion"),
    (bad_work(metadata__resourceVersion="012"), "resourceVersion"),
    (bad_work(metadata__resourceVersion="0"), "resourceVersion"),
    (bad_work(metadata__generation=-1), "generation"),
    (bad_work(spec=None), "spec"),
    (bad_work(spec__clusterName=""), "clusterName"),
    ({"type": "delete", "work": "a", "propagationPolicy": "Background"}, "propagationPolicy"),
    ({"type": "delete"}, "delete.work"),
    ({"type": "hello", "protocol": 1, "works": {}}, "the cloud sends"),
]


@pytest.mark.parametrize(("message", "error"), BAD_FROM_CLOUD)
def test_bad_cloud_messages_are_refused(message: object, error: str) -> None:
    with pytest.raises(WireError, match=error):
        Decoder(sender="cloud").feed(frame(message))


def test_works_over_the_cap_are_refused() -> None:
    works = {f"w{i}": 1 for i in range(wire.MAX_WORKS + 1)}
    with pytest.raises(WireError, match="at most 2048"):
        Decoder(sender="agent").feed(frame({"type": "hello", "protocol": 1, "works": works}))
    works.popitem()
    assert Decoder(sender="agent").feed(frame({"type": "hello", "protocol": 1, "works": works}))


def test_the_largest_hello_fits_one_message() -> None:
    works = {f"{i:04d}" + "a" * 249: wire.MAX_RESOURCE_VERSION for i in range(wire.MAX_WORKS)}
    claims = {f"fleet.edgefleet.io/c{i}": "v" * 1024 for i in range(wire.MAX_CLAIMS)}
    hello = Hello(works=works, claims=claims)
    assert Decoder(sender="agent").feed(wire.encode(hello)) == [hello]
    # Generations are optional: a hello too large with them goes without them.
    generations = dict.fromkeys(works, wire.MAX_RESOURCE_VERSION)
    assert wire.fitting(Hello(works=works, generations=generations, claims=claims)) == hello
    small = Hello(works={"a": 3}, generations={"a": 1})
    assert wire.fitting(small) is small


def test_claims_over_the_cap_are_refused() -> None:
    claims = {f"c{i}": "x" for i in range(wire.MAX_CLAIMS + 1)}
    with pytest.raises(WireError, match="at most 64"):
        Decoder(sender="agent").feed(
            frame({"type": "hello", "protocol": 1, "works": {}, "claims": claims})
        )


def test_a_length_over_the_cap_is_refused_before_the_body_arrives() -> None:
    decoder = Decoder(sender="agent")
    with pytest.raises(WireError, match="length"):
        decoder.feed(HEADER.pack(MAX_MESSAGE_BYTES + 1))
    assert decoder.buffered == 0
    with pytest.raises(WireError, match="length 0"):
        Decoder(sender="agent").feed(HEADER.pack(0))


def test_a_message_of_exactly_the_cap_is_taken() -> None:
    status = {"pad": ""}
    overhead = len(wire.encode(Status(work="a", resource_version=1, status=status))) - 4
    status["pad"] = "x" * (MAX_MESSAGE_BYTES - overhead)
    data = wire.encode(Status(work="a", resource_version=1, status=status))
    assert len(data) == 4 + MAX_MESSAGE_BYTES
    assert len(Decoder(sender="agent").feed(data)) == 1


def test_encoding_over_the_cap_is_refused() -> None:
    document = work_document()
    document["spec"]["workload"]["manifests"] = [{"data": "x" * MAX_MESSAGE_BYTES}]
    with pytest.raises(WireError, match="exceeds the cap"):
        wire.encode(WorkMessage(document=document))


def test_encoding_what_json_cannot_say_is_refused() -> None:
    with pytest.raises(WireError, match="not encodable"):
        wire.encode(Status(work="a", resource_version=1, status={"x": float("nan")}))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b'{"type": "lease", "x": NaN}', "not JSON"),
        (b'{"type": "lease", "x": Infinity}', "not JSON"),
        (b"[" * 101 + b"]" * 101, "deeper"),
        (b'{"type": "lease", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "deeper"),
        (b"{", "not JSON"),
    ],
)
def test_bodies_that_are_not_bounded_json_objects(body: bytes, error: str) -> None:
    with pytest.raises(WireError, match=error):
        Decoder(sender="agent").feed(HEADER.pack(len(body)) + body)


def test_the_deepest_allowed_nesting_is_taken() -> None:
    body = b'{"type": "lease", "x": ' + b"[" * 99 + b"]" * 99 + b"}"
    assert Decoder(sender="agent").feed(HEADER.pack(len(body)) + body) == [
        LeaseRenewal(apiserver_healthy=None)
    ]


def test_unknown_fields_are_ignored() -> None:
    message = {"type": "removed", "work": "a", "later": {"x": 1}}
    assert Decoder(sender="agent").feed(frame(message)) == [Removed(work="a")]


# ------------------------------------------------------------------ fuzz

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["hello", "lease", "status", "removed", "settings", "work", "delete", "x"]
        )
    },
    optional={
        "protocol": st.integers(0, 2) | _json,
        "works": st.dictionaries(st.text(max_size=10), st.integers(-1, 3) | _json, max_size=3),
        "claims": _json,
        "allocatable": st.dictionaries(st.sampled_from(["cpu", "memory", "gpu"]), _json),
        "apiserverHealthy": _json,
        "readyEndpoints": st.dictionaries(
            st.sampled_from(["demo/web:80", "demo/web", "a/b:65536", "x/y:1"])
            | st.text(max_size=8),
            st.integers(-1, 2) | _json,
            max_size=3,
        )
        | _json,
        "work": st.sampled_from(["a", "web.a", "A", ""]) | _json,
        "resourceVersion": st.integers(-2, 5) | _json,
        "status": _json,
        "leaseDurationSeconds": st.integers(-1, 4000) | _json,
        "propagationPolicy": st.sampled_from(["Foreground", "Orphan", "x"]) | _json,
        "document": st.just(work_document()) | _json,
    },
)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300), sender=st.sampled_from(["agent", "cloud"]))
def test_any_bytes_give_messages_or_a_wire_error(data: bytes, sender: wire.Side) -> None:
    decoder = Decoder(sender=sender)
    try:
        decoder.feed(data)
        decoder.feed(HEADER.pack(len(data)) + data)
    except WireError:
        pass


@settings(max_examples=600, deadline=None)
@given(message=_fields, sender=st.sampled_from(["agent", "cloud"]))
def test_any_json_object_gives_a_message_or_a_wire_error(
    message: dict[str, Any], sender: wire.Side
) -> None:
    try:
        out = Decoder(sender=sender).feed(frame(message))
    except WireError:
        return
    # What was taken encodes again to the same message.
    assert Decoder(sender=sender).feed(wire.encode(out[0])) == out


_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


@settings(max_examples=200, deadline=None)
@given(
    ready=st.dictionaries(
        st.builds(wire.ready_key, _label, _label, st.integers(1, 65535)),
        st.integers(0, wire.MAX_READY_COUNT),
        max_size=wire.MAX_READY_ENTRIES,
    )
)
def test_ready_endpoints_round_trip(ready: dict[str, int]) -> None:
    message = LeaseRenewal(apiserver_healthy=None, ready_endpoints=ready)
    assert Decoder(sender="agent").feed(wire.encode(message)) == [message]


def test_a_lease_without_ready_endpoints_reports_none_and_unknown_fields_are_ignored() -> None:
    """An older agent sends no field (not "none ready"); a later one may add fields we skip."""
    (old,) = Decoder(sender="agent").feed(frame({"type": "lease", "apiserverHealthy": True}))
    assert isinstance(old, LeaseRenewal)
    assert old.ready_endpoints is None
    later = {"type": "lease", "readyEndpoints": {"demo/web:80": 0}, "futureField": {"x": 1}}
    (new,) = Decoder(sender="agent").feed(frame(later))
    assert new == LeaseRenewal(apiserver_healthy=None, ready_endpoints={"demo/web:80": 0})


def test_the_most_ready_entries_fit_one_message() -> None:
    longest = "a" * 63
    ready = {wire.ready_key(longest, f"{i:03d}" + "b" * 60, 65535): 4096 for i in range(256)}
    assert len(ready) == wire.MAX_READY_ENTRIES
    message = LeaseRenewal(apiserver_healthy=True, ready_endpoints=ready)
    assert Decoder(sender="agent").feed(wire.encode(message)) == [message]

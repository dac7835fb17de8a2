"""Bounded decoding: size and depth are checked before parsing; bad input is a RequestError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_models import nesting_depth
from edge_agent.twins import topics
from edge_agent.twins.payloads import (
    Code,
    RequestError,
    decode_object,
    only_fields,
    optional_rid,
)
from edge_agent.twins.topics import DeviceTopic, Op


def error_of(payload: bytes, **kwargs: int) -> Code:
    with pytest.raises(RequestError) as caught:
        decode_object(payload, max_bytes=kwargs.get("max_bytes", 1024))
    return caught.value.code


def test_decodes_an_object() -> None:
    assert decode_object(b'{"rid": "a", "patch": {"x": [1, 2]}}', max_bytes=100) == {
        "rid": "a",
        "patch": {"x": [1, 2]},
    }


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"x" * 1025, Code.TOO_LARGE),
        (b"[" * 12 + b"]" * 12, Code.TOO_LARGE),
        (b"\xff\xfe", Code.BAD_REQUEST),
        (b"{", Code.BAD_REQUEST),
        (b"[1]", Code.BAD_REQUEST),
        (b'{"a": NaN}', Code.BAD_REQUEST),
        (b'{"a": Infinity}', Code.BAD_REQUEST),
    ],
)
def test_refuses(payload: bytes, code: Code) -> None:
    assert error_of(payload) is code


def test_depth_ignores_brackets_inside_strings() -> None:
    text = json.dumps({"a": "[[[[[[[[[[[[[[[[[[[[", "b": '\\"{{{{{{{{{{{{'})
    assert nesting_depth(text, 50) == 1
    assert decode_object(text.encode(), max_bytes=1000)["a"] == "[" * 20


def test_depth_limit_is_the_twin_limit_plus_the_envelope() -> None:
    eleven = b"{" + b'"a":{' * 10 + b"}" * 10 + b"}"
    twelve = b"{" + b'"a":{' * 11 + b"}" * 11 + b"}"
    assert decode_object(eleven, max_bytes=1000)
    assert error_of(twelve) is Code.TOO_LARGE


def decode_outcome(payload: bytes, max_bytes: int) -> Code:
    """OK, or the code of the RequestError: any other exception fails the test."""
    try:
        decode_object(payload, max_bytes=max_bytes)
    except RequestError as error:
        return error.code
    return Code.OK


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_fail_cleanly(payload: bytes) -> None:
    assert decode_outcome(payload, 200) in {Code.OK, Code.BAD_REQUEST, Code.TOO_LARGE}


@given(st.text(max_size=200))
def test_any_text_decodes_or_fails_cleanly(text: str) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    assert decode_outcome(payload, 1000) in {Code.OK, Code.BAD_REQUEST, Code.TOO_LARGE}


def test_rid_and_fields() -> None:
    assert optional_rid({"rid": "r-1.x_y"}) == "r-1.x_y"
    assert optional_rid({}) is None
    for bad in ("", "a/b", "+", "x" * 65, 7):
        with pytest.raises(RequestError):
            optional_rid({"rid": bad})
    with pytest.raises(RequestError, match="unknown field") as unknown:
        only_fields({"rid": "a", "pach": {}}, frozenset({"rid", "patch"}))
    answer = unknown.value.to_json()  # the REST API's word for the same failure
    assert (answer["code"], answer["reason"]) == (400, "unknown_field")
    assert answer["problems"] == [{"path": "pach", "reason": "unknown field"}]


def test_mqtt_reason_words_are_the_rest_apis() -> None:
    """The same failure has the same word on MQTT and in the REST problem documents."""
    shared = {
        Code.BAD_REQUEST: "bad_request",
        Code.UNKNOWN_FIELD: "unknown_field",
        Code.INVALID_VALUE: "invalid_value",
        Code.VERSION_CONFLICT: "version_conflict",
        Code.TOO_LARGE: "too_large",
        Code.UNKNOWN_DEVICE: "device_not_found",
        Code.UNKNOWN_MODEL: "model_unknown",
        Code.DUPLICATE_ID: "duplicate_id",
    }
    assert {code: str(code) for code in shared} == shared
    assert all("-" not in str(code) for code in Code)  # REST words use underscores


def test_error_body_lists_problems() -> None:
    from device_models import Problem  # noqa: PLC0415

    error = RequestError(Code.INVALID_VALUE, "nope", (Problem(path="t", reason="too hot"),))
    assert error.to_json() == {
        "code": 422,
        "reason": "invalid_value",
        "detail": "nope",
        "problems": [{"path": "t", "reason": "too hot"}],
    }


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("edgefleet/devices/d1/twin/reported", DeviceTopic("d1", Op.REPORTED)),
        ("edgefleet/devices/d1/twin/get", DeviceTopic("d1", Op.GET)),
        ("edgefleet/devices/d1/telemetry", DeviceTopic("d1", Op.TELEMETRY)),
        ("edgefleet/devices/d1/availability", DeviceTopic("d1", Op.AVAILABILITY)),
        ("edgefleet/devices/d1/twin/result", None),  # written by the agent, never read
        ("edgefleet/devices/d1/twin/desired", None),
        ("edgefleet/devices/-x/twin/get", None),
        ("edgefleet/devices/d1/twin/get/extra", None),
        ("other/devices/d1/twin/get", None),
    ],
)
def test_device_topics(topic: str, expected: DeviceTopic | None) -> None:
    assert topics.parse_device_topic(topic) == expected


def test_agent_subscribes_to_what_devices_publish() -> None:
    assert topics.agent_subscriptions("edge-1") == [
        "edgefleet/provision/request",
        "edgefleet/devices/+/twin/get",
        "edgefleet/devices/+/twin/reported",
        "edgefleet/devices/+/telemetry",
        "edgefleet/devices/+/availability",
        "edgefleet/agents/edge-1/adopt/+",
    ]

"""The ``models`` stream's messages: what each end accepts, and that nothing else gets through."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_models import MAX_MODEL_YAML_BYTES, DeviceModel, DeviceModelsError, builtin_model
from device_models import model_wire as wire
from device_models.sync_wire import Decoder, WireError, encode


def test_a_model_crosses_the_wire_and_is_the_same_model() -> None:
    model = builtin_model("thermostat")
    decoder = Decoder(max_bytes=wire.MAX_MESSAGE_BYTES, max_depth=wire.MAX_DEPTH)
    (message,) = decoder.feed(encode(wire.model_message(model), max_bytes=wire.MAX_MESSAGE_BYTES))
    assert wire.parse_model(message) == model
    assert DeviceModel.from_yaml(wire.render_yaml(model)) == model


def test_hello_names_versions_and_is_bounded() -> None:
    assert wire.parse_hello(wire.hello({"thermostat": "1.0.0"})) == {"thermostat": "1.0.0"}
    with pytest.raises(WireError, match="hello"):
        wire.parse_hello({"type": "model"})
    with pytest.raises(WireError, match="at most"):
        wire.parse_hello(wire.hello({f"m{i}": "1" for i in range(wire.MAX_HAVE + 1)}))
    with pytest.raises(WireError, match="not a model version"):
        wire.parse_hello(wire.hello({"pump": "one"}))


def test_an_invalid_model_is_a_model_error_naming_the_path() -> None:
    data = builtin_model("thermostat").to_dict()
    data["properties"] = [{"name": "x", "type": "int", "min": 5, "max": 1}]
    with pytest.raises(DeviceModelsError) as caught:
        wire.parse_model({"type": "model", "model": data})
    assert [p.path for p in caught.value.problems] == ["properties[0].min"]


def test_a_model_too_large_to_store_is_refused() -> None:
    props = [{"name": f"p{i}", "type": "string", "description": "d" * 1000} for i in range(70)]
    data: dict[str, Any] = {
        "apiVersion": "edgefleet.io/v1",
        "kind": "DeviceModel",
        "name": "big",
        "version": "1",
        "properties": props,
    }
    assert len(json.dumps(data)) > MAX_MODEL_YAML_BYTES
    with pytest.raises(DeviceModelsError, match="bytes of YAML"):
        wire.parse_model({"type": "model", "model": data})


def test_acks_round_trip_and_bad_ones_are_wire_errors() -> None:
    assert wire.parse_ack(wire.ack("pump", "2", "refused", "too big")) == (
        "pump",
        "2",
        "refused",
        "too big",
    )
    with pytest.raises(WireError):
        wire.parse_ack({"type": "ack", "name": "pump", "version": "2", "result": "eaten"})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(st.dictionaries(st.sampled_from(["type", "model", "have", "version", "name"]), JSON))
def test_any_message_fails_only_with_the_protocols_errors(message: dict[str, Any]) -> None:
    for parse in (wire.parse_hello, wire.parse_model, wire.parse_ack):
        with contextlib.suppress(WireError, DeviceModelsError):
            parse(message)

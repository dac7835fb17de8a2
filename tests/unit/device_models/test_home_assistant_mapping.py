"""device_models.home_assistant: device model -> Home Assistant discovery configs (pure)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import (
    Access,
    DeviceModel,
    Kind,
    PropertySpec,
    PropertyType,
    builtin_model,
)
from device_models import home_assistant as ha

TOPICS = ha.DeviceTopics(
    state="edgefleet/devices/boiler-7/twin/state",
    availability="edgefleet/devices/boiler-7/availability",
    agent_availability="edgefleet/agent/availability",
    command_base="edgefleet/ha/edge-1/boiler-7/set",
)
_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]+")


def configs(model: DeviceModel, **kwargs: Any) -> dict[str, ha.ConfigMessage]:
    found = ha.device_discovery(
        model, device_id="boiler-7", device_name="boiler-7", node="edge-1", topics=TOPICS, **kwargs
    )
    return {config.property: config for config in found.configs}


def model_of(*specs: PropertySpec, protocol: dict[str, Any] | None = None) -> DeviceModel:
    return DeviceModel(name="m", version="1.0.0", properties=specs, protocol=protocol or {})


def test_the_thermostat_maps_to_a_sensor_a_number_and_a_select() -> None:
    shown = configs(builtin_model("thermostat"))
    temperature = shown["temperature"]
    assert temperature.topic == "homeassistant/sensor/edgefleet_edge-1/boiler-7_temperature/config"
    assert temperature.unique_id == "edgefleet_edge-1_boiler-7_temperature"
    payload = temperature.payload
    assert payload["unit_of_measurement"] == "°C"
    assert (payload["device_class"], payload["state_class"]) == ("temperature", "measurement")
    assert payload["state_topic"] == TOPICS.state
    assert payload["value_template"] == "{{ value_json['reported']['temperature'] }}"
    assert payload["availability"] == [
        {"topic": TOPICS.availability},
        {"topic": TOPICS.agent_availability},
    ]
    assert payload["availability_mode"] == "all"
    assert "command_topic" not in payload
    assert payload["device"] == {
        "identifiers": ["edgefleet_edge-1_boiler-7"],
        "name": "boiler-7",
        "model": "thermostat",
        "manufacturer": "EdgeFleet",
        "sw_version": "1.0.0",
        "via_device": "edgefleet_edge-1",
    }
    setpoint = shown["setpoint"]
    assert setpoint.topic.startswith("homeassistant/number/")
    assert {key: setpoint.payload[key] for key in ("min", "max", "step", "command_topic")} == {
        "min": 5,
        "max": 30,
        "step": 0.5,
        "command_topic": "edgefleet/ha/edge-1/boiler-7/set/setpoint",
    }
    mode = shown["mode"]
    assert mode.topic.startswith("homeassistant/select/")
    assert mode.payload["options"] == ["off", "heat", "cool", "auto"]
    assert shown["heating"].topic.startswith("homeassistant/binary_sensor/")
    assert "schedule" not in shown  # an object: not mapped


def test_the_relay_is_a_switch_with_on_off_state() -> None:
    relay = configs(builtin_model("relay-switch"))["on"]
    assert relay.topic == "homeassistant/switch/edgefleet_edge-1/boiler-7_on/config"
    assert (
        relay.payload["value_template"] == "{{ 'ON' if value_json['reported']['on'] else 'OFF' }}"
    )
    assert (relay.payload["state_on"], relay.payload["state_off"]) == ("ON", "OFF")
    assert relay.payload["command_topic"] == "edgefleet/ha/edge-1/boiler-7/set/on"


def test_objects_are_skipped_with_a_reason() -> None:
    found = ha.device_discovery(
        builtin_model("thermostat"), device_id="t", device_name="t", node="n", topics=TOPICS
    )
    assert [(s.property, "object" in s.reason) for s in found.skipped] == [("schedule", True)]


@pytest.mark.parametrize(("unit", "device_class"), sorted(ha.UNIT_DEVICE_CLASS.items()))
def test_every_unit_of_the_table_gives_its_device_class(unit: str, device_class: str) -> None:
    spec = PropertySpec(name="x", type=PropertyType.FLOAT, unit=unit, kind=Kind.TELEMETRY)
    payload = configs(model_of(spec))["x"].payload
    assert (payload["unit_of_measurement"], payload["device_class"]) == (unit, device_class)
    wanted = "total_increasing" if device_class == "energy" else "measurement"
    assert payload["state_class"] == wanted


@pytest.mark.parametrize(
    ("name", "device_class"),
    [("humidity", "humidity"), ("relHumidity", "humidity"), ("battery", "battery"), ("duty", None)],
)
def test_percent_is_humidity_or_battery_only_when_the_name_says_so(
    name: str, device_class: str | None
) -> None:
    spec = PropertySpec(name=name, type=PropertyType.INT, unit="%")
    payload = configs(model_of(spec))[name].payload
    assert payload.get("device_class") == device_class
    assert "state_class" not in payload  # kind state: not a measurement


def test_an_unknown_unit_is_kept_without_device_class() -> None:
    spec = PropertySpec(name="x", type=PropertyType.INT, unit="furlongs", kind=Kind.TELEMETRY)
    payload = configs(model_of(spec))["x"].payload
    assert payload["unit_of_measurement"] == "furlongs"
    assert "device_class" not in payload


def test_writable_numbers_strings_and_read_only_enums() -> None:
    specs = (
        PropertySpec(name="level", type=PropertyType.INT, access=Access.READ_WRITE),
        PropertySpec(
            name="ratio", type=PropertyType.FLOAT, minimum=0, maximum=1, access=Access.READ_WRITE
        ),
        PropertySpec(
            name="label", type=PropertyType.STRING, max_length=1000, access=Access.READ_WRITE
        ),
        PropertySpec(name="phase", type=PropertyType.ENUM, values=("a", "b")),
    )
    shown = configs(model_of(*specs))
    level = shown["level"].payload
    assert (level["min"], level["max"], level["step"], level["mode"]) == (-1e9, 1e9, 1, "box")
    ratio = shown["ratio"].payload
    assert (ratio["min"], ratio["max"], ratio["step"], ratio["mode"]) == (0, 1, 0.1, "auto")
    assert shown["label"].topic.startswith("homeassistant/text/")
    assert shown["label"].payload["max"] == 255
    phase = shown["phase"].payload
    assert (phase["device_class"], phase["options"]) == ("enum", ["a", "b"])
    assert shown["phase"].topic.startswith("homeassistant/sensor/")


def test_manufacturer_comes_from_the_models_protocol_when_given() -> None:
    spec = PropertySpec(name="x", type=PropertyType.BOOL)
    device = configs(model_of(spec, protocol={"manufacturer": "Acme"}))["x"].payload["device"]
    assert isinstance(device, dict)
    assert device["manufacturer"] == "Acme"


def test_caps_skip_what_does_not_fit() -> None:
    specs = tuple(PropertySpec(name=f"p{i}", type=PropertyType.BOOL) for i in range(5))
    found = ha.device_discovery(
        model_of(*specs), device_id="d", device_name="d", node="n", topics=TOPICS, max_entities=3
    )
    assert [c.property for c in found.configs] == ["p0", "p1", "p2"]
    assert [s.property for s in found.skipped] == ["p3", "p4"]
    tiny = ha.device_discovery(
        model_of(*specs),
        device_id="d",
        device_name="d",
        node="n",
        topics=TOPICS,
        max_config_bytes=100,
    )
    assert tiny.configs == ()
    assert all("size cap" in s.reason for s in tiny.skipped)


def test_unsafe_names_are_skipped_not_published() -> None:
    specs = (
        PropertySpec(name="ok", type=PropertyType.BOOL),
        PropertySpec(name="a/b", type=PropertyType.BOOL),
        PropertySpec(name="x']}}{{", type=PropertyType.BOOL),
        PropertySpec(name="", type=PropertyType.BOOL),
    )
    found = ha.device_discovery(
        model_of(*specs), device_id="d", device_name="d", node="n", topics=TOPICS
    )
    assert [c.property for c in found.configs] == ["ok"]
    assert len(found.skipped) == 3


@pytest.mark.parametrize("prefix", ["", "a/", "/a", "a//b", "a/+", "#", "ha b", "x" * 129])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    assert not ha.valid_prefix(prefix)
    with pytest.raises(ValueError, match="discovery prefix"):
        ha.device_discovery(
            builtin_model("thermostat"),
            device_id="d",
            device_name="d",
            node="n",
            topics=TOPICS,
            prefix=prefix,
        )


def test_a_custom_prefix_and_the_node_config() -> None:
    shown = configs(builtin_model("relay-switch"), prefix="site/ha")
    assert shown["on"].topic == "site/ha/switch/edgefleet_edge-1/boiler-7_on/config"
    node = ha.node_discovery(
        node="edge-1", prefix="site/ha", agent_availability="edgefleet/agent/availability"
    )
    assert node.topic == "site/ha/binary_sensor/edgefleet_edge-1/agent/config"
    device = node.payload["device"]
    assert isinstance(device, dict)
    assert device["identifiers"] == ["edgefleet_edge-1"]  # what the devices' via_device names


def test_ids_with_underscores_or_dots_get_a_slug_that_cannot_collide() -> None:
    # "pump" + "room_temperature" and "pump_room" + "temperature" must not share an id
    spec = (PropertySpec(name="room_temperature", type=PropertyType.BOOL),)
    spec2 = (PropertySpec(name="temperature", type=PropertyType.BOOL),)
    one = ha.device_discovery(
        model_of(*spec), device_id="pump", device_name="p", node="n", topics=TOPICS
    )
    two = ha.device_discovery(
        model_of(*spec2), device_id="pump_room", device_name="p", node="n", topics=TOPICS
    )
    assert one.configs[0].unique_id != two.configs[0].unique_id
    assert one.configs[0].topic != two.configs[0].topic
    assert ha.slug("a.b") != ha.slug("a-b")
    assert "_" not in ha.slug("a_b")
    assert "." not in ha.slug("a.b")
    assert ha.slug("a.b") == ha.slug("a.b")  # stable


def test_state_payload() -> None:
    assert json.loads(ha.state_payload(3, {"on": True})) == {"version": 3, "reported": {"on": True}}


# ------------------------------------------------------------------------------ hypothesis

_names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,63}", fullmatch=True),
    st.text(max_size=80),
)
_units = st.one_of(
    st.none(), st.sampled_from([*ha.UNIT_DEVICE_CLASS, "%"]), st.text(min_size=1, max_size=32)
)
_bounds = st.one_of(
    st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)
)


@st.composite
def _specs(draw: st.DrawFn) -> PropertySpec:
    ptype = draw(st.sampled_from(list(PropertyType)))
    numeric = ptype in (PropertyType.INT, PropertyType.FLOAT)
    return PropertySpec(
        name=draw(_names),
        type=ptype,
        unit=draw(_units) if numeric else None,
        minimum=draw(_bounds) if numeric else None,
        maximum=draw(_bounds) if numeric else None,
        max_length=draw(st.one_of(st.none(), st.integers(1, 4096))),
        values=tuple(draw(st.lists(st.text(max_size=64), max_size=64, unique=True)))
        if ptype is PropertyType.ENUM
        else (),
        access=draw(st.sampled_from(list(Access))),
        kind=draw(st.sampled_from(list(Kind))),
    )


_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
_nodes = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(_specs(), max_size=30), device_id=_ids, node=_nodes)
def test_any_model_maps_without_crashing_to_unique_stable_bounded_configs(
    specs: list[PropertySpec], device_id: str, node: str
) -> None:
    model = model_of(*specs)
    found = ha.device_discovery(
        model, device_id=device_id, device_name=device_id, node=node, topics=TOPICS
    )
    again = ha.device_discovery(
        model, device_id=device_id, device_name=device_id, node=node, topics=TOPICS
    )
    assert found == again  # stable: a pure function of its inputs
    unique_ids = [c.unique_id for c in found.configs]
    topics = [c.topic for c in found.configs]
    assert len(set(unique_ids)) == len(unique_ids)
    assert len(set(topics)) == len(topics)
    assert len(found.configs) + len(found.skipped) == len(specs)
    for config in found.configs:
        levels = config.topic.split("/")
        assert (levels[0], levels[-1], len(levels)) == ("homeassistant", "config", 5)
        assert all(_OBJECT_ID.fullmatch(level) for level in levels[2:4])
        assert _OBJECT_ID.fullmatch(config.unique_id)
        assert len(config.encode()) <= ha.MAX_CONFIG_BYTES
        assert json.loads(config.encode())["unique_id"] == config.unique_id


@settings(max_examples=300, deadline=None)
@given(first=_ids, second=_ids, node=_nodes)
def test_different_devices_never_share_ids(first: str, second: str, node: str) -> None:
    if first == second:
        return
    model = builtin_model("relay-switch")
    one = ha.device_discovery(model, device_id=first, device_name=first, node=node, topics=TOPICS)
    two = ha.device_discovery(model, device_id=second, device_name=second, node=node, topics=TOPICS)
    assert not {c.unique_id for c in one.configs} & {c.unique_id for c in two.configs}
    assert not one.topics & two.topics


# ------------------------------------------------------------------ commands


def test_commands_parse_as_ha_sends_them() -> None:
    relay, thermostat = builtin_model("relay-switch"), builtin_model("thermostat")
    assert ha.parse_command(relay, "on", b"ON") == ha.CommandValue(property="on", value=True)
    assert ha.parse_command(relay, "on", b"OFF") == ha.CommandValue(property="on", value=False)
    assert ha.parse_command(relay, "powerOnState", b"previous") == ha.CommandValue(
        "powerOnState", "previous"
    )
    assert ha.parse_command(thermostat, "setpoint", b"21.5") == ha.CommandValue("setpoint", 21.5)


@pytest.mark.parametrize(
    ("model", "name", "payload", "reason"),
    [
        ("relay-switch", "switchCount", b"3", "switchCount is read-only"),
        ("relay-switch", "on", b"on", "on: a switch takes ON or OFF"),
        ("relay-switch", "nope", b"ON", "model relay-switch has no property nope"),
        ("relay-switch", "powerOnState", b"sometimes", "powerOnState: not one of its options"),
        ("thermostat", "setpoint", b"nan", "setpoint: not a finite number"),
        ("thermostat", "setpoint", b"warm", "setpoint: not a number"),
        ("thermostat", "setpoint", b"\xff", "the command is not UTF-8 text"),
        ("thermostat", "setpoint", b"1" * 2000, "the command is over 1024 bytes"),
    ],
)
def test_bad_commands_are_refused_with_the_reason(
    model: str, name: str, payload: bytes, reason: str
) -> None:
    assert ha.parse_command(builtin_model(model), name, payload) == reason


def test_out_of_range_is_the_models_reason() -> None:
    refused = ha.parse_command(builtin_model("thermostat"), "setpoint", b"99")
    assert isinstance(refused, str)
    assert refused.startswith("setpoint: ")
    assert "30" in refused


def test_the_last_command_sensor_comes_with_writable_entities_only() -> None:
    topics = ha.DeviceTopics(
        state="s", availability="a", agent_availability="g", command_base="c", command_state="l"
    )
    found = ha.device_discovery(
        builtin_model("relay-switch"), device_id="r", device_name="r", node="n", topics=topics
    )
    [last] = [config for config in found.configs if config.property == ""]
    assert last.payload["state_topic"] == "l"
    assert last.payload["availability"] == [{"topic": "g"}]
    assert last.topic == f"homeassistant/sensor/edgefleet_n/r_{ha.COMMAND_ENTITY}/config"
    meter = ha.device_discovery(
        builtin_model("power-meter"), device_id="m", device_name="m", node="n", topics=topics
    )
    assert all(config.property for config in meter.configs)  # read-only: nothing to command
    state = json.loads(ha.command_state_payload("accepted", prop="on", at=0.0))
    assert state == {"state": "accepted", "property": "on", "at": "1970-01-01T00:00:00Z"}


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(["relay-switch", "thermostat", "power-meter"]),
    name=st.text(max_size=20) | st.sampled_from(["on", "setpoint", "mode", "powerOnState"]),
    payload=st.binary(max_size=2048) | st.text(max_size=40).map(str.encode),
)
def test_any_command_payload_is_a_value_the_model_takes_or_a_reason(
    model: str, name: str, payload: bytes
) -> None:
    spec = builtin_model(model)
    parsed = ha.parse_command(spec, name, payload)
    if isinstance(parsed, str):
        assert 0 < len(parsed) <= 256
    else:
        assert spec.validate_desired({parsed.property: parsed.value})

"""Home Assistant MQTT discovery from a device model, sans-IO (docs/home-assistant.md).

`device_discovery` maps (model, device id, device name, node, topic layout) to the retained
discovery messages Home Assistant reads: one ``(topic, config)`` per entity. Rules:

1. One HA device per EdgeFleet device: ``identifiers`` ``edgefleet_<node>_<device>``, name,
   model and manufacturer from the device model, ``via_device`` the agent's node, which
   `node_discovery` announces as a device of its own (one ``connectivity`` binary sensor).
2. One entity per top-level property, by type and access (the table `ENTITY_TABLE`):
   read-only numbers are ``sensor`` (unit, ``device_class`` and ``state_class`` from the unit
   table `UNIT_DEVICE_CLASS` and the property's kind), read-only bool ``binary_sensor``,
   read-only enum an ``enum`` sensor, read-only string a plain sensor; writable bool
   ``switch``, writable number ``number`` (min, max, step), writable enum ``select``,
   writable string ``text``. Object properties are not mapped (skipped, with the reason).
3. State is the retained JSON the agent publishes on ``topics.state``:
   ``{"version": <reported $version>, "reported": {...}}``; templates read
   ``value_json['reported']['<name>']`` (subscripts, so a property named ``items`` or
   ``values`` is not a dict method in Jinja). Availability needs both the device's and the
   agent's retained availability (``availability_mode: all``).
4. Ids only use HA's object-id alphabet ``[A-Za-z0-9_-]``. A node or device name that has a
   ``_`` or ``.`` is turned into a slug with ``-`` for those and an 8-hex-digit hash of the
   original, so the ``_``-separated ``edgefleet_<node>_<device>_<property>`` splits one way
   only; ids are stable (a pure function of the names).
5. Commands (docs/home-assistant.md, "Commands"): `parse_command` turns what HA sends on a
   writable property's command topic (``ON``/``OFF``, a number as text, an option, a text) into
   the property's value, checked against the model (writable, type, min/max, options), or a
   reason it is refused. With ``topics.command_state`` set, a device with a writable entity
   gets one more, diagnostic ``sensor`` "Last command" whose retained JSON state
   (`command_state_payload`) says what became of the last command: ``sent``, ``accepted``,
   ``refused: <reason>``.
6. Bounded: at most ``max_entities`` entities, topics of at most `MAX_TOPIC_BYTES`, configs of
   at most ``max_config_bytes`` as JSON. What does not fit, or has a name that is not a safe
   id, is skipped and reported in `Discovery.skipped` (the caller logs it), never raised.

No I/O: the caller publishes (retained, QoS 1) and clears a config with an empty payload.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from device_models._errors import DeviceModelsError
from device_models._model import (
    MAX_PROPERTIES,
    Access,
    DeviceModel,
    Kind,
    PropertySpec,
    PropertyType,
)

__all__ = [
    "COMMAND_ENTITY",
    "DEFAULT_PREFIX",
    "ENTITY_TABLE",
    "MAX_COMMAND_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_TOPIC_BYTES",
    "UNIT_DEVICE_CLASS",
    "CommandValue",
    "ConfigMessage",
    "DeviceTopics",
    "Discovery",
    "Skipped",
    "command_state_payload",
    "device_discovery",
    "device_identifier",
    "node_discovery",
    "node_identifier",
    "parse_command",
    "slug",
    "state_payload",
    "valid_prefix",
]

DEFAULT_PREFIX = "homeassistant"
MAX_TOPIC_BYTES = 512
"""A discovery or state topic's length at most; real ones are under 120 bytes."""
MAX_CONFIG_BYTES = 16 * 1024
"""A config's JSON at most: a select with 64 options of 64 characters is about 5 KB."""
MAX_PREFIX_LENGTH = 128
UNBOUNDED = 1e9
"""The min / max of a writable number the model leaves unbounded (HA defaults to 1..100)."""
MAX_COMMAND_BYTES = 1024
"""An HA command payload at most: an option, a number or a 255-character text fits."""
COMMAND_ENTITY = "ha-last-command"
"""Object id suffix of the "Last command" sensor: a ``-`` no model property name has."""
_MAX_EXACT = 2**53
"""Whole numbers beyond this are not exact as floats (HA's number sends floats' text)."""
TEXT_MAX = 255
"""HA's ``text`` entities hold at most 255 characters."""
ORIGIN: Mapping[str, str] = MappingProxyType(
    {"name": "EdgeFleet", "url": "https://github.com/edgefleet/edgefleet"}
)

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLAIN = re.compile(r"[A-Za-z0-9-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")

# Unit -> HA device class; every unit here is one HA accepts for that class. "%" is absent:
# it is humidity or battery only when the property's name says so (`_percent_class`).
UNIT_DEVICE_CLASS: Mapping[str, str] = MappingProxyType(
    {
        "°C": "temperature",
        "°F": "temperature",
        "K": "temperature",
        "W": "power",
        "kW": "power",
        "Wh": "energy",
        "kWh": "energy",
        "MWh": "energy",
        "VA": "apparent_power",
        "var": "reactive_power",
        "V": "voltage",
        "mV": "voltage",
        "A": "current",
        "mA": "current",
        "Pa": "pressure",
        "hPa": "pressure",
        "kPa": "pressure",
        "mbar": "pressure",
        "bar": "pressure",
        "psi": "pressure",
        "lx": "illuminance",
        "Hz": "frequency",
        "kHz": "frequency",
        "MHz": "frequency",
        "s": "duration",
        "ms": "duration",
        "min": "duration",
        "h": "duration",
        "d": "duration",
        "mm": "distance",
        "cm": "distance",
        "m": "distance",
        "km": "distance",
        "g": "weight",
        "kg": "weight",
        "m/s": "speed",
        "km/h": "speed",
        "L": "volume",
        "mL": "volume",
        "m³": "volume",
        "dBm": "signal_strength",
    }
)
_TOTAL_INCREASING = frozenset({"energy"})
"""Device classes whose value only grows (a meter): ``state_class: total_increasing``."""
_TEMPERATURE_STEP = 0.5
_FLOAT_STEP = 0.1

# (type, writable) -> HA component; the docs' mapping table lists the same rows.
ENTITY_TABLE: Mapping[tuple[PropertyType, bool], str] = MappingProxyType(
    {
        (PropertyType.INT, False): "sensor",
        (PropertyType.FLOAT, False): "sensor",
        (PropertyType.BOOL, False): "binary_sensor",
        (PropertyType.ENUM, False): "sensor",
        (PropertyType.STRING, False): "sensor",
        (PropertyType.INT, True): "number",
        (PropertyType.FLOAT, True): "number",
        (PropertyType.BOOL, True): "switch",
        (PropertyType.ENUM, True): "select",
        (PropertyType.STRING, True): "text",
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceTopics:
    """Where a device's state and availability are, and where HA sends its commands."""

    state: str
    """Retained ``{"version", "reported"}`` of the device, published by the agent."""
    availability: str
    """The device's retained ``online`` / ``offline`` (its last will)."""
    agent_availability: str
    """The agent's retained ``online`` / ``offline``."""
    command_base: str
    """A writable property's command topic is ``<command_base>/<property>``."""
    command_state: str | None = None
    """Retained state of the "Last command" sensor; None: no such entity."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigMessage:
    """One retained discovery message: publish `payload` as JSON on `topic`."""

    topic: str
    payload: Mapping[str, object]
    unique_id: str
    property: str
    """The model property it shows ("" for the node's own entity)."""

    def encode(self) -> bytes:
        return _encode(self.payload)


@dataclass(frozen=True, kw_only=True, slots=True)
class Skipped:
    property: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Discovery:
    configs: tuple[ConfigMessage, ...]
    skipped: tuple[Skipped, ...]

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(config.topic for config in self.configs)


def valid_prefix(prefix: str) -> bool:
    """A discovery prefix: topic levels of ``[A-Za-z0-9_-]``, no wildcards, no empty level."""
    return len(prefix) <= MAX_PREFIX_LENGTH and _PREFIX.fullmatch(prefix) is not None


def slug(name: str) -> str:
    """`name` in ``[A-Za-z0-9-]``: as it is when it fits, else ``-`` for the rest plus a hash.

    A slug never holds ``_``, so ids joined with ``_`` split one way only.
    """
    if _PLAIN.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9-]", "-", name[:48])
    return f"{cleaned}-{digest}"


def node_identifier(node: str) -> str:
    return f"edgefleet_{slug(node)}"


def device_identifier(node: str, device_id: str) -> str:
    return f"{node_identifier(node)}_{slug(device_id)}"


def node_discovery(*, node: str, prefix: str, agent_availability: str) -> ConfigMessage:
    """The agent's node as an HA device: one connectivity sensor, the devices' ``via_device``."""
    _check_prefix(prefix)
    ident = node_identifier(node)
    unique_id = f"{ident}_agent"
    payload: dict[str, object] = {
        "name": "Agent",
        "unique_id": unique_id,
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "state_topic": agent_availability,
        "payload_on": "online",
        "payload_off": "offline",
        "device": {
            "identifiers": [ident],
            "name": node,
            "manufacturer": "EdgeFleet",
            "model": "edge-agent",
        },
        "origin": dict(ORIGIN),
    }
    topic = f"{prefix}/binary_sensor/{ident}/agent/config"
    return ConfigMessage(topic=topic, payload=payload, unique_id=unique_id, property="")


def device_discovery(
    model: DeviceModel,
    *,
    device_id: str,
    device_name: str,
    node: str,
    topics: DeviceTopics,
    prefix: str = DEFAULT_PREFIX,
    max_entities: int = MAX_PROPERTIES,
    max_config_bytes: int = MAX_CONFIG_BYTES,
) -> Discovery:
    """Every discovery config of one device (rules in the module docstring).

    Never raises for a property (it is skipped); raises ValueError for a bad `prefix`.
    """
    _check_prefix(prefix)
    node_ident = node_identifier(node)
    device_ident = device_identifier(node, device_id)
    device: dict[str, object] = {
        "identifiers": [device_ident],
        "name": device_name[:128] or device_id,
        "model": model.name,
        "manufacturer": _manufacturer(model),
        "sw_version": model.version,
        "via_device": node_ident,
    }
    common: dict[str, object] = {
        "availability": [
            {"topic": topics.availability},
            {"topic": topics.agent_availability},
        ],
        "availability_mode": "all",
        "payload_available": "online",
        "payload_not_available": "offline",
        "state_topic": topics.state,
        "device": device,
        "origin": dict(ORIGIN),
    }
    configs: list[ConfigMessage] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for spec in model.properties:
        reason = _unsafe(spec.name)
        if reason is None and spec.name in seen:
            reason = "a second property of this name (a parsed model has none)"
        seen.add(spec.name)
        if reason is None and len(configs) >= max_entities:
            reason = f"over the cap of {max_entities} entities per device"
        if reason is not None:
            skipped.append(Skipped(property=spec.name[:64], reason=reason))
            continue
        mapped = _entity(spec, topics=topics)
        if isinstance(mapped, str):
            skipped.append(Skipped(property=spec.name, reason=mapped))
            continue
        component, fields = mapped
        unique_id = f"{device_ident}_{spec.name}"
        payload = {"name": _title(spec.name), "unique_id": unique_id, **fields, **common}
        topic = f"{prefix}/{component}/{node_ident}/{slug(device_id)}_{spec.name}/config"
        config = ConfigMessage(
            topic=topic, payload=payload, unique_id=unique_id, property=spec.name
        )
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            skipped.append(Skipped(property=spec.name, reason="topic over the size cap"))
        elif len(config.encode()) > max_config_bytes:
            skipped.append(Skipped(property=spec.name, reason="config over the size cap"))
        else:
            configs.append(config)
    writable = any("command_topic" in config.payload for config in configs)
    if topics.command_state is not None and writable:
        configs.append(_command_config(topics, device, prefix, node_ident, device_id))
    return Discovery(configs=tuple(configs), skipped=tuple(skipped))


def _command_config(
    topics: DeviceTopics, device: dict[str, object], prefix: str, node_ident: str, device_id: str
) -> ConfigMessage:
    """The "Last command" sensor: what became of HA's last command for this device.

    Available with the agent alone: a refusal shows while the device is offline too.
    """
    unique_id = f"{node_ident}_{slug(device_id)}_{COMMAND_ENTITY}"
    payload: dict[str, object] = {
        "name": "Last command",
        "unique_id": unique_id,
        "entity_category": "diagnostic",
        "icon": "mdi:console-line",
        "state_topic": topics.command_state,
        "value_template": "{{ value_json['state'] }}",
        "json_attributes_topic": topics.command_state,
        "availability": [{"topic": topics.agent_availability}],
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": dict(ORIGIN),
    }
    topic = f"{prefix}/sensor/{node_ident}/{slug(device_id)}_{COMMAND_ENTITY}/config"
    return ConfigMessage(topic=topic, payload=payload, unique_id=unique_id, property="")


@dataclass(frozen=True, slots=True)
class CommandValue:
    """A command HA sent, as the desired value of `property`."""

    property: str
    value: bool | int | float | str


def parse_command(model: DeviceModel, name: str, payload: bytes) -> CommandValue | str:
    """The value HA's `payload` asks `name` of `model` to take, or why it is refused.

    HA sends a switch's ``payload_on``/``payload_off`` (``ON``/``OFF``), a number as text, a
    select's option and a text as is. Never raises; a payload over `MAX_COMMAND_BYTES` is
    refused unread. The model's own check (`DeviceModel.validate_desired`) runs last, so what
    passes here passes the cloud's check of the same model version.
    """
    spec = _command_spec(model, name, payload)
    if isinstance(spec, str):
        return spec
    try:
        parsed = _COMMAND_PARSERS[spec.type](spec, payload.decode("utf-8"))
    except UnicodeDecodeError:
        return "the command is not UTF-8 text"
    except KeyError:
        return f"{spec.type} properties take no command"
    if isinstance(parsed, str):
        return parsed
    try:
        model.validate_desired({name: parsed.value})
    except DeviceModelsError as error:
        reasons = "; ".join(problem.reason for problem in error.problems) or error.summary
        return f"{name}: {reasons}"[:256]
    return parsed


def _command_spec(model: DeviceModel, name: str, payload: bytes) -> PropertySpec | str:
    spec = model.property(name)
    if spec is None:
        return f"model {model.name} has no property {name[:64]}"
    if spec.access is not Access.READ_WRITE:
        return f"{name} is read-only"
    if len(payload) > MAX_COMMAND_BYTES:
        return f"the command is over {MAX_COMMAND_BYTES} bytes"
    return spec


def _switch(spec: PropertySpec, text: str) -> CommandValue | str:
    stripped = text.strip()
    if stripped in ("ON", "OFF"):
        return CommandValue(spec.name, stripped == "ON")
    return f"{spec.name}: a switch takes ON or OFF"


def _number_command(spec: PropertySpec, text: str) -> CommandValue | str:
    try:
        number = float(text.strip())
    except ValueError:
        return f"{spec.name}: not a number"
    if not math.isfinite(number):
        return f"{spec.name}: not a finite number"
    if spec.type is PropertyType.FLOAT:
        return CommandValue(spec.name, number)
    if not number.is_integer() or abs(number) > _MAX_EXACT:
        return f"{spec.name}: takes whole numbers"
    return CommandValue(spec.name, int(number))


def _option(spec: PropertySpec, text: str) -> CommandValue | str:
    if text.strip() in spec.values:
        return CommandValue(spec.name, text.strip())
    return f"{spec.name}: not one of its options"


def _text(spec: PropertySpec, text: str) -> CommandValue | str:
    return CommandValue(spec.name, text)


_COMMAND_PARSERS = {
    PropertyType.BOOL: _switch,
    PropertyType.INT: _number_command,
    PropertyType.FLOAT: _number_command,
    PropertyType.ENUM: _option,
    PropertyType.STRING: _text,
}


def command_state_payload(state: str, *, prop: str, at: float) -> bytes:
    """The retained JSON of the "Last command" sensor: ``{"state", "property", "at"}``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return _encode({"state": state[:255], "property": prop[:64], "at": stamp})


def state_payload(version: int, reported: Mapping[str, object]) -> bytes:
    """The retained state the templates read: ``{"version", "reported"}``."""
    return _encode({"version": version, "reported": dict(reported)})


# ------------------------------------------------------------------------------ internals


def _check_prefix(prefix: str) -> None:
    if not valid_prefix(prefix):
        raise ValueError(
            f"discovery prefix {prefix[:64]!r}: topic levels of letters, digits, _ and -"
        )


def _unsafe(name: str) -> str | None:
    if _SAFE_ID.fullmatch(name):
        return None
    return "the name is not a safe id (1 to 64 of letters, digits, _ and -)"


def _manufacturer(model: DeviceModel) -> str:
    """The model's ``protocol.manufacturer`` when it names one (models have no such field)."""
    given = model.protocol.get("manufacturer")
    return given[:64] if isinstance(given, str) and given else "EdgeFleet"


def _title(name: str) -> str:
    """``reportInterval`` and ``report_interval`` -> ``Report interval``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").split()
    text = " ".join(word if word.isupper() else word.lower() for word in words)
    return text[:1].upper() + text[1:] if text else name


def _template(name: str) -> str:
    return "{{ value_json['reported']['" + name + "'] }}"


def _on_off_template(name: str) -> str:
    return "{{ 'ON' if value_json['reported']['" + name + "'] else 'OFF' }}"


_Fields = dict[str, object]


def _entity(spec: PropertySpec, *, topics: DeviceTopics) -> tuple[str, _Fields] | str:
    """(component, its fields) for a property, or why it is not mapped."""
    writable = spec.access is Access.READ_WRITE
    component = ENTITY_TABLE.get((spec.type, writable))
    if component is None:
        return f"{spec.type} properties are not mapped (HA has no entity for a JSON object)"
    command: _Fields = {"command_topic": f"{topics.command_base}/{spec.name}"} if writable else {}
    if spec.type in (PropertyType.INT, PropertyType.FLOAT):
        fields = _number(spec) if writable else _sensor(spec)
    elif spec.type is PropertyType.BOOL:
        fields = {
            "value_template": _on_off_template(spec.name),
            "payload_on": "ON",
            "payload_off": "OFF",
        }
        if writable:
            fields |= {"state_on": "ON", "state_off": "OFF"}
    elif spec.type is PropertyType.ENUM:
        fields = {"value_template": _template(spec.name), "options": list(spec.values)}
        if not writable:
            fields["device_class"] = "enum"
    else:  # string
        fields = {"value_template": _template(spec.name)}
        if writable:
            fields |= {"min": 0, "max": min(spec.max_length or TEXT_MAX, TEXT_MAX)}
    return component, {**fields, **command}


def _device_class(spec: PropertySpec) -> str | None:
    unit = spec.unit
    if unit == "%":
        return _percent_class(spec.name)
    return None if unit is None else UNIT_DEVICE_CLASS.get(unit)


def _percent_class(name: str) -> str | None:
    lowered = name.lower()
    if "humid" in lowered:
        return "humidity"
    if "battery" in lowered:
        return "battery"
    return None


def _sensor(spec: PropertySpec) -> _Fields:
    fields: _Fields = {"value_template": _template(spec.name)}
    if spec.unit is not None:
        fields["unit_of_measurement"] = spec.unit
    device_class = _device_class(spec)
    if device_class is not None:
        fields["device_class"] = device_class
    if device_class in _TOTAL_INCREASING:
        fields["state_class"] = "total_increasing"
    elif spec.kind is Kind.TELEMETRY:
        fields["state_class"] = "measurement"
    return fields


def _number(spec: PropertySpec) -> _Fields:
    bounded = spec.minimum is not None and spec.maximum is not None
    fields: _Fields = {
        "value_template": _template(spec.name),
        "min": spec.minimum if spec.minimum is not None else -UNBOUNDED,
        "max": spec.maximum if spec.maximum is not None else UNBOUNDED,
        "step": _step(spec),
        "mode": "auto" if bounded else "box",
    }
    if spec.unit is not None:
        fields["unit_of_measurement"] = spec.unit
    device_class = _device_class(spec)
    if device_class is not None:
        fields["device_class"] = device_class
    return fields


def _step(spec: PropertySpec) -> float | int:
    """Models have no step: 1 for int, 0.5 for a float temperature (a setpoint), else 0.1."""
    if spec.type is PropertyType.INT:
        return 1
    if _device_class(spec) == "temperature":
        return _TEMPERATURE_STEP
    return _FLOAT_STEP


def _encode(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

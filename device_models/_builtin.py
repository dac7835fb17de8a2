"""Built-in device models, kept as YAML text so they read exactly like a user's model file.

They live in Python rather than package data so that this pure library never opens a file.
The test suite parses every one of them, so a broken built-in fails CI, not a device.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from device_models._errors import ModelError, Problem
from device_models._model import DeviceModel

__all__ = ["BUILTIN_MODEL_YAML", "builtin_model", "builtin_models"]

_TEMPERATURE_SENSOR = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: temperature-sensor
version: "1.0.0"
description: Battery-powered temperature and humidity sensor reporting over MQTT.
protocol:
  transport: mqtt
  telemetryTopic: telemetry
  qos: 1
properties:
  - name: temperature
    type: float
    unit: "°C"
    min: -40
    max: 125
    kind: telemetry
  - name: humidity
    type: float
    unit: "%"
    min: 0
    max: 100
    kind: telemetry
  - name: battery
    type: int
    unit: "%"
    min: 0
    max: 100
  - name: reportInterval
    description: Seconds between two telemetry reports.
    type: int
    unit: s
    min: 1
    max: 86400
    access: read-write
"""

_RELAY_SWITCH = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: relay-switch
version: "1.0.0"
description: Single-channel relay with a power-on default.
protocol:
  transport: mqtt
  qos: 1
properties:
  - name: "on"
    description: Whether the relay is closed.
    type: bool
    access: read-write
  - name: powerOnState
    description: What the relay does when power returns.
    type: enum
    values: ["off", "on", previous]
    access: read-write
  - name: switchCount
    description: Operations since manufacture (relays wear out).
    type: int
    min: 0
"""

_POWER_METER = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: power-meter
version: "1.0.0"
description: Single-phase energy meter.
protocol:
  transport: mqtt
  pollIntervalSeconds: 10
  qos: 1
properties:
  - name: voltage
    type: float
    unit: V
    min: 0
    max: 500
    kind: telemetry
  - name: current
    type: float
    unit: A
    min: 0
    max: 100
    kind: telemetry
  - name: power
    type: float
    unit: W
    min: -50000
    max: 50000
    kind: telemetry
  - name: energy
    description: Energy imported since the last reset.
    type: float
    unit: kWh
    min: 0
    kind: telemetry
  - name: frequency
    type: float
    unit: Hz
    min: 45
    max: 65
    kind: telemetry
  - name: serialNumber
    type: string
    maxLength: 32
"""

_THERMOSTAT = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: thermostat
version: "1.0.0"
description: Room thermostat with a writable setpoint, mode and schedule.
protocol:
  transport: mqtt
  qos: 1
properties:
  - name: temperature
    type: float
    unit: "°C"
    min: -20
    max: 60
    kind: telemetry
  - name: heating
    description: Whether the heating output is on right now.
    type: bool
  - name: setpoint
    type: float
    unit: "°C"
    min: 5
    max: 30
    access: read-write
  - name: mode
    type: enum
    values: ["off", heat, cool, auto]
    access: read-write
  - name: schedule
    type: object
    access: read-write
    properties:
      - name: enabled
        type: bool
        access: read-write
      - name: comfort
        type: float
        unit: "°C"
        min: 5
        max: 30
        access: read-write
      - name: eco
        type: float
        unit: "°C"
        min: 5
        max: 30
        access: read-write
  - name: firmware
    type: string
    maxLength: 32
"""

BUILTIN_MODEL_YAML: Mapping[str, str] = MappingProxyType(
    {
        "temperature-sensor": _TEMPERATURE_SENSOR,
        "relay-switch": _RELAY_SWITCH,
        "power-meter": _POWER_METER,
        "thermostat": _THERMOSTAT,
    }
)


@cache
def builtin_model(name: str) -> DeviceModel:
    """The built-in model called `name`; ModelError if there is none."""
    text = BUILTIN_MODEL_YAML.get(name)
    if text is None:
        known = ", ".join(sorted(BUILTIN_MODEL_YAML))
        reason = f"no built-in model {name!r} (built-ins: {known})"
        raise ModelError("unknown model", (Problem(path="name", reason=reason),))
    return DeviceModel.from_yaml(text)


def builtin_models() -> dict[str, DeviceModel]:
    """Every built-in model by name."""
    return {name: builtin_model(name) for name in BUILTIN_MODEL_YAML}

"""The MQTT topic scheme of device twins (docs/mqtt.md is the reference for device authors).

Everything lives under ``edgefleet/``. Provisioning topics are shared by all claiming devices;
device topics carry the device id as their third level, and the broker's per-device role
limits a device to its own subtree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "AGENT_AVAILABILITY",
    "DEVICE_ID",
    "NODE_NAME",
    "PROVISION_REQUEST",
    "PROVISION_RESPONSE_FILTER",
    "RID",
    "DeviceTopic",
    "Op",
    "adopt_topic",
    "agent_subscriptions",
    "device_topic",
    "ha_command_base",
    "ha_command_filter",
    "is_adopt_topic",
    "parse_device_topic",
    "parse_ha_command",
    "provision_response",
    "state_topic",
]

ROOT = "edgefleet"
PROVISION_REQUEST = f"{ROOT}/provision/request"
PROVISION_RESPONSE_FILTER = f"{ROOT}/provision/response/+"
AGENT_AVAILABILITY = f"{ROOT}/agent/availability"
# Node names (certificate names) are DNS-like: safe as a topic level.
NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")

# Device ids are topic levels and broker usernames: ASCII, no MQTT wildcards or separators.
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Request ids are echoed back and, for provisioning, are a topic level: same safe alphabet.
RID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Op(StrEnum):
    """What a message on a device topic is; the value is the topic suffix."""

    GET = "twin/get"  # device -> agent: {"rid"}
    REPORTED = "twin/reported"  # device -> agent: {"rid", "patch", "version"?}
    TELEMETRY = "telemetry"  # device -> agent: {"patch"}; answered only on error
    AVAILABILITY = "availability"  # device -> broker (retained, last will): online | offline
    RESULT = "twin/result"  # agent -> device: the answer to get / reported / telemetry
    DESIRED = "twin/desired"  # agent -> device: {"version", "patch"} in order
    DELTA = "twin/delta"  # agent -> device (retained): {"version", "delta"}


# What a device may publish; everything else under its subtree is written by the agent only.
DEVICE_PUBLISHES = (Op.GET, Op.REPORTED, Op.TELEMETRY, Op.AVAILABILITY)
_BY_SUFFIX = {op.value: op for op in DEVICE_PUBLISHES}


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    device_id: str
    op: Op


def device_prefix(device_id: str) -> str:
    return f"{ROOT}/devices/{device_id}"


def device_topic(device_id: str, op: Op) -> str:
    return f"{device_prefix(device_id)}/{op.value}"


def provision_response(rid: str) -> str:
    return f"{ROOT}/provision/response/{rid}"


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """The device and operation of a topic a device publishes on, or None if it is not one."""
    parts = topic.split("/", 3)
    if len(parts) != 4 or parts[0] != ROOT or parts[1] != "devices":
        return None
    if not DEVICE_ID.fullmatch(parts[2]):
        return None
    op = _BY_SUFFIX.get(parts[3])
    return None if op is None else DeviceTopic(parts[2], op)


def adopt_topic(node: str, device_id: str) -> str:
    """Where a node hands a device over to `node` (retained; agents only, handover.py)."""
    return f"{ROOT}/agents/{node}/adopt/{device_id}"


def is_adopt_topic(node: str, topic: str) -> bool:
    return topic.startswith(f"{ROOT}/agents/{node}/adopt/")


def state_topic(device_id: str) -> str:
    """The device's reported section, retained: ``{"version", "reported"}``.

    Published by the agent when Home Assistant discovery is on (docs/home-assistant.md). Not
    a suffix a device may publish (`DEVICE_PUBLISHES`), and no agent subscription matches it.
    """
    return f"{device_prefix(device_id)}/twin/state"


def ha_command_base(node: str, device_id: str) -> str:
    """Where Home Assistant sends commands for `device_id` of `node`: ``<base>/<property>``.

    Outside the device's subtree on purpose: a device never sees a raw HA command (a command
    is a change to desired, which only the cloud makes), and with the node in the topic only
    the owning agent takes it on a broker shared by several agents.
    """
    return f"{ROOT}/ha/{node}/{device_id}/set"


def ha_command_filter(node: str) -> str:
    return f"{ROOT}/ha/{node}/+/set/+"


def parse_ha_command(node: str, topic: str) -> tuple[str, str] | None:
    """(device id, property) of a Home Assistant command topic of `node`, or None."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[:3] != [ROOT, "ha", node] or parts[4] != "set":
        return None
    device_id, name = parts[3], parts[5]
    if not DEVICE_ID.fullmatch(device_id) or not PROPERTY_NAME.fullmatch(name):
        return None
    return device_id, name


# A model property's name (device_models: an identifier of at most 64 characters).
PROPERTY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def agent_subscriptions(node: str, *, home_assistant: bool = False) -> list[str]:
    """The filters the agent of `node` subscribes to (QoS 1).

    With `home_assistant`, also the Home Assistant command topics of its devices.
    """
    devices = f"{ROOT}/devices/+"
    return [
        PROVISION_REQUEST,
        *(f"{devices}/{op.value}" for op in DEVICE_PUBLISHES),
        adopt_topic(node, "+"),
        *([ha_command_filter(node)] if home_assistant else []),
    ]

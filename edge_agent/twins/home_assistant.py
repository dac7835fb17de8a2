"""Home Assistant MQTT discovery for the agent's devices (``[twins] home_assistant = true``).

The mapping model -> HA entities is `device_models.home_assistant` (pure); this module
publishes it and keeps it true (docs/home-assistant.md):

1. On every broker session start (`republish`): the node's own config, then every active
   device's configs and retained state, all retained, QoS 1.
2. When the set of devices changes (`reconcile`: after a claim, an adoption, a removal, a
   revocation or a move): a new device's configs are published; a device that is gone gets an
   empty retained payload on each of its config topics and its state topic, so HA deletes it.
3. After device messages are applied (`refresh`): a device whose reported ``$version`` moved
   gets its retained state topic (``edgefleet/devices/<id>/twin/state``) again; a device whose
   model changed version gets its configs again, and the topics of properties the new model
   no longer has are cleared.
4. Commands from HA (``edgefleet/ha/<node>/<device>/set/<property>``) are changes to desired,
   which belongs to the cloud: `command` checks one against the device's model and queues it
   (at most ``max_queued_commands``; more are refused); `run_commands` forwards them one at a
   time, in arrival order, as desired requests over the sync stream (`DesiredForwarder`). The
   device gets the change through the normal desired path, and HA sees the new state only when
   the device reports it. Never queued for later: with no stream to the cloud, the command is
   refused (unless rule 5 applies). Each outcome is published retained on the device's
   "Last command" state topic (``edgefleet/devices/<id>/ha/command``): ``sent``, then
   ``accepted`` or ``refused: <why>``.
5. Local control: for a device whose model says ``localControl: true``, a command the cloud
   cannot take because it is unreachable (no stream, or the stream broke under the request)
   or too old to take commands is written into desired here instead
   (`EdgeTwinReplica.write_local_desired`): the device gets it at once, the change waits in
   the outbox and syncs under the conflict rule (desired: the cloud wins a key both sides
   wrote). "Last command" shows ``applied locally (<why>)``. While the cloud is reachable the
   command still goes through it (it records who asked), and a cloud that answered, refused
   or did not answer in time is never overridden: the command may have been applied there.

One lock orders every publish of this module, and what it remembers as published is updated
only once the broker acknowledged it: a failed publish leaves it to the next session's
`republish`. With discovery off every entry point returns at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiomqtt

from device_models import DeviceModel
from device_models import home_assistant as mapping
from device_models.home_assistant import CommandValue
from device_models.sync_requests import (
    NOT_TAKEN,
    UNREACHABLE,
    DesiredAnswer,
    RequestRefusedError,
)
from edge_agent.twins import topics
from edge_agent.twins.replica import EdgeTwinReplica, LocalWriteError, Publisher
from edge_agent.twins.topics import Op
from edge_agent.twins.twin_store import DeviceRecord, DeviceState

__all__ = [
    "COMMAND_SOURCE",
    "DesiredForwarder",
    "HomeAssistantDiscovery",
    "HomeAssistantSettings",
    "command_state_topic",
]

log = logging.getLogger("edge_agent.twins.home_assistant")

_CHUNK = 256
"""Publishes in flight together at most (their PUBACKs overlap; memory stays bounded)."""
COMMAND_SOURCE = "home-assistant"
LOCAL_REASONS = {UNREACHABLE: UNREACHABLE, NOT_TAKEN: "the cloud does not take commands"}
"""Refusals that mean the cloud never got the command -> the "applied locally (...)" text; a
model with local control applies the command at the edge after these (rule 5) only."""


def command_state_topic(device_id: str) -> str:
    """The "Last command" sensor's retained state; not a suffix a device may publish."""
    return f"{topics.device_prefix(device_id)}/ha/command"


class DesiredForwarder(Protocol):
    """What commands need of the sync link (edge_agent.twin_link.CloudTwinLink)."""

    @property
    def connected(self) -> bool:
        """A sync stream to the cloud is up now."""
        ...

    async def request_desired(
        self, device: str, patch: dict[str, Any], *, source: str
    ) -> DesiredAnswer:
        """The cloud's answer; raises RequestRefusedError when it never got there."""
        ...


@dataclass(frozen=True, slots=True)
class _Command:
    device_id: str
    name: str
    payload: bytes
    at: float


@dataclass(frozen=True, kw_only=True)
class HomeAssistantSettings:
    enabled: bool = False
    """Publish Home Assistant discovery for every onboarded device (``[twins]
    home_assistant``). Off by default: it adds a retained state publish per accepted report."""

    prefix: str = mapping.DEFAULT_PREFIX
    """HA's discovery prefix (``[twins] home_assistant_prefix``); HA's default is
    ``homeassistant``. The agent's broker user gets write access to ``<prefix>/#``."""

    max_config_bytes: int = mapping.MAX_CONFIG_BYTES
    """Largest config message, in bytes; a property whose config is larger is skipped."""

    max_queued_commands: int = 16
    """HA commands waiting to be forwarded at most; one more is refused (``busy``). Each
    waits at most the sync link's request timeout (10 s), so a person clicking is never
    queued behind minutes of others."""

    def __post_init__(self) -> None:
        if not mapping.valid_prefix(self.prefix):
            raise ValueError(
                f"home_assistant_prefix {self.prefix[:64]!r}: topic levels of letters, digits, "
                "_ and -, no wildcards"
            )


@dataclass(frozen=True, kw_only=True)
class _Shown:
    """What the broker holds for one device."""

    model: str
    version: str
    slug: str
    config_topics: frozenset[str]
    state_version: int | None = None
    entities: int = 0
    skipped: int = 0


@dataclass(kw_only=True)
class HomeAssistantMetrics:
    commands_refused: int = 0
    """Refused by the agent (bad payload, unknown device, no cloud, busy) or by the cloud."""
    commands_forwarded: int = 0
    """Sent to the cloud as desired requests and answered (accepted or refused)."""
    commands_accepted: int = 0
    """Accepted by the cloud (desired changed there)."""
    commands_applied_locally: int = 0
    """Written into desired at the edge (local control, the cloud unreachable; rule 5)."""
    publish_failures: int = 0


@dataclass(kw_only=True)
class _Plan:
    """Messages to publish in order and the memory to keep once they are acknowledged."""

    shown: dict[str, _Shown]
    outgoing: list[tuple[str, bytes]] = field(default_factory=list)
    slugs: dict[str, str] = field(default_factory=dict)
    """Slug -> the device that has it: two ids with one slug would share entity ids."""

    def __post_init__(self) -> None:
        self.slugs = {seen.slug: device_id for device_id, seen in self.shown.items()}


class HomeAssistantDiscovery:
    """Publishes and clears HA discovery for the devices of `twins` (rules above)."""

    def __init__(
        self,
        *,
        settings: HomeAssistantSettings,
        node: str,
        twins: EdgeTwinReplica,
        forwarder: DesiredForwarder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = HomeAssistantMetrics()
        self._node = node
        self._twins = twins
        self._forwarder = forwarder
        self._clock = clock
        self._shown: dict[str, _Shown] = {}
        self._publisher: Publisher | None = None
        self._lock = asyncio.Lock()
        self._commands: asyncio.Queue[_Command] = asyncio.Queue(settings.max_queued_commands)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def entities(self) -> int:
        """Device entities whose config the broker holds (the node's own not counted)."""
        return sum(shown.entities for shown in self._shown.values())

    @property
    def skipped(self) -> int:
        """Properties of shown devices that have no entity (not mapped, unsafe name, caps)."""
        return sum(shown.skipped for shown in self._shown.values())

    def attach(self, publisher: Publisher | None) -> None:
        self._publisher = publisher

    async def republish(self) -> None:
        """A new broker session: the node's config, every device's configs and state."""
        if not self.enabled:
            return
        async with self._lock:
            node = mapping.node_discovery(
                node=self._node,
                prefix=self.settings.prefix,
                agent_availability=topics.AGENT_AVAILABILITY,
            )
            plan = _Plan(shown=dict(self._shown))
            plan.outgoing.append((node.topic, node.encode()))
            self._plan_removals(plan)
            self._plan_devices(plan, self._twins.device_ids(), force=True)
            await self._publish(plan)

    async def reconcile(self) -> None:
        """The set of devices may have changed: show new ones, clear the ones gone.

        Shown devices whose model has a new version meanwhile are shown again too.
        """
        if not self.enabled:
            return
        async with self._lock:
            plan = _Plan(shown=dict(self._shown))
            self._plan_removals(plan)
            # new devices, and shown ones whose model changed version meanwhile
            due = [device for device in self._twins.device_ids() if self._needs_configs(device)]
            self._plan_devices(plan, due, force=False)
            await self._publish(plan)

    async def refresh(self, device_ids: Iterable[str]) -> None:
        """Devices whose twin may have changed: their state, and configs if the model did."""
        if not self.enabled:
            return
        async with self._lock:
            ids = sorted(set(device_ids))
            if any(self._needs_configs(device_id) for device_id in ids):
                plan = _Plan(shown=dict(self._shown))
                self._plan_devices(plan, ids, force=False)
                await self._publish(plan)
                return
            # The common case, once per batch of reports: states only, no copy of the memory.
            outgoing: list[tuple[str, bytes]] = []
            versions: dict[str, int] = {}
            for device_id in ids:
                shown, record = self._shown.get(device_id), self._active(device_id)
                if shown is None or record is None:
                    continue
                reported = record.replica.twin.reported
                if shown.state_version != reported.version:
                    payload = mapping.state_payload(reported.version, reported.values)
                    outgoing.append((topics.state_topic(device_id), payload))
                    versions[device_id] = reported.version
            if await self._send(outgoing):
                for device_id, version in versions.items():
                    shown = self._shown[device_id]
                    self._shown[device_id] = dataclasses.replace(shown, state_version=version)

    def command(self, device_id: str, name: str, payload: bytes) -> None:
        """A command from HA: queued for `run_commands`, or refused at once when full."""
        if not self.enabled:
            return
        try:
            self._commands.put_nowait(_Command(device_id, name, payload, self._clock()))
        except asyncio.QueueFull:
            # Not even its "Last command" state: publishing awaits, and this must not.
            self.metrics.commands_refused += 1
            log.warning(
                "Home Assistant command for %s.%s refused: %s commands wait already",
                device_id,
                name,
                self._commands.qsize(),
            )

    async def run_commands(self) -> None:
        """Forward queued commands one at a time, in order (rule 4); runs until cancelled."""
        while True:
            await self.forward_next()

    async def forward_next(self) -> None:
        """Wait for the next queued command, forward it and show its outcome."""
        command = await self._commands.get()
        try:
            state = await self._forward(command)
        except Exception:  # one bad command must not end the service's task group
            log.exception("Home Assistant command for %s failed", command.device_id)
            state = "refused: the agent failed to forward it"
        if state.startswith("refused"):
            self.metrics.commands_refused += 1
        log.info("Home Assistant command for %s.%s: %s", command.device_id, command.name, state)
        await self._show_command(command, state)

    async def _forward(self, command: _Command) -> str:
        """The command's outcome as the "Last command" state shows it."""
        record = self._active(command.device_id)
        model = None if record is None else self._twins.models.get(record.model)
        if model is None:
            return "refused: not an active device of this node"
        parsed = mapping.parse_command(model, command.name, command.payload)
        if isinstance(parsed, str):
            return f"refused: {parsed}"
        forwarder = self._forwarder
        if forwarder is None or not forwarder.connected:
            return await self._fallback(command, parsed, model, UNREACHABLE)
        await self._show_command(command, "sent")
        try:
            answer = await forwarder.request_desired(
                command.device_id, {parsed.property: parsed.value}, source=COMMAND_SOURCE
            )
        except RequestRefusedError as error:
            return await self._fallback(command, parsed, model, error.reason)
        self.metrics.commands_forwarded += 1  # the cloud answered it
        if not answer.accepted:
            return f"refused: {answer.reason}"
        self.metrics.commands_accepted += 1
        return "accepted"

    async def _fallback(
        self, command: _Command, parsed: CommandValue, model: DeviceModel, reason: str
    ) -> str:
        """The cloud did not take the command: apply it here if allowed (rule 5), or refuse."""
        why = LOCAL_REASONS.get(reason)
        if why is None or not model.local_control:
            return f"refused: {reason}"
        try:
            await self._twins.write_local_desired(
                command.device_id, {parsed.property: parsed.value}
            )
        except LocalWriteError as error:
            return f"refused: {error.message}"
        self.metrics.commands_applied_locally += 1
        return f"applied locally ({why})"

    async def _show_command(self, command: _Command, state: str) -> None:
        payload = mapping.command_state_payload(state, prop=command.name, at=command.at)
        await self._send([(command_state_topic(command.device_id), payload)])

    # ------------------------------------------------------------------ planning

    def _active(self, device_id: str) -> DeviceRecord | None:
        record = self._twins.device(device_id)
        return record if record is not None and record.state is DeviceState.ACTIVE else None

    def _needs_configs(self, device_id: str) -> bool:
        """An active device not shown yet, or shown from another model version."""
        record = self._active(device_id)
        model = None if record is None else self._twins.models.get(record.model)
        if model is None:
            return False
        shown = self._shown.get(device_id)
        return shown is None or (shown.model, shown.version) != (model.name, model.version)

    def _plan_removals(self, plan: _Plan) -> None:
        for device_id in sorted(plan.shown):
            if self._active(device_id) is None:
                gone = plan.shown.pop(device_id)
                plan.slugs.pop(gone.slug, None)
                plan.outgoing += [(topic, b"") for topic in sorted(gone.config_topics)]
                plan.outgoing.append((topics.state_topic(device_id), b""))
                plan.outgoing.append((command_state_topic(device_id), b""))
                log.info("Home Assistant discovery of device %s cleared", device_id)

    def _plan_devices(self, plan: _Plan, device_ids: Iterable[str], *, force: bool) -> None:
        for device_id in device_ids:
            record = self._active(device_id)
            if record is None:
                continue
            shown = plan.shown.get(device_id)
            model = self._twins.models.get(record.model)
            if model is None:
                continue  # not loaded here: nothing to map (the twin refuses reports too)
            if (
                force
                or shown is None
                or (shown.model, shown.version) != (model.name, model.version)
            ):
                shown = self._plan_configs(plan, record, model, shown)
                if shown is None:
                    continue
            reported = record.replica.twin.reported
            if force or shown.state_version != reported.version:
                payload = mapping.state_payload(reported.version, reported.values)
                plan.outgoing.append((topics.state_topic(device_id), payload))
                shown = dataclasses.replace(shown, state_version=reported.version)
            plan.shown[device_id] = shown

    def _plan_configs(
        self, plan: _Plan, record: DeviceRecord, model: DeviceModel, shown: _Shown | None
    ) -> _Shown | None:
        device_id = record.device_id
        slug = mapping.slug(device_id)
        holder = plan.slugs.setdefault(slug, device_id)
        if holder != device_id:
            log.error(
                "Home Assistant discovery of device %s skipped: its id maps to the same "
                "entity ids as device %s's",
                device_id,
                holder,
            )
            return None
        discovery = mapping.device_discovery(
            model,
            device_id=device_id,
            device_name=device_id,
            node=self._node,
            topics=mapping.DeviceTopics(
                state=topics.state_topic(device_id),
                availability=topics.device_topic(device_id, Op.AVAILABILITY),
                agent_availability=topics.AGENT_AVAILABILITY,
                command_base=topics.ha_command_base(self._node, device_id),
                command_state=command_state_topic(device_id),
            ),
            prefix=self.settings.prefix,
            max_config_bytes=self.settings.max_config_bytes,
        )
        if shown is None or (shown.model, shown.version) != (model.name, model.version):
            for skip in discovery.skipped:
                log.info(
                    "Home Assistant: property %s of device %s (model %s) has no entity: %s",
                    skip.property,
                    device_id,
                    model.name,
                    skip.reason,
                )
        old = shown.config_topics if shown is not None else frozenset()
        plan.outgoing += [(topic, b"") for topic in sorted(old - discovery.topics)]
        plan.outgoing += [(config.topic, config.encode()) for config in discovery.configs]
        return _Shown(
            model=model.name,
            version=model.version,
            slug=slug,
            config_topics=discovery.topics,
            state_version=shown.state_version if shown is not None else None,
            entities=len(discovery.configs),
            skipped=len(discovery.skipped),
        )

    # ------------------------------------------------------------------ publishing

    async def _publish(self, plan: _Plan) -> None:
        if await self._send(plan.outgoing):
            self._shown = plan.shown

    async def _send(self, outgoing: list[tuple[str, bytes]]) -> bool:
        """Publish in order; False when it did not all reach the broker."""
        publisher = self._publisher
        if publisher is None:
            return False  # no session: the next one republishes everything
        try:
            for start in range(0, len(outgoing), _CHUNK):
                await _publish_chunk(publisher, outgoing[start : start + _CHUNK], start)
        except aiomqtt.MqttError as error:
            # The session is gone; its successor's `republish` shows every current device and
            # clears the ones still remembered here.
            self.metrics.publish_failures += 1
            log.warning(
                "Home Assistant discovery not published (%s); done again on reconnect", error
            )
            return False
        return True


async def _publish_chunk(publisher: Publisher, chunk: list[tuple[str, bytes]], start: int) -> None:
    """Publish in order (tasks start in creation order), acknowledgements overlapping."""
    try:
        async with asyncio.TaskGroup() as group:
            for index, (topic, payload) in enumerate(chunk):
                group.create_task(
                    publisher.publish(topic, payload, retain=True),
                    name=f"twins.home_assistant.publish[{start + index}]",
                )
    except* aiomqtt.MqttError as errors:
        raise errors.exceptions[0] from None

"""`TwinMqttService`: the MQTT device service of the edge's twins, run as one task of the daemon.

It owns three long-running tasks in one TaskGroup:

- ``twins.mqtt``: the agent's own broker session (persistent, QoS 1, manual acknowledgement:
  a device message is acknowledged to the broker only after its effect is committed), which
  feeds device messages to `EdgeTwinReplica` in batches and claim requests to the onboarding queue;
- ``twins.onboarding``: answers claim requests one at a time (each needs broker admin calls);
- ``twins.outbox``: delivers outbox records to the cloud through the injected `Sender`;
- ``twins.home_assistant.commands`` (discovery on): forwards Home Assistant commands to the
  cloud as desired requests through the `Sender` when it is a `DesiredForwarder` (the sync
  link), one at a time (edge_agent/twins/home_assistant.py, rule 4).

Before those start it sets up, idempotently, the broker accounts it relies on (``$CONTROL``
dynamic security, as the admin): the claim role and client, and the agent's own role and client
with a fresh random password each start.

MQTT version of the agent's session (``mqtt_version``): ``auto`` asks for MQTT 5 and, when the
broker refuses that CONNECT as an unsupported protocol version (a 3.1.1 broker's CONNACK return
code 1, or MQTT 5's reason 0x84), connects again at once with 3.1.1 and keeps 3.1.1 until the
agent restarts. Both keep the same durable session: 3.1.1 ``clean_session=false``; MQTT 5
``clean_start=false`` with a session expiry interval (by default "never", what 3.1.1 gets). A
refusal or a disconnect by the broker is logged with its reason code and name. Device topics and
payloads do not depend on the version: devices use whichever they like.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon_support.files import write_atomic
from edge_agent.twins import dynsec, topics
from edge_agent.twins.handover import Handover, MoveError
from edge_agent.twins.home_assistant import (
    DesiredForwarder,
    HomeAssistantDiscovery,
    HomeAssistantSettings,
)
from edge_agent.twins.models import load_models
from edge_agent.twins.onboarding import Onboarding
from edge_agent.twins.outbox import Metrics, Outbox, OutboxSettings, Sender
from edge_agent.twins.payloads import Code, RequestError
from edge_agent.twins.replica import (
    MAX_UNACKNOWLEDGED_BATCHES,
    CloudChangeError,
    CloudChangeResult,
    EdgeTwinReplica,
    Publisher,
)
from edge_agent.twins.session_wire import Done, Incoming, SessionWire
from edge_agent.twins.tls import BrokerTls, client_context, describe_error
from edge_agent.twins.topics import DeviceTopic
from edge_agent.twins.twin_store import Durability, TwinStore

__all__ = [
    "MQTT_VERSIONS",
    "MqttVersionCollector",
    "TwinMqttService",
    "TwinMqttSettings",
    "describe_mqtt_error",
]

log = logging.getLogger("edge_agent.twins.mqtt_service")


@dataclass(frozen=True, kw_only=True)
class TwinMqttSettings:
    data_dir: Path
    """Folder of ``twins.sqlite3`` (twins, device registry, outbox); must survive restarts."""

    node_name: str
    """This node's name; with the database's boot id it forms the sync origin of its twins."""

    admin_password: str
    """Password of the broker's dynamic-security admin (``mosquitto_ctrl dynsec init``)."""

    claim_password: str
    """Password of the shared claim credential that devices are shipped with."""

    broker_host: str = "127.0.0.1"
    """The local mosquitto; devices and agent share it (loopback or the site network)."""

    broker_port: int = 1883
    """MQTT port of the broker (its TLS listener when `broker_tls` is set)."""

    broker_tls: BrokerTls | None = None
    """TLS for every connection to the broker (the session and the dynamic-security admin);
    None: plain TCP (a broker on loopback)."""

    admin_username: str = "admin"
    """Dynamic-security admin user; used only for ``$CONTROL`` commands, never for data."""

    claim_username: str = "edgefleet-claim"
    """Username of the shared claim credential; allowed only on the provisioning topics."""

    agent_username: str = "edgefleet-agent"
    """The agent's own broker user (created at start with a fresh random password)."""

    agent_client_id: str = "edgefleet-agent"
    """Prefix of the agent's MQTT client id. The id is ``<prefix>-<16 random hex digits>``,
    made once and kept in ``<data_dir>/agent-client-id`` (0600), so the broker keeps the
    agent's session (and queues QoS 1 device messages, up to ``max_queued_messages``) while
    the agent restarts. Secret because the broker ends a session when another connection
    uses its client id: every device holds the claim credential, so a public id would let any
    of them push the agent off the broker. The agent's broker user is bound to it."""

    models_dir: Path | None = None
    """Folder of extra device models (``*.yaml``); the built-in models are always there."""

    require_registration: bool = False
    """True: only devices registered in advance (`register_claim`) may claim. False: any
    holder of the claim credential may onboard a new id (fleet provisioning by claim)."""

    durability: Durability = Durability.FULL
    """``full`` fsyncs every commit (survives power loss); ``normal`` survives kill -9 only."""

    max_devices: int = 10_000
    """Devices one agent serves at most; every twin is kept in memory (a few KB each)."""

    max_payload_bytes: int = 64 * 1024
    """Largest device message, in bytes: a 32 KB section plus envelope and escaping."""

    max_claim_bytes: int = 4 * 1024
    """Largest claim request, in bytes; a real one is about 200."""

    max_cloud_change_bytes: int = 512 * 1024
    """Largest cloud change given as text, in bytes: 32 KB of values plus their metadata."""

    max_batch: int = 256
    """Device messages committed together at most (group commit: one transaction and one
    fsync per batch keeps thousands of durable reports per second possible); bounds the
    work done between two looks at the event loop (~256 x 0.2 ms)."""

    batch_wait: float = 0.0
    """Seconds to wait for more device messages after the first of a batch, at most.
    0: a batch is whatever arrived while the previous one was committed (natural group
    commit; it grows with the load, to ~100 messages at 1,000 reports/s in the twins bench, and
    an idle device gets its answer at once). A wait only pays for a few devices reporting at a
    slow pace (more reports per fsync) and costs each of them this much latency; since the
    agent acknowledges after the commit, the broker's in-flight window to the agent bounds a
    batch as well."""

    max_unacknowledged_batches: int = MAX_UNACKNOWLEDGED_BATCHES
    """Batches committed whose device messages are not acknowledged to the broker yet, at most
    (replica.py rule 7). 4 x `max_batch` is about `max_inflight_answers` and `receive_maximum`;
    deeper only queues answers in the client. 1: each batch waits for its PUBACKs."""

    max_inflight_answers: int = 1000
    """Answers and deltas sent to the broker and not yet acknowledged by it, at most
    (`SessionWire`'s window, paho's when it is not installed; more wait in order). The
    default 20 made answers wait a broker round trip per 20 under load."""

    max_queued_messages: int = 10_000
    """Device messages buffered in the agent at most (QoS 1 ones are also limited by the
    broker's in-flight window, since the agent acknowledges after committing)."""

    claim_queue: int = 64
    """Claim requests waiting at most; beyond, claims are answered ``unavailable``."""

    mqtt_version: str = "auto"
    """MQTT version of the agent's session: ``auto`` (MQTT 5, or 3.1.1 when the broker refuses
    5), ``5`` (only 5: a broker without it is an error, logged, retried) or ``3.1.1``."""

    session_expiry: int = 0xFFFF_FFFF
    """MQTT 5 only: seconds the broker keeps the agent's session (subscriptions and queued QoS 1
    device messages) after the agent disconnects. The default 4294967295 means "never", what a
    3.1.1 ``clean_session=false`` session gets, so a restart loses nothing under either version;
    mosquitto's ``persistent_client_expiration`` caps both alike."""

    receive_maximum: int = 1000
    """MQTT 5 only: QoS 1 device messages the broker sends the agent unacknowledged, at most
    (the agent acknowledges after committing). Under 3.1.1 the broker's
    ``max_inflight_messages`` (20 by default) decides. Capped at `max_queued_messages`: aiomqtt
    drops messages beyond its queue, and a dropped unacknowledged one waits for a reconnect."""

    keepalive: int = 30
    """MQTT keepalive of the agent's session in seconds; the broker notices a dead agent
    within 1.5 times this."""

    admin_timeout: float = 10.0
    """Seconds one dynamic-security round trip may take."""

    reconnect_initial: float = 0.5
    """Seconds before the first reconnect to the broker; doubled per failure."""

    reconnect_max: float = 15.0
    """Ceiling in seconds of the reconnect delay."""

    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    """Capacity and retry policy of the durable outbox."""

    home_assistant: bool = False
    """Publish Home Assistant MQTT discovery of the devices, and a retained state topic per
    device (docs/home-assistant.md). Off by default: a retained publish per accepted report."""

    home_assistant_prefix: str = "homeassistant"
    """HA's discovery prefix; the agent's broker user gets write access to ``<prefix>/#``."""

    @property
    def database(self) -> Path:
        return self.data_dir / "twins.sqlite3"

    @property
    def client_id_file(self) -> Path:
        return self.data_dir / "agent-client-id"


MQTT_VERSIONS = ("auto", "5", "3.1.1")
"""The values of `TwinMqttSettings.mqtt_version` (``[twins] mqtt_version``)."""
PROTOCOL_LEVEL = {"5": 5, "3.1.1": 4}
"""MQTT protocol level of each version (the CONNECT byte; the gauge's value)."""
_UNSUPPORTED_PROTOCOL = frozenset({1, 0x84})
"""CONNACK refusing the protocol version: 3.1.1's return code 1 (what a broker without MQTT 5
answers, and paho reports as 0x84), MQTT 5's reason code 0x84."""
_REASON_HINTS = {
    0x84: 'the broker does not speak MQTT 5: set [twins] mqtt_version = "auto" or "3.1.1"',
    0x85: "the broker refused the agent's client id (see agent_client_id)",
    0x86: "the agent's broker user or password was refused: was its dynamic-security client "
    "changed or deleted by hand?",
    0x87: "is the agent's dynamic-security client disabled, or its role changed? "
    "(docs/mqtt-broker.md)",
    0x88: "the broker is unavailable",
    0x89: "the broker is busy",
    0x8A: "the agent's client is banned on the broker",
    0x8B: "the broker is shutting down",
    0x8E: "another connection took over the agent's session (same client id): is a second "
    "agent running with this data dir?",
    0x95: "a packet was larger than the broker's message_size_limit",
    0x97: "a broker quota was exceeded",
    0x98: "an operator acted on the broker (the agent's dynamic-security client disabled, "
    "changed or deleted?)",
}
"""What to check for reason codes an operator can act on (MQTT 5 CONNACK and DISCONNECT)."""


PACKET_HEADROOM = 4096
"""Bytes of a packet beyond its payload: fixed header, topic (512 at most), MQTT 5 properties."""


def max_packet_bytes(settings: TwinMqttSettings) -> int:
    """The Maximum Packet Size the agent asks the broker for (MQTT 5): 4x the payload limit.

    Above it the broker drops the message for the agent (the device gets no answer); up to it a
    message over ``max_payload_bytes`` still arrives and is answered ``too_large`` (docs/mqtt.md
    §6). So one buffered message costs at most this, ``max_queued_messages`` of them at most
    that many times.
    """
    return 4 * settings.max_payload_bytes + PACKET_HEADROOM


def describe_mqtt_error(error: BaseException) -> str:
    """A log line's account of a refused connection or a broker's disconnect.

    Names the MQTT reason (``Not authorized, reason code 135``) and, for the codes an operator
    can act on, what to check; other errors are given as they are.
    """
    if not isinstance(error, aiomqtt.MqttCodeError):
        return str(error)
    code = getattr(error.rc, "value", error.rc)
    if isinstance(error, MqttConnectError):
        if code in _UNSUPPORTED_PROTOCOL:
            code = 0x84
        # aiomqtt words a 3.1.1 return code in its message, a ReasonCode by its name
        name = error.args[0] if isinstance(error.rc, int) and error.args else str(error.rc)
        if code == 0x84:  # paho's name for 3.1.1's return code 1 as well
            name = "Unsupported protocol version"
        what = f"the broker refused the connection: {name} (reason code {code})"
    elif isinstance(code, int) and code >= 0x80:  # MQTT 5: a code from 0x80 up is a failure
        what = f"the broker ended the session: {error.rc} (reason code {code})"
    else:
        return str(error)
    hint = _REASON_HINTS.get(code) if isinstance(code, int) else None
    return f"{what}: {hint}" if hint else what


def _refuses_v5(error: aiomqtt.MqttError) -> bool:
    return isinstance(error, MqttConnectError) and (
        getattr(error.rc, "value", error.rc) in _UNSUPPORTED_PROTOCOL
    )


def _disconnect_cause(client: aiomqtt.Client) -> aiomqtt.MqttError | None:
    gone = client._disconnected  # noqa: SLF001 - aiomqtt keeps the reason only here
    if not gone.done() or gone.cancelled():
        return None
    cause = gone.exception()
    return cause if isinstance(cause, aiomqtt.MqttError) else None


class MqttVersionCollector(Collector):
    """``edge_agent_twins_mqtt_protocol_version`` on /metrics: the session's protocol level.

    With Home Assistant discovery on, also its ``edge_agent_twins_home_assistant_*`` figures.

    Register it in the agent's registry: ``registry.register(MqttVersionCollector(service))``.
    """

    def __init__(self, service: TwinMqttService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        version = self._service.mqtt_version
        yield GaugeMetricFamily(
            "edge_agent_twins_mqtt_protocol_version",
            "MQTT protocol level of the agent's broker session: 5 (MQTT 5) or 4 (MQTT 3.1.1); "
            "0 while it is not connected",
            value=0 if version is None else PROTOCOL_LEVEL[version],
        )
        discovery = self._service.home_assistant
        if not discovery.enabled:
            return
        yield GaugeMetricFamily(
            "edge_agent_twins_home_assistant_entities",
            "Device entities whose Home Assistant discovery config the broker holds",
            value=discovery.entities,
        )
        yield GaugeMetricFamily(
            "edge_agent_twins_home_assistant_skipped_properties",
            "Properties of shown devices without a Home Assistant entity (not mapped, unsafe "
            "name, or over a cap; each is logged once)",
            value=discovery.skipped,
        )
        yield CounterMetricFamily(
            "edge_agent_twins_home_assistant_commands_refused",
            "Home Assistant commands refused: by the agent (bad value, no cloud, busy) or by "
            "the cloud",
            value=discovery.metrics.commands_refused,
        )
        yield CounterMetricFamily(
            "edge_agent_twins_home_assistant_commands_forwarded",
            "Home Assistant commands the cloud answered (accepted or refused)",
            value=discovery.metrics.commands_forwarded,
        )
        yield CounterMetricFamily(
            "edge_agent_twins_home_assistant_commands_accepted",
            "Home Assistant commands the cloud accepted (desired changed there)",
            value=discovery.metrics.commands_accepted,
        )
        yield CounterMetricFamily(
            "edge_agent_twins_home_assistant_commands_applied_locally",
            "Home Assistant commands written into desired at the edge (a model with "
            "localControl, the cloud unreachable); they sync when the link returns",
            value=discovery.metrics.commands_applied_locally,
        )
        yield CounterMetricFamily(
            "edge_agent_twins_home_assistant_publish_failures",
            "Rounds of discovery publishing cut short by a lost broker session",
            value=discovery.metrics.publish_failures,
        )


def _forwarder(sender: Sender) -> DesiredForwarder | None:
    request = getattr(sender, "request_desired", None)
    forwards = callable(request) and hasattr(sender, "connected")
    return sender if forwards else None  # type: ignore[return-value]


CLIENT_ID_SUFFIX_BYTES = 8
"""Random bytes (16 hex digits) after the configured prefix of the agent's client id."""


def agent_client_id(settings: TwinMqttSettings) -> str:
    """The agent's secret client id: read from its file, or made once and written (0600).

    A file whose id does not start with the configured prefix (the setting changed) is
    replaced: the old id's broker session then simply expires.
    """
    path = settings.client_id_file
    prefix = f"{settings.agent_client_id}-"
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept.startswith(prefix) and len(kept) == len(prefix) + 2 * CLIENT_ID_SUFFIX_BYTES:
        return kept
    made = prefix + secrets.token_hex(CLIENT_ID_SUFFIX_BYTES)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, f"{made}\n".encode(), mode=0o600)
    log.info("made the agent's broker client id (kept in %s)", path)
    return made


_COMMAND_FIELDS: dict[str, frozenset[str]] = {
    "move": frozenset({"op", "to"}),
    "register": frozenset({"op", "model", "secretSha256"}),
    "remove": frozenset({"op"}),
    "revoke": frozenset({"op"}),
}
"""The fields of each command the cloud sends (docs/twins.md, the sync stream)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Publisher:
    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        await self._client.publish(topic, payload, qos=1, retain=retain)


class _WirePublisher:
    def __init__(self, wire: SessionWire) -> None:
        self._wire = wire

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        await self._wire.publish(topic, payload, retain=retain)

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool, done: Done) -> None:
        """`SessionWire.publish_nowait`: the replica's answers without a task each."""
        self._wire.publish_nowait(topic, payload, retain=retain, done=done)


class _Inbox(Protocol):
    """Device messages of one session: `SessionWire`, or `_Messages` (aiomqtt's path)."""

    def __len__(self) -> int: ...

    def take(self) -> Incoming: ...

    async def next(self) -> Incoming: ...

    def ack(self, messages: list[Incoming]) -> None: ...


_TOPIC_MEMORY = 65_536
"""Topics whose parse `_route` remembers, at most (a few per device; 10,000 devices)."""
_UNPARSED = object()


class _Messages:
    """aiomqtt's own message path, when `SessionWire` cannot be installed (its rule 6)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._messages = client.messages

    def __len__(self) -> int:
        return len(self._messages)

    def take(self) -> Incoming:
        return self._incoming(self._client._queue.get_nowait())  # noqa: SLF001 - no task per message

    async def next(self) -> Incoming:
        return self._incoming(await anext(self._messages))

    def ack(self, messages: list[Incoming]) -> None:
        for message in messages:
            if message.qos > 0:
                self._client._client.ack(message.mid, message.qos)  # noqa: SLF001 - see _new_client

    @staticmethod
    def _incoming(message: aiomqtt.Message) -> Incoming:
        payload = message.payload  # aiomqtt gives bytes for received messages
        assert isinstance(payload, bytes)  # noqa: S101 - aiomqtt's type is wider
        return Incoming(str(message.topic), payload, message.mid, message.qos, message.retain)


class TwinMqttService:
    """The MQTT device service of the edge's twins.

    Construct, then ``await run()`` inside the daemon's TaskGroup; cancel to stop.
    """

    def __init__(
        self, *, settings: TwinMqttSettings, sender: Sender, clock: Callable[[], float] = time.time
    ) -> None:
        if settings.mqtt_version not in MQTT_VERSIONS:
            raise ValueError(
                f"mqtt_version: one of {', '.join(MQTT_VERSIONS)}, got {settings.mqtt_version!r}"
            )
        self.settings = settings
        self.metrics = Metrics()
        self.mqtt_version: str | None = None
        """MQTT version of the current broker session (``5`` or ``3.1.1``); None while there is
        none (/status and the protocol gauge show it)."""
        self._v5_refused = False  # "auto" fell back to 3.1.1: kept until the agent restarts
        self.ready = asyncio.Event()
        """Set while the agent's broker session is subscribed (cleared when it drops)."""
        self._store = TwinStore(
            settings.database, node=settings.node_name, durability=settings.durability
        )
        self.outbox = Outbox(
            store=self._store,
            sender=sender,
            settings=settings.outbox,
            metrics=self.metrics,
            on_room=self._on_room,
        )
        self.twins = EdgeTwinReplica(
            store=self._store,
            outbox=self.outbox,
            models=load_models(settings.models_dir),
            metrics=self.metrics,
            max_payload_bytes=settings.max_payload_bytes,
            max_cloud_change_bytes=settings.max_cloud_change_bytes,
            max_unacknowledged_batches=settings.max_unacknowledged_batches,
            clock=clock,
        )
        # One context for every connection: files are read once (checked at config load).
        self._tls_context = (
            None if settings.broker_tls is None else client_context(settings.broker_tls)
        )
        self._dynsec = dynsec.DynsecClient(
            tls_context=self._tls_context,
            host=settings.broker_host,
            port=settings.broker_port,
            username=settings.admin_username,
            password=settings.admin_password,
            timeout=settings.admin_timeout,
        )
        self.onboarding = Onboarding(
            twins=self.twins,
            store=self._store,
            outbox=self.outbox,
            dynsec=self._dynsec,
            metrics=self.metrics,
            node=settings.node_name,
            require_registration=settings.require_registration,
            max_devices=settings.max_devices,
            max_request_bytes=settings.max_claim_bytes,
            clock=clock,
        )
        self.handover = Handover(
            node=settings.node_name,
            twins=self.twins,
            store=self._store,
            dynsec=self._dynsec,
            clock=clock,
        )
        # Claims and adopt messages, (topic, payload), answered one at a time: each needs
        # broker admin calls, and one at a time they never race on a device's broker user.
        self._claims: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(settings.claim_queue)
        self.home_assistant = HomeAssistantDiscovery(
            settings=HomeAssistantSettings(
                enabled=settings.home_assistant, prefix=settings.home_assistant_prefix
            ),
            node=settings.node_name,
            twins=self.twins,
            # The sync link forwards commands; any other sender (a test's) refuses them.
            forwarder=_forwarder(sender),
            clock=clock,
        )
        self._admin_lock = asyncio.Lock()
        self._agent_password = secrets.token_urlsafe(24)
        self._agent_client_id = agent_client_id(settings)
        self._client: aiomqtt.Client | None = None
        self._device_topics: dict[str, DeviceTopic | None] = {}

    @property
    def origin(self) -> str:
        """The sync origin of this agent's twin changes (node name and database boot id)."""
        return self._store.origin

    # ------------------------------------------------------------------ API for the daemon

    async def apply_cloud_change(
        self, change: Mapping[str, object] | str | bytes
    ) -> CloudChangeResult:
        """A change from the cloud: ``{"device": id, "change": TwinChange JSON}`` (idempotent)."""
        result = await self.twins.apply_cloud_change(change)
        if result.applied:
            await self.home_assistant.refresh([result.device_id])
        return result

    async def apply_cloud_command(self, message: Mapping[str, object]) -> CloudChangeResult:
        """A command from the cloud: ``{"device", "command": {"op", ...}}`` (docs/twins.md).

        ``move`` (``"to": <node>``) hands the device over on the broker; ``register``
        (``"model"``, ``"secretSha256"``) expects it for claiming; ``remove`` and ``revoke``
        delete its broker credential (the broker disconnects it), its twin and its
        registration, and ``revoke`` refuses its claims until it is registered again.
        Idempotent: a redelivered move or removal of a device no longer here raises
        ``device_not_found`` (the cloud then drops it). Raises CloudChangeError like
        `apply_cloud_change`.
        """
        device_id, command = message.get("device"), message.get("command")
        if (
            not isinstance(device_id, str)
            or not topics.DEVICE_ID.fullmatch(device_id)
            or not isinstance(command, dict)
            or command.get("op") not in _COMMAND_FIELDS
            or set(command) != _COMMAND_FIELDS[str(command.get("op"))]
        ):
            raise CloudChangeError(
                Code.BAD_REQUEST,
                'a command is {"device": <id>, "command": {"op": "move"|"register"|"remove"|'
                '"revoke", ...}}',
            )
        op = str(command["op"])
        async with self._admin_lock:
            try:
                if op == "move":
                    result = await self._move(device_id, command.get("to"))
                elif op == "register":
                    return self._register(device_id, command)
                else:
                    result = await self._remove(device_id, revoke=op == "revoke")
            except aiomqtt.MqttError as error:
                raise CloudChangeError(Code.UNAVAILABLE, f"broker: {error}") from None
            except dynsec.DynsecError as error:
                raise CloudChangeError(Code.UNAVAILABLE, f"broker admin: {error}") from None
        await self.home_assistant.reconcile()  # a device gone: its discovery is cleared
        return result

    async def _move(self, device_id: str, target: object) -> CloudChangeResult:
        if not isinstance(target, str) or not topics.NODE_NAME.fullmatch(target):
            raise CloudChangeError(Code.BAD_REQUEST, "a move names the target node: to")
        publisher = None if self._client is None else _Publisher(self._client)
        try:
            moved = await self.handover.move(device_id, target, publisher)
        except MoveError as error:
            raise CloudChangeError(error.code, error.message) from None
        return CloudChangeResult(device_id=device_id, applied=moved)

    def _register(self, device_id: str, command: Mapping[str, object]) -> CloudChangeResult:
        model, digest = command.get("model"), command.get("secretSha256")
        if (
            not isinstance(model, str)
            or not isinstance(digest, str)
            or not _SHA256.fullmatch(digest)
        ):
            raise CloudChangeError(
                Code.BAD_REQUEST, "register needs model and secretSha256 (64 hex digits)"
            )
        try:
            self.onboarding.register_digest(device_id, model, digest)
        except RequestError as error:
            raise CloudChangeError(error.code, error.message) from None
        log.info("device %s (model %s) registered for claiming by the cloud", device_id, model)
        return CloudChangeResult(device_id=device_id, applied=True)

    async def _remove(self, device_id: str, *, revoke: bool) -> CloudChangeResult:
        have = self.twins.device(device_id) is not None
        if not have and not self.onboarding.has_claim(device_id):
            raise CloudChangeError(
                Code.UNKNOWN_DEVICE, f"node {self.settings.node_name} has no device {device_id}"
            )
        if have:
            # Only the owner deletes the broker user: on a shared broker another node's
            # device of the same id is not ours to cut off.
            await self.remove_device(device_id)
        self.onboarding.forget_claim(device_id, revoke=revoke)
        log.info("device %s %s by the cloud", device_id, "revoked" if revoke else "removed")
        return CloudChangeResult(device_id=device_id, applied=True)

    def register_claim(self, device_id: str, model: str, claim_secret: str) -> None:
        """Register a device in advance; it must present `claim_secret` when it claims."""
        self.onboarding.register_claim(device_id, model, claim_secret)

    async def remove_device(self, device_id: str) -> None:
        """Revoke a device's broker credential (it is disconnected) and forget its twin."""
        await self._dynsec.delete_device(device_id)
        await self.twins.remove_device(device_id)

    async def run(self) -> None:
        """Set up broker accounts, then serve until cancelled. Closes the store on exit."""
        try:
            await self._bootstrap()
            async with asyncio.TaskGroup() as group:
                group.create_task(self.outbox.run(), name="twins.outbox")
                group.create_task(self._onboarding_loop(), name="twins.onboarding")
                group.create_task(self._mqtt_loop(), name="twins.mqtt")
                if self.home_assistant.enabled:
                    group.create_task(
                        self.home_assistant.run_commands(), name="twins.home_assistant.commands"
                    )
        finally:
            self._store.close()

    # ------------------------------------------------------------------ internals

    def _on_room(self) -> None:
        self.twins.queue_unsent_availability()

    async def _bootstrap(self) -> None:
        delay = self.settings.reconnect_initial
        while True:
            try:
                await self._dynsec.ensure_role(dynsec.CLAIM_ROLE, dynsec.claim_acls())
                await self._dynsec.ensure_client(
                    self.settings.claim_username, self.settings.claim_password, dynsec.CLAIM_ROLE
                )
                await self._dynsec.ensure_role(
                    dynsec.AGENT_ROLE, dynsec.agent_acls(self._discovery_prefix())
                )
                await self._dynsec.ensure_client(
                    self.settings.agent_username,
                    self._agent_password,
                    dynsec.AGENT_ROLE,
                    client_id=self._agent_client_id,
                )
                await self._dynsec.announce_node(self.settings.node_name)
            except dynsec.DynsecError as exc:
                log.warning(
                    "broker accounts not set up yet (%s%s); retry in %.1f s",
                    exc,
                    describe_error(exc, self.settings.broker_tls, self.settings.broker_host),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max)
            else:
                log.info("broker accounts ready (claim user %s)", self.settings.claim_username)
                return

    def _discovery_prefix(self) -> str | None:
        settings = self.settings
        return settings.home_assistant_prefix if settings.home_assistant else None

    async def _mqtt_loop(self) -> None:
        delay = self.settings.reconnect_initial
        while True:
            version = self._version()
            try:
                await self._session(version)
            except aiomqtt.MqttError as exc:
                if version == "5" and self.settings.mqtt_version == "auto" and _refuses_v5(exc):
                    log.warning(
                        "the broker refused MQTT 5 (%s); using MQTT 3.1.1 until the agent restarts",
                        exc,
                    )
                    self._v5_refused = True
                    continue  # at once: the broker is there, it only wants 3.1.1
                log.warning(
                    "broker session (MQTT %s) lost: %s%s; reconnecting in %.1f s",
                    version,
                    describe_mqtt_error(exc),
                    describe_error(exc, self.settings.broker_tls, self.settings.broker_host),
                    delay,
                )
            finally:
                self.ready.clear()
                self.twins.attach(None)
                self.home_assistant.attach(None)
                self._client = None
                self.mqtt_version = None
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            delay = min(delay * 2, self.settings.reconnect_max)

    def _version(self) -> str:
        """The MQTT version to connect with next."""
        wanted = self.settings.mqtt_version
        if wanted == "auto":
            return "3.1.1" if self._v5_refused else "5"
        return wanted

    def _new_client(self, version: str) -> aiomqtt.Client:
        settings = self.settings
        v5 = version == "5"
        properties = None
        if v5:
            # The 3.1.1 session's equivalent: resumed (never a clean start, not even on the
            # first connect, aiomqtt's default) and kept by the broker for `session_expiry`.
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry
            properties.ReceiveMaximum = max(
                1, min(settings.receive_maximum, settings.max_queued_messages, 65535)
            )
            # The broker must not send us a bigger packet ([MQTT-3.1.2-24]; it drops it): what
            # one buffered message may cost is bounded, while a message a little over the
            # payload limit still arrives and is answered `too_large`.
            properties.MaximumPacketSize = max_packet_bytes(settings)
        client = aiomqtt.Client(
            settings.broker_host,
            settings.broker_port,
            username=settings.agent_username,
            password=self._agent_password,
            identifier=self._agent_client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            # paho refuses clean_start and properties under 3.1.1 unless left at their defaults
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=settings.keepalive,
            max_queued_incoming_messages=settings.max_queued_messages,
            max_inflight_messages=settings.max_inflight_answers,
            will=aiomqtt.Will(topics.AGENT_AVAILABILITY, b"offline", qos=1, retain=True),
            tls_context=self._tls_context,
        )
        # aiomqtt 2.x has no option for it: acknowledge QoS 1 messages only once committed.
        client._client.manual_ack_set(on=True)  # noqa: SLF001 - paho option aiomqtt does not expose
        return client

    async def _session(self, version: str) -> None:
        client = self._new_client(version)
        # Installed before connecting: the broker sends the session's queued messages at once.
        wire = SessionWire(
            client,
            max_queued=self.settings.max_queued_messages,
            window=self.settings.max_inflight_answers,
        )
        inbox: _Inbox = wire if wire.install() else _Messages(client)
        publisher: Publisher = _WirePublisher(wire) if inbox is wire else _Publisher(client)
        async with client:
            if inbox is wire:
                wire.attach()
            self._client = client
            self.mqtt_version = version
            self.metrics.broker_sessions += 1
            node = self.settings.node_name
            filters = topics.agent_subscriptions(node, home_assistant=self.home_assistant.enabled)
            await client.subscribe([(f, 1) for f in filters])
            await client.publish(topics.AGENT_AVAILABILITY, b"online", qos=1, retain=True)
            async with self.twins.serving(publisher):
                await self.twins.republish()
                self.home_assistant.attach(publisher)
                await self.home_assistant.republish()
                self.ready.set()
                log.info(
                    "twins: serving %s devices on the broker (MQTT %s)",
                    len(self.twins.device_ids()),
                    version,
                )
                try:
                    await self._consume(client, inbox)
                except aiomqtt.MqttError as exc:
                    # The iterator says only "Disconnected during message iteration"; the
                    # broker's reason (MQTT 5 DISCONNECT) is in aiomqtt's disconnect future.
                    cause = _disconnect_cause(client)
                    if cause is None or cause is exc:
                        raise
                    raise cause from exc

    async def _consume(self, client: aiomqtt.Client, inbox: _Inbox) -> None:
        while True:
            batch = [await inbox.next()]
            await self._fill(inbox, batch)
            device_messages = await self._route(client, batch)

            def acknowledge(batch: list[Incoming] = batch) -> None:
                inbox.ack(batch)

            # Even without device messages: acknowledgements go in the order received.
            await self.twins.handle_batch(device_messages, committed=acknowledge)
            if device_messages and self.home_assistant.enabled:
                await self.home_assistant.refresh(where.device_id for where, _ in device_messages)

    async def _route(
        self, client: aiomqtt.Client, batch: list[Incoming]
    ) -> list[tuple[DeviceTopic, bytes]]:
        """Hand claims, adoptions and HA commands on; the device messages, in order."""
        node = self.settings.node_name
        device_messages: list[tuple[DeviceTopic, bytes]] = []
        parse = self._parse_device_topic
        for message in batch:
            topic, payload = message.topic, message.payload
            if (where := parse(topic)) is not None:
                device_messages.append((where, payload))
            elif topic == topics.PROVISION_REQUEST:
                await self._queue_claim(client, payload)
            elif topics.is_adopt_topic(node, topic):
                await self._claims.put((topic, payload))  # rare: an operator's move
            elif (command := topics.parse_ha_command(node, topic)) is not None:
                self.home_assistant.command(*command, payload)
        return device_messages

    def _parse_device_topic(self, topic: str) -> DeviceTopic | None:
        """`topics.parse_device_topic`, remembered: a device publishes on a few topics only."""
        parsed = self._device_topics.get(topic, _UNPARSED)
        if parsed is _UNPARSED:
            parsed = topics.parse_device_topic(topic)
            if len(self._device_topics) >= _TOPIC_MEMORY:
                self._device_topics.clear()  # bounded; refilled by the devices still reporting
            self._device_topics[topic] = parsed
        return parsed  # type: ignore[return-value]

    async def _fill(self, inbox: _Inbox, batch: list[Incoming]) -> None:
        """Add what is already received to `batch`, after waiting `batch_wait` if set.

        Never cancels a wait for the next message (aiomqtt 2.5 loses a message cancelled as
        it arrives): it sleeps, then takes only what is queued.
        """
        limit = self.settings.max_batch
        if self.settings.batch_wait > 0 and len(inbox) + len(batch) < limit:
            await asyncio.sleep(self.settings.batch_wait)
        while len(inbox) and len(batch) < limit:
            batch.append(inbox.take())

    async def _queue_claim(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            self._claims.put_nowait((topics.PROVISION_REQUEST, payload))
        except asyncio.QueueFull:
            log.warning("claim queue full (%s); answering unavailable", self._claims.qsize())
            answer = self.onboarding.busy_answer(payload)
            if answer is not None:
                await client.publish(answer.topic, answer.payload, qos=1)

    async def _onboarding_loop(self) -> None:
        while True:
            topic, payload = await self._claims.get()
            client = self._client
            if topic != topics.PROVISION_REQUEST:
                publisher = None if client is None else _Publisher(client)
                async with self._admin_lock:
                    try:
                        await self.handover.adopt(topic, payload, publisher)
                    except aiomqtt.MqttError as exc:
                        log.warning("adopt message not cleared (%s); done again later", exc)
                await self.home_assistant.reconcile()
                continue
            async with self._admin_lock:
                answer = await self.onboarding.handle(payload)
            await self.home_assistant.reconcile()  # a device onboarded: show it
            client = self._client
            if answer is None or client is None:
                continue
            try:
                await client.publish(answer.topic, answer.payload, qos=1)
            except aiomqtt.MqttError as exc:
                log.warning("claim answer not sent (%s); the device will retry", exc)

"""Moving a device to another node on the same broker: hand it over here, adopt it there.

A device belongs to exactly one node: the one named as owner on its broker user
(dynsec.reserve_device). An operator moves it with the cloud's
``POST /api/v1/devices/{node}:{device}/move``; the cloud sends the current owner a ``move``
command over its sync stream, and the rest happens on the site, through the broker:

1. The owner checks that the target node serves this broker (its presence role,
   `DynsecClient.announce_node`): a device's credential lives in one broker, so it can only
   move between nodes sharing it. Otherwise the command fails with ``move_refused``.
2. It makes the target the owner of the device's broker user (the device keeps its
   credential and stays connected), publishes a retained ``adopt`` message on
   ``edgefleet/agents/<target>/adopt/<device>`` (the agent role alone may write there), and
   forgets the device with a ``device-moved`` record for the cloud.
3. The target adopts it when it reads that message (at once, or when it next connects:
   retained): it checks that it is the owner on the broker, starts a fresh twin with a
   ``device`` record for the cloud, publishes the delta and clears the message.

Every step is idempotent, so a command redelivered after a crash redoes what was missing.
Because step 3 needs only the broker, a target cut off from the cloud still takes over at
once; only the owner must reach the cloud to get the command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from device_models import JsonObject
from edge_agent.twins import topics
from edge_agent.twins.dynsec import DynsecClient, DynsecError
from edge_agent.twins.payloads import Code, RequestError, decode_object, encode, only_fields
from edge_agent.twins.replica import EdgeTwinReplica, Publisher
from edge_agent.twins.twin_store import DeviceRecord, DeviceState, TwinStore

__all__ = ["MAX_ADOPT_BYTES", "Handover", "MoveError"]

log = logging.getLogger("edge_agent.twins.handover")

MAX_ADOPT_BYTES = 1024
"""An adopt message is a device id, a model name, a node name and a status: ~200 bytes."""

_ADOPT_FIELDS = frozenset({"device", "model", "from", "availability"})


class MoveError(RequestError):
    """A move command that did not happen; `code` says whether it may work later."""


class Handover:
    def __init__(
        self,
        *,
        node: str,
        twins: EdgeTwinReplica,
        store: TwinStore,
        dynsec: DynsecClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._twins = twins
        self._store = store
        self._dynsec = dynsec
        self._clock = clock

    async def move(self, device_id: str, to: str, publisher: Publisher | None) -> bool:
        """Hand `device_id` over to node `to`; False if it is there already (a redelivery)."""
        record = self._twins.device(device_id)
        if record is None or record.state is not DeviceState.ACTIVE:
            if await self._owner(device_id) == to:
                return False  # handed over already: the command came again after a crash
            raise MoveError(Code.UNKNOWN_DEVICE, f"device {device_id} is not onboarded here")
        if to == self._node:
            return False
        if publisher is None:
            raise MoveError(Code.UNAVAILABLE, "not connected to the broker; retry")
        try:
            if not await self._dynsec.node_present(to):
                raise MoveError(
                    Code.MOVE_REFUSED,
                    f"node {to} does not use the broker of node {self._node}: a device only "
                    "moves between nodes that share one",
                )
            await self._dynsec.hand_over(device_id, node=to)
        except DynsecError as error:
            raise MoveError(Code.UNAVAILABLE, f"the broker is unavailable: {error}") from None
        body: JsonObject = {
            "device": device_id,
            "model": record.model,
            "from": self._node,
            "availability": record.availability,
        }
        await publisher.publish(topics.adopt_topic(to, device_id), encode(body), retain=True)
        await self._twins.release_device(device_id, to=to)
        log.info("device %s handed over to node %s", device_id, to)
        return True

    async def _owner(self, device_id: str) -> str | None:
        try:
            return await self._dynsec.device_owner(device_id)
        except DynsecError as error:
            raise MoveError(Code.UNAVAILABLE, f"the broker is unavailable: {error}") from None

    async def adopt(self, topic: str, payload: bytes, publisher: Publisher | None) -> None:
        """Take over a device another node handed to us (an ``adopt`` message)."""
        if not payload:
            return  # the message cleared after an earlier adoption
        try:
            device_id, model_name, status, source = self._parse_adopt(topic, payload)
            if await self._adopt(device_id, model_name, status):
                log.info("adopted device %s from node %s", device_id, source)
        except RequestError as error:
            if error.code is Code.UNKNOWN_MODEL:
                # Kept (retained): adopted once the model is installed and the agent restarts.
                log.error("cannot adopt from %s yet: %s", topic, error.message)  # noqa: TRY400 - an operator's fix, not a bug
                return
            log.warning("adopt message on %s ignored: %s", topic, error.message)
        except DynsecError as error:
            # Kept (retained) on the broker: adopted when the agent next connects.
            log.warning("adopting from %s postponed: the broker is unavailable: %s", topic, error)
            return
        if publisher is not None:
            await publisher.publish(topic, b"", retain=True)

    def _parse_adopt(self, topic: str, payload: bytes) -> tuple[str, str, str | None, object]:
        """(device, model, availability, from node) of an adopt message, or RequestError."""
        data = decode_object(payload, max_bytes=MAX_ADOPT_BYTES)
        only_fields(data, _ADOPT_FIELDS)
        device_id, model_name = data.get("device"), data.get("model")
        status = data.get("availability")
        if (
            not isinstance(device_id, str)
            or topic != topics.adopt_topic(self._node, device_id)
            or not isinstance(model_name, str)
            or (status is not None and status not in ("online", "offline"))
        ):
            raise RequestError(Code.BAD_REQUEST, "not an adopt message for this node")
        return device_id, model_name, None if status is None else str(status), data.get("from")

    async def _adopt(self, device_id: str, model_name: str, status: str | None) -> bool:
        existing = self._twins.device(device_id)
        if existing is not None and existing.state is DeviceState.ACTIVE:
            return False
        owner = await self._dynsec.device_owner(device_id)
        if owner != self._node:
            raise RequestError(
                Code.BAD_REQUEST, f"device {device_id} is owned by {owner!r} on the broker, not us"
            )
        model = self._twins.models.get(model_name)
        if model is None:
            raise RequestError(Code.UNKNOWN_MODEL, f"model {model_name} is not loaded here")
        now = self._clock()
        availability = status
        record = DeviceRecord(
            device_id=device_id,
            model=model.name,
            state=DeviceState.ACTIVE,
            created=now,
            replica=self._store.new_replica(),
            availability=availability,
        )
        announce: list[JsonObject] = [
            {
                "kind": "device",
                "origin": self._store.origin,
                "device": device_id,
                "model": model.name,
                "modelVersion": model.version,
                "at": now,
            }
        ]
        if availability is not None:
            announce.append(
                {
                    "kind": "availability",
                    "origin": self._store.origin,
                    "device": device_id,
                    "status": availability,
                    "at": now,
                }
            )
        await self._twins.adopt_device(record, announce=announce)
        return True

"""A device that reports as fast as the agent answers: a window of requests in flight.

It does what docs/mqtt.md asks of a careful device: every report has a request id, and a
report whose answer does not come in time is published again with the same id (the agent
answers a redelivered id from memory instead of applying it twice). The window stays well
under the 16 answers the agent remembers per device.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.twins.simulator import SimulatedDevice
from edge_agent.twins.topics import Op

WINDOW = 8
RESEND_AFTER = 3.0
"""Seconds without an answer before the outstanding reports are published again."""


@dataclass(kw_only=True)
class Reporter:
    device: SimulatedDevice
    count: int
    patch: Callable[[int], dict[str, Any]]
    window: int = WINDOW
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)
    resends: int = 0
    _outstanding: set[int] = field(default_factory=set)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> int:
        return len(self.answers)

    async def _publish(self, number: int) -> None:
        body = {"rid": f"r{number}", "patch": self.patch(number)}
        self.sent_at.setdefault(number, time.monotonic())
        await self.device.client.publish(self.device.topic(Op.REPORTED), json.dumps(body), qos=1)

    async def run(self) -> None:
        """Report 1..count; return when every report has its answer."""
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(self._read(), name=f"reporter[{self.device.device_id}]")
            await self._send()
            reader.cancel()

    async def _read(self) -> None:
        # One reader that is never cancelled while it matters: aiomqtt 2.5's message iterator
        # drops a message when a timeout cancels it just as the message arrives.
        async for message in self.device.client.messages:
            payload = message.payload
            if not str(message.topic).endswith("/" + Op.RESULT.value):
                continue
            assert isinstance(payload, bytes | bytearray)
            answer = json.loads(payload)
            rid = str(answer.get("rid", ""))
            number = int(rid[1:]) if rid.startswith("r") and rid[1:].isdigit() else 0
            if number in self._outstanding:
                self._outstanding.discard(number)
                self.answers[number] = answer
                self.answered_at[number] = time.monotonic()
                self._progress.set()

    async def _send(self) -> None:
        next_number = 1
        last_progress = time.monotonic()
        while self.done < self.count:
            while next_number <= self.count and len(self._outstanding) < self.window:
                self._outstanding.add(next_number)
                await self._publish(next_number)
                next_number += 1
            self._progress.clear()
            try:
                async with asyncio.timeout(0.5):
                    await self._progress.wait()
            except TimeoutError:
                pass
            else:
                last_progress = time.monotonic()
            if self._outstanding and time.monotonic() - last_progress > RESEND_AFTER:
                self.resends += len(self._outstanding)
                for number in sorted(self._outstanding):
                    await self._publish(number)
                last_progress = time.monotonic()

"""A TwinMqttService in its own process, so that a test can kill it with SIGKILL.

Usage: ``python -m tests.integration.twins.agent_proc CONFIG_JSON``. Its cloud is a file: each
delivered batch is appended as one JSON line (one ``write``), and deliveries fail at random
before the write (tunnel down) or after it (acknowledgement lost). Prints ``READY`` once the
agent serves the broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.twins import TwinMqttService, TwinMqttSettings


class InjectedFaultError(ConnectionError):
    pass


@dataclass(kw_only=True)
class FileCloud:
    path: Path
    fail_before: float
    fail_after: float
    rng: random.Random

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        if self.rng.random() < self.fail_before:
            raise InjectedFaultError("tunnel down (injected)")
        line = (json.dumps(batch) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        if self.rng.random() < self.fail_after:
            raise InjectedFaultError("acknowledgement lost (injected)")


async def serve(config: dict[str, Any]) -> None:
    settings = TwinMqttSettings(**{**config["settings"], "data_dir": Path(config["data_dir"])})
    cloud = FileCloud(
        path=Path(config["cloud"]),
        fail_before=config["fail_before"],
        fail_after=config["fail_after"],
        rng=random.Random(),  # noqa: S311 - fault injection
    )
    service = TwinMqttService(settings=settings, sender=cloud)
    async with asyncio.TaskGroup() as group:
        group.create_task(service.run(), name="agent-proc.twins")
        await service.ready.wait()
        sys.stdout.write("READY\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))

"""An edge agent with device twins synced over its tunnel (until cli.py wires twins).

Usage: ``python -m tests.integration.twins_e2e.agent_proc CONFIG_JSON``. It runs what the
daemon will run, wired as docs/twins.md says: `TunnelClient` (identity from ``edge-agent
join``), `TwinsService` on the broker, and `TwinSync` as the outbox's sender and as the
tunnel's ``twins`` session task. Prints ``READY`` once the twins service serves the broker.

Test-only extras, on a loopback control port (``control_port``):

- ``GET /status``: the tunnel's and the sync's status, the outbox size;
- ``GET /twin/{device}``: the edge replica's twin (values, versions, metadata);
- ``POST /write/{device}/{section}``: a local edge write of a merge patch, as the agent would
  make for a device (used to make the edge edit ``desired`` for the conflict test, which no
  MQTT message can do).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import prometheus_client
from aiohttp import web

from device_models import DeviceModelsError, Section, write_change
from edge_agent import logs
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from edge_agent.twin_sync import TwinSync, TwinSyncSettings
from edge_agent.twins import Durability, TwinsService, TwinsSettings
from edge_agent.twins.twin_store import StoreWrite

log = logging.getLogger("tests.twins_e2e.agent")

SERVICE = web.AppKey("service", TwinsService)
SYNC = web.AppKey("sync", TwinSync)
CLIENT = web.AppKey("client", TunnelClient)


async def status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response(
        {
            "ready": service.ready.is_set(),
            "tunnel": request.app[CLIENT].status(),
            "sync": request.app[SYNC].status(),
            "outbox": service.outbox.size,
            "origin": service.origin,
            "devices": service.twins.device_ids(),
        }
    )


async def twin(request: web.Request) -> web.Response:
    record = request.app[SERVICE].twins.device(request.match_info["device"])
    if record is None:
        return web.json_response({"error": "unknown device"}, status=404)
    return web.json_response(record.replica.twin.to_json())


async def local_write(request: web.Request) -> web.Response:
    """An edge-side write through the same store and outbox the agent uses."""
    service = request.app[SERVICE]
    twins = service.twins
    device_id = request.match_info["device"]
    section = Section(request.match_info["section"])
    patch = json.loads(await request.read())
    async with twins._lock:
        record = twins._devices[device_id]
        try:
            replica, change = write_change(record.replica, section, patch, now=time.time())
        except DeviceModelsError as error:
            return web.json_response({"error": str(error)}, status=400)
        updated = dataclasses.replace(record, replica=replica)
        outbox = [twins._change_record(record, change)]
        twins._store.commit(StoreWrite(devices={device_id: updated}, outbox=outbox))
        twins._devices[device_id] = updated
        service.outbox.notify()
    return web.json_response(replica.twin.to_json())


async def serve(config: dict[str, Any]) -> None:
    data_dir = Path(config["data_dir"])
    settings = TwinsSettings(
        **{
            **config["twins"],
            "data_dir": data_dir / "twins",
            "durability": Durability(config["twins"].get("durability", "full")),
        }
    )
    client = TunnelClient(
        data_dir=data_dir,
        settings=TunnelClientSettings(**config.get("tunnel", {})),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    sync = TwinSync(settings=TwinSyncSettings())
    service = TwinsService(settings=settings, sender=sync)
    sync.attach(service)
    client.session_tasks["twins"] = sync.run_session
    control = web.Application()
    control[SERVICE], control[SYNC], control[CLIENT] = service, sync, client
    control.router.add_get("/status", status)
    control.router.add_get("/twin/{device}", twin)
    control.router.add_post("/write/{device}/{section}", local_write)
    runner = web.AppRunner(control, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(config["control_port"])).start()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(client.run(), name="agent.tunnel")
            group.create_task(service.run(), name="agent.twins")
            await service.ready.wait()
            sys.stdout.write("READY\n")
            sys.stdout.flush()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    logs.setup("INFO")
    asyncio.run(serve(json.loads(sys.argv[1])))

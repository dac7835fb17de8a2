"""``edge-agent run`` plus one test-only route, for the offline conflict test.

Usage: ``python -m tests.integration.twins_e2e.agent_proc [edge-agent run options]``. It runs
the daemon exactly as ``edge-agent run`` does (``edge_agent.cli.cmd_run``) and adds to its
local API:

- ``POST /test/write/{device}/{section}``: a local edge write of a merge patch through the
  same store and outbox the agent uses, so a test can make the edge edit ``desired`` during
  an outage (no MQTT message can: devices only report). The product has no such route.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from aiohttp import web

from daemon_support import logs
from device_models import DeviceModelsError, Section, write_change
from edge_agent import cli
from edge_agent.twins import TwinMqttService
from edge_agent.twins.twin_store import StoreWrite

SERVICE = web.AppKey("test_twins_service", TwinMqttService)


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


def add_test_routes(app: web.Application, service: TwinMqttService | None) -> None:
    if service is None:
        raise SystemExit("agent_proc needs [twins] enabled in the config")
    app[SERVICE] = service
    app.router.add_post("/test/write/{device}/{section}", local_write)


def main() -> int:
    args = cli.build_parser().parse_args(["run", *sys.argv[1:]])
    logs.setup(args.log_level)
    return cli.cmd_run(args, local_api_hook=add_test_routes)


if __name__ == "__main__":
    sys.exit(main())

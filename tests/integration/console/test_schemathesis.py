"""schemathesis against the real server process: the OpenAPI document matches the API.

The server has a real node (``edge-dev``) and a real device (``edge-dev:th-0``, a thermostat
onboarded by ``edge-agent simulate`` through mosquitto). schemathesis is told their names (a
dictionary it draws from half of the time), so the node and device operations run on things
that exist, PATCH of desired included, and not only into 404s; sign-out gets a real session.
The HAR report of the run shows they did.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.integration.console.conftest import DEVICE, DEVICE_NODE, DeviceSystem

pytestmark = pytest.mark.mqtt

_CONFIG = """
[dictionaries.nodes]
values = ["{node}"]

[dictionaries.devices]
values = ["{device}", "{bare}"]

[parameters]
"path.name" = {{ dictionary = "nodes", probability = 0.5 }}
"query.node" = {{ dictionary = "nodes", probability = 0.5 }}
"path.id" = {{ dictionary = "devices", probability = 0.5 }}

[[operations]]
include-operation-id = "deleteSession"
headers = {{ Authorization = "Bearer {session}" }}  # a session signs out, not the admin token

[[operations]]
include-operation-id = "patchTwin"
# Always the real device: the body is what this operation is about (the GETs cover other ids,
# through the same code).
parameters = {{ "path.id" = "{device}" }}
# Desired values are checked against the device's model (setpoint 5..30, mode one of four...),
# which one document for every model cannot describe: a schema-valid patch may get 400
# invalid_value, with the path and reason of each refused value.
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]

[dictionaries.waits]
values = [0, 0.1]

[[operations]]
include-operation-id = "getTwin"
# wait=<up to 30 s> with a version not reached yet is a long poll: generated ones stay short
# (the coverage phase still sends the bounds and out-of-range values).
parameters = {{ "query.wait" = {{ dictionary = "waits", probability = 1.0 }} }}
request-timeout = 35
"""


def _answers(har: Path) -> Counter[tuple[str, str, int]]:
    """(method, path template, status) of the requests that named the real node or device."""
    device, bare, node = map(re.escape, (DEVICE, DEVICE.partition(":")[2], DEVICE_NODE))
    templates = (
        (re.compile(rf"^/api/v1/devices/({device}|{bare})(?=/|$)"), "/api/v1/devices/{id}"),
        (re.compile(rf"^/api/v1/nodes/{node}(?=/|$)"), "/api/v1/nodes/{name}"),
    )
    seen: Counter[tuple[str, str, int]] = Counter()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        path = unquote(urlsplit(entry["request"]["url"]).path)
        for pattern, template in templates:
            path = pattern.sub(template, path)
        seen[entry["request"]["method"], path, entry["response"]["status"]] += 1
    return seen


@pytest.mark.timeout(300)
def test_api_matches_its_openapi_document(device_system: DeviceSystem, tmp_path: Path) -> None:
    server, api = device_system.server, device_system.api
    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca_pem)
    status, created, _ = api.call("POST", "/api/v1/sessions")
    assert status == 201, created
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        _CONFIG.format(
            node=DEVICE_NODE,
            device=DEVICE,
            bare=DEVICE.partition(":")[2],
            session=created["token"],
        )
    )
    har = tmp_path / "run.har"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            f"{server.url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {server.admin_token}",
            "--tls-verify",
            str(ca),
            "--checks",
            "all",
            "--exclude-operation-id",
            "streamEvents",  # an endless stream: checked in test_api instead
            "--max-examples",
            "100",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--seed",
            "1",
            "--continue-on-failure",  # every failure of an operation in one run, not the first
            "--report",
            "har",
            "--report-har-path",
            str(har),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # schemathesis keeps a .schemathesis/ folder in its working dir
        check=False,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert "passed" in done.stdout, done.stdout[-3000:]
    print(done.stdout[-1500:])  # noqa: T201 - the summary, shown with -s
    seen = _answers(har)
    for method, path in (
        ("GET", "/api/v1/nodes/{name}"),
        ("GET", "/api/v1/nodes/{name}/history"),
        ("GET", "/api/v1/devices/{id}"),
        ("GET", "/api/v1/devices/{id}/twin"),
        ("PATCH", "/api/v1/devices/{id}/twin"),  # desired changed on the real device
        ("DELETE", "/api/v1/sessions/current"),
    ):
        ok = sum(n for (m, p, s), n in seen.items() if (m, p) == (method, path) and s < 300)
        assert ok, f"{method} {path} never succeeded: {sorted(seen.items())[:60]}"
    assert seen["PATCH", "/api/v1/devices/{id}/twin", 409], "conditional writes were refused"
    status, body, _ = api.call("GET", "/api/v1/nodes", token=created["token"])
    assert (status, body["error"]) == (401, "session_revoked")

"""schemathesis against the real server process: the OpenAPI document matches the API.

The server has a real node (``edge-dev``) and a real device (``edge-dev:th-0``, a thermostat
onboarded by ``edge-agent simulate`` through mosquitto). schemathesis is told their names (a
dictionary it draws from half of the time), so the node and device operations run on things
that exist, PATCH of desired included, and not only into 404s; sign-out gets a real session.
The HAR report of the run shows they did.

It runs once per role, each with a user token made by the CLI (admin, operator, viewer): the
answers of every role must match the document too (a 403 is a documented answer). The node
actions (approve, deny, revoke) go to a spare node waiting for approval, never to ``edge-dev``
(revoking it would end the device operations' node); the admin token's rotation runs in the
admin user's run, which it does not disturb (a user token is not the admin token).
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

from tests.harness.daemons import BIN
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
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

[[operations]]
include-operation-id-regex = "^(approve|deny|revoke)Node$"
# A fixed value, as for patchTwin: a dictionary left edge-dev in some phases' requests.
parameters = {{ "path.name" = "{spare}" }}

[[operations]]
include-operation-id = "createToken"
# A cluster token's manifest is made by the clusters part, which checks the image reference
# beyond what one pattern can say, and a server without that part answers 400
# manifest_unavailable: a schema-valid body may get 400 (its detail says why).
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "409"]

[[operations]]
include-operation-id = "uploadDeviceModel"
# Any JSON object or YAML text is schema-valid; whether it is a device model is for
# device_models to say: 400 invalid_model with the path and reason of each problem.
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "409"]

[[operations]]
include-operation-id = "registerDevice"
# A made-up node is offline (409 node_offline), a made-up model unknown to it (422).
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "409", "422"]

[[operations]]
include-operation-id-regex = "^(remove|revoke)Device$"
# Never the real device: patchTwin above needs it (tests/integration/twins_e2e/test_lifecycle.py
# removes and revokes real devices).
parameters = {{ "path.id" = "edge-dev:gone-0" }}

[[operations]]
include-operation-id-regex = "^list"
# An opaque `continue` token cannot be described by a schema: a made-up one is refused with 400
# bad_continue (the lists' own tests page with real ones).
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404"]

[dictionaries.spare]
values = ["{spare}"]

[dictionaries.waits]
values = [0, 0.1]

[[operations]]
include-operation-id-regex = "^(list|get)FleetObjects?$"
# A watch (watch=true) streams for up to timeoutSeconds and a long poll (waitForChange=true)
# waits as long: the coverage phase's 300 s bounds would fail the 10 s response-time check.
# tests/integration/fleet/api covers both (order, 410, timeouts, bad parameters).
parameters = {{ "query.watch" = false, "query.waitForChange" = false }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404"]

[[operations]]
include-operation-id-regex = "^(put|patch|delete)FleetObject(Status)?$"
# Each kind's spec is checked by fleet_model beyond what one schema for every kind says, the
# kind in a body must be the URL's, and metadata.resourceVersion / If-Match are preconditions:
# a schema-valid request may get 400 invalid_document or name_mismatch, 404, 409 or 412.
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "400", "401", "403", "404", "409", "412", "413",
]

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


SPARE = "edge-spare"
"""A node waiting for approval: what the node actions of the runs act on."""


def _pending_spare(system: DeviceSystem, workdir: Path) -> None:
    body = json.dumps({"name": SPARE, "requireApproval": True}).encode()
    status, created, _ = system.api.call("POST", "/api/v1/tokens", body=body)
    assert status == 201, created
    waited = subprocess.run(
        [
            str(BIN / "edge-agent"),
            "join",
            "--server",
            system.server.url,
            "--token",
            created["token"],
            "--ca-hash",
            system.server.ca_hash,
            "--name",
            SPARE,
            "--data-dir",
            str(workdir / "spare"),
            "--wait-approval",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert waited.returncode == 7, waited.stderr  # pending: the runs approve, deny, revoke it


def _run(
    system: DeviceSystem, workdir: Path, *, token: str, session: str, examples: int
) -> Counter[tuple[str, str, int]]:
    """One schemathesis run with ``token``; (method, path template, status) it saw."""
    server = system.server
    workdir.mkdir()
    ca = workdir / "ca.crt"
    ca.write_bytes(server.ca_pem)
    config = workdir / "schemathesis.toml"
    config.write_text(
        _CONFIG.format(
            node=DEVICE_NODE,
            device=DEVICE,
            bare=DEVICE.partition(":")[2],
            session=session,
            spare=SPARE,
        )
    )
    har = workdir / "run.har"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            f"{server.url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--tls-verify",
            str(ca),
            "--checks",
            "all",
            "--exclude-operation-id",
            "streamEvents",  # an endless stream: checked in test_api instead
            "--exclude-operation-id",
            # Its coverage phase sends long-poll waits near the 30 s bound, which schemathesis's
            # response-time check holds to 10 s whatever the config says; tests/integration/twins
            # and twins_e2e cover it (waits, ETag, bad parameters).
            "getTwin",
            "--request-timeout",
            "10",
            "--max-examples",
            str(examples),
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
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
        timeout=600,
        cwd=workdir,  # schemathesis keeps a .schemathesis/ folder in its working dir
        check=False,
    )
    (workdir / "schemathesis.out").write_text(done.stdout + done.stderr)
    failures = done.stdout.partition("=== FAILURES ===")[2] or done.stdout
    assert done.returncode == 0, failures[:20000] + done.stderr[-2000:]
    assert "passed" in done.stdout, done.stdout[-3000:]
    print(done.stdout[-1500:])  # noqa: T201 - the summary, shown with -s
    return _answers(har)


def _ok(seen: Counter[tuple[str, str, int]], method: str, path: str) -> int:
    return sum(n for (m, p, s), n in seen.items() if (m, p) == (method, path) and s < 300)


@pytest.mark.timeout(1800)
def test_api_matches_its_openapi_document(device_system: DeviceSystem, tmp_path: Path) -> None:
    server, api = device_system.server, device_system.api
    _pending_spare(device_system, tmp_path)
    users = {
        role: server.cli("users", "create", f"st-{role}", "--role", role).strip()
        for role in ("admin", "operator", "viewer")
    }
    status, created, _ = api.call("POST", "/api/v1/sessions", token=users["admin"])
    assert status == 201, created
    seen = _run(
        device_system, tmp_path / "admin", token=users["admin"], session=created["token"],
        examples=50,
    )  # fmt: skip
    for method, path in (
        ("GET", "/api/v1/nodes/{name}"),
        ("GET", "/api/v1/nodes/{name}/history"),
        ("GET", "/api/v1/devices/{id}"),
        ("PATCH", "/api/v1/devices/{id}/twin"),  # desired changed on the real device
        ("DELETE", "/api/v1/sessions/current"),
        ("POST", "/api/v1/tokens"),
        ("POST", "/api/v1/admin-token/rotate"),
    ):
        assert _ok(seen, method, path), f"{method} {path} never succeeded: {sorted(seen)[:60]}"
    # Generated If-Match values are mostly malformed (400 bad_if_match), so a refused
    # conditional write is not left to chance: one stale tag of each kind, on the real device.
    for headers, patch, answer in (
        ({"If-Match": '"999999"'}, b'{"desired": {}}', (412, "precondition_failed")),
        ({}, b'{"desired": {"$version": 999999, "setpoint": 21}}', (409, "version_conflict")),
    ):
        status, problem, _ = api.call(
            "PATCH", f"/api/v1/devices/{DEVICE}/twin", body=patch, headers=headers,
            token=users["admin"],
        )  # fmt: skip
        assert (status, problem["reason"]) == answer, problem
    status, body, _ = api.call("GET", "/api/v1/nodes", token=created["token"])
    assert (status, body["reason"]) == (401, "session_revoked")
    # The node actions reached the spare node: a 200 or a 409 wrong_state, never edge-dev.
    actions = [(m, p, s) for (m, p, s) in seen if p.startswith(f"/api/v1/nodes/{SPARE}/")]
    assert any(s == 200 for _, _, s in actions), sorted(seen)[:80]
    status, node, _ = api.call("GET", f"/api/v1/nodes/{DEVICE_NODE}", token=users["admin"])
    assert node["state"] == "approved", "edge-dev was never revoked by the runs"

    for role in ("operator", "viewer"):
        status, made, _ = api.call("POST", "/api/v1/sessions", token=users[role])
        assert status == 201, made
        seen = _run(
            device_system, tmp_path / role, token=users[role], session=made["token"],
            examples=15,
        )  # fmt: skip
        assert _ok(seen, "GET", "/api/v1/nodes/{name}"), role
        refused = {(m, p) for (m, p, s) in seen if s == 403}
        assert ("POST", "/api/v1/tokens") in refused, (role, sorted(seen)[:80])
        assert ("POST", "/api/v1/admin-token/rotate") in refused, role
        if role == "viewer":
            assert ("PATCH", "/api/v1/devices/{id}/twin") in refused

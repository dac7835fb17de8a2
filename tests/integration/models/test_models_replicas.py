"""Device models across two real ``tunnel-server run --store kubernetes`` replicas.

Replica A takes the upload; the agent (real ``edge-agent run`` with twins on a real mosquitto)
holds its session on replica B. B serves the model through its API, validates with it, and
pushes it to the agent over the ``models`` stream, from the ``DeviceModel`` object's watch. An
upload of the same version through B is refused (versions only go forward on every replica).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from device_models import DeviceModel
from tests.harness import kube, mqtt
from tests.harness.ha import Replica
from tests.harness.waiting import eventually_async
from tests.integration.kubestore.conftest import kube_crds, namespace
from tests.integration.twins_e2e.conftest import (
    READY_TIMEOUT,
    AgentProcess,
    System,
    TwinsServer,
    running_system,
)

__all__ = ["kube_crds", "namespace"]

pytestmark = pytest.mark.mqtt


@dataclass(kw_only=True)
class TwinsReplica(Replica, TwinsServer):
    """A replica (``POD_NAME``, the Kubernetes store) the twins system can run."""


def pump_yaml(version: str, *, maximum: int) -> str:
    return f"""\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: pump
version: "{version}"
properties:
  - {{name: rpm, type: int, min: 0, max: {maximum}, kind: telemetry}}
"""


@dataclass(kw_only=True)
class TwoReplicas:
    a: Replica
    system: System
    """Replica B (``system.server``) holds the agent."""


@pytest_asyncio.fixture
async def two(
    kube_crds: kube.ControlPlane,
    namespace: str,
    mqtt_dynsec_broker: mqtt.Broker,
    tmp_path: Path,
) -> AsyncIterator[TwoReplicas]:
    kubeconfig = str(kube_crds.kubeconfig)
    args = ("--store", "kubernetes", "--kubeconfig", kubeconfig, "--namespace", namespace)
    a = Replica(workdir=tmp_path / "a", extra_args=args, pod_name="replica-a")
    b = TwinsReplica(workdir=tmp_path / "b", extra_args=args, pod_name="replica-b")
    for server in (a, b):
        server.workdir.mkdir()
    a.start()  # it makes the CA and the admin token; B takes both from the store
    try:
        b.data_dir.mkdir(mode=0o700)
        (b.data_dir / "admin-token").write_text(a.admin_token)
        agent = AgentProcess(workdir=tmp_path, broker=mqtt_dynsec_broker)
        async with running_system(
            server=b, agent=agent, broker=mqtt_dynsec_broker, workdir=tmp_path
        ) as system:
            yield TwoReplicas(a=a, system=system)
    finally:
        a.stop()


def _held(*servers: Replica) -> Callable[[], Awaitable[tuple[int, ...]]]:
    async def held() -> tuple[int, ...]:
        return tuple(int(server.status()["agents_held"]) for server in servers)

    return held


async def _upload(system: System, server: Replica, text: str) -> tuple[int, dict[str, Any]]:
    headers = {
        "Authorization": f"Bearer {server.admin_token}",
        "Content-Type": "application/yaml",
    }
    async with system.http.post(
        server.url + "/api/v1/device-models", data=text, headers=headers
    ) as answer:
        return answer.status, await answer.json(content_type=None)


async def test_a_model_uploaded_through_a_is_served_and_pushed_by_b(two: TwoReplicas) -> None:
    system, a = two.system, two.a
    b = system.server
    assert isinstance(b, Replica)
    await eventually_async(
        _held(a, b), lambda held: held == (0, 1), what="B records the agent's session"
    )

    status, body = await _upload(system, a, pump_yaml("1.0.0", maximum=10))
    assert status == 201, body

    path = system.agent.data_dir / "twins" / "models" / "pump.yaml"

    async def on_agent() -> str | None:
        assert system.agent.process is not None
        system.agent.process.check_running()
        return DeviceModel.from_yaml(path.read_bytes()).version if path.exists() else None

    await eventually_async(
        on_agent,
        lambda version: version == "1.0.0",
        what="B pushes the model A took to the agent it holds",
        within=READY_TIMEOUT,
    )
    code, served = b.get("/api/v1/device-models/pump", token=b.admin_token)
    assert code == 200, served
    detail = json.loads(served)
    assert (detail["version"], detail["source"], detail["createdBy"]) == (
        "1.0.0",
        "uploaded",
        "admin",
    )
    assert detail["model"]["properties"][0]["max"] == 10

    # B validates with it: a device of the model is onboarded and reports through B.
    credential = await system.claim("p-1", "pump")
    await system.wait_device("p-1")
    async with system.device(credential) as sim:
        ok = await sim.report({"rpm": 5})
        assert ok["code"] == 200, ok
        twin = await system.cloud_twin("p-1", reported=ok["version"])
    assert twin["reported"]["rpm"] == 5

    # Versions only go forward on every replica: B refuses what A stored.
    status, problem = await _upload(system, b, pump_yaml("1.0.0", maximum=99))
    assert (status, problem["reason"]) == (409, "version_not_higher"), problem
    status, body = await _upload(system, b, pump_yaml("1.1.0", maximum=99))
    assert status == 201, body
    await eventually_async(on_agent, lambda version: version == "1.1.0", what="1.1.0 on the agent")
    code, listed = a.get("/api/v1/device-models/pump/versions", token=a.admin_token)
    assert code == 200, listed
    assert [item["version"] for item in json.loads(listed)["items"]] == ["1.1.0", "1.0.0"]

"""Fixtures for the real services every integration test runs against."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

from tests.harness import homeassistant, kube, mqtt, procs

# No per-example deadline: on two busy cores a scheduler stall makes one example slow, and
# hypothesis then fails the test as "unreliable timings"; speed is for the benchmarks.
settings.register_profile("edgefleet", deadline=None)
settings.load_profile("edgefleet")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    """Artifacts a person may want after the run (logs, screenshots): kept, not in tmp."""
    folder = Path(os.environ.get("EDGEFLEET_TEST_OUTPUT", REPO / "build" / "test-output"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.ControlPlane]:
    """One real control plane shared by the whole session; tests use their own namespaces."""
    plane = kube.start(
        "shared",
        tmp_path_factory.mktemp("kube-shared"),
        extra_tokens={secrets.token_urlsafe(16): "nobody"},
    )
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[int], list[kube.ControlPlane]]]:
    """Start N more control planes at once; all are stopped when the test ends."""
    started: list[kube.ControlPlane] = []

    def make(count: int) -> list[kube.ControlPlane]:
        base = tmp_path_factory.mktemp("kube-factory")
        planes = [kube.launch(f"cluster{i}", base / f"cluster{i}") for i in range(count)]
        started.extend(planes)
        for plane in planes:
            plane.wait_ready()
        return planes

    yield make
    for plane in started:
        plane.stop()


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mqtt.Broker]:
    """Anonymous mosquitto on loopback; tests use unique topics."""
    broker = mqtt.start(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mqtt_dynsec_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mqtt.Broker]:
    """Mosquitto with the dynamic-security plugin: no anonymous access, an admin account."""
    broker = mqtt.start(tmp_path_factory.mktemp("mosquitto-dynsec"), dynsec=True)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def home_assistant(
    tmp_path_factory: pytest.TempPathFactory, mqtt_broker: mqtt.Broker
) -> Iterator[homeassistant.HomeAssistant]:
    """A real Home Assistant core (scripts/homeassistant-build), MQTT on `mqtt_broker`."""
    ha = homeassistant.start(tmp_path_factory.mktemp("homeassistant"), mqtt_broker)
    yield ha
    ha.stop()


SERVICE_NAMES = frozenset(
    {
        "kube-apiserver",
        "kube-controller-manager",
        "kube-controller",  # the kernel's 15-character comm, should psutil fall back to it
        "kube-scheduler",
        "kwok",
        "kine",
        "mosquitto",
        "hass",
    }
)


def leftover_services() -> list[str]:
    me = psutil.Process()
    return [
        f"{child.name()}[{child.pid}]"
        for child in me.children(recursive=True)
        if child.is_running()
        and child.status() != psutil.STATUS_ZOMBIE
        and child.name() in SERVICE_NAMES
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any real service outlived its fixture (a leak in our teardown)."""
    left = leftover_services()
    procs.stop_all()
    if left and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nERROR: services still running after the tests: {', '.join(left)}")  # noqa: T201

"""The agent's received models: stored atomically, used at once, bounded, bad ones refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from device_models import DeviceModel, ModelRegistry, builtin_model, builtin_models
from device_models import model_wire as wire
from edge_agent.model_link import CloudModelLink
from edge_agent.twins.models import ReceivedModels


def pump(version: str, name: str = "pump") -> DeviceModel:
    return DeviceModel.from_dict(
        {
            "apiVersion": "edgefleet.io/v1",
            "kind": "DeviceModel",
            "name": name,
            "version": version,
            "properties": [{"name": "rpm", "type": "int", "min": 0, "max": 10}],
        }
    )


def test_a_newer_model_is_stored_then_used_and_loaded_again_after_a_restart(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(builtin_models())
    received = ReceivedModels(folder=tmp_path / "models", registry=registry)
    assert received.receive(pump("1.0")) == ("stored", None)
    assert received.receive(pump("1.0.0")) == ("kept", None)  # the same version
    assert received.receive(pump("0.9")) == ("kept", None)
    assert received.receive(pump("1.1")) == ("stored", None)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["pump.yaml"]  # no temp left
    held = registry.get("pump")
    assert held is not None
    assert held.version == "1.1"
    restarted = ModelRegistry(builtin_models())
    assert ReceivedModels(folder=tmp_path / "models", registry=restarted).load() == 1
    again = restarted.get("pump")
    assert again is not None
    assert again.version == "1.1"
    assert wire.hello(received.have())["have"]["pump"] == "1.1"


def test_received_models_are_bounded(tmp_path: Path) -> None:
    received = ReceivedModels(
        folder=tmp_path / "models", registry=ModelRegistry(builtin_models()), limit=1
    )
    assert received.receive(pump("1", name="a"))[0] == "stored"
    result, reason = received.receive(pump("1", name="b"))
    assert result == "refused"
    assert reason is not None
    assert "bound" in reason
    assert received.receive(pump("2", name="a"))[0] == "stored"  # replacing is fine


def test_a_bad_model_from_the_cloud_is_refused_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(builtin_models())
    link = CloudModelLink(ReceivedModels(folder=tmp_path / "models", registry=registry))
    bad = builtin_model("thermostat").to_dict() | {"version": "2.0.0", "properties": []}
    with caplog.at_level(logging.ERROR, logger="edge_agent.model_link"):
        answer = link._on_model({"type": "model", "model": bad})
    assert answer["result"] == "refused"
    assert answer["name"] == "thermostat"
    assert "properties" in str(answer["reason"])
    assert len(caplog.records) == 1
    held = registry.get("thermostat")
    assert held is not None
    assert held.version == "1.0.0"  # the built-in is still what validates
    assert not (tmp_path / "models").exists()
    assert link.status() == {"received": 0, "refused": 1}

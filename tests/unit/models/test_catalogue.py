"""The cloud's model catalogue: built-ins, folder files and uploads; versions only go forward."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_models import DeviceModel, ModelRegistry, builtin_model, builtin_models
from tunnel_server.twins.model_store import (
    LimitError,
    ModelCatalogue,
    ModelStore,
    NotNewerError,
)


def pump(version: str, maximum: int = 10) -> DeviceModel:
    return DeviceModel.from_dict(
        {
            "apiVersion": "edgefleet.io/v1",
            "kind": "DeviceModel",
            "name": "pump",
            "version": version,
            "properties": [{"name": "rpm", "type": "int", "min": 0, "max": maximum}],
        }
    )


def catalogue(path: Path, **bounds: int) -> ModelCatalogue:
    return ModelCatalogue(
        store=ModelStore(path), registry=ModelRegistry(builtin_models()), **bounds
    )


def test_uploads_are_durable_and_the_registry_follows_the_latest(tmp_path: Path) -> None:
    first = catalogue(tmp_path / "m.db")
    first.add(pump("1.0.0"), now=1.0, by="ops")
    first.add(pump("1.1.0", maximum=20), now=2.0, by="ops")
    with pytest.raises(NotNewerError) as refused:
        first.add(pump("1.0.5"), now=3.0, by="ops")
    assert refused.value.current == "1.1.0"
    first.store.close()
    again = catalogue(tmp_path / "m.db")
    assert [v.version for v in again.versions("pump")] == ["1.0.0", "1.1.0"]
    latest = again.latest("pump")
    assert latest is not None
    assert (latest.source, latest.created_by) == ("uploaded", "ops")
    held = again.registry.get("pump")
    assert held is not None
    assert held.version == "1.1.0"


def test_a_builtin_gets_a_new_version_and_keeps_its_own_in_the_list(tmp_path: Path) -> None:
    cat = catalogue(tmp_path / "m.db")
    data = builtin_model("thermostat").to_dict()
    cat.add(DeviceModel.from_dict({**data, "version": "1.1.0"}), now=1.0, by="ops")
    assert [(v.version, v.source) for v in cat.versions("thermostat")] == [
        ("1.0.0", "builtin"),
        ("1.1.0", "uploaded"),
    ]


def test_bounds_on_names_and_versions(tmp_path: Path) -> None:
    cat = catalogue(tmp_path / "m.db", max_names=1, max_versions=2)
    for minor in range(4):
        cat.add(pump(f"1.{minor}"), now=float(minor), by="ops")
    assert [v.version for v in cat.versions("pump")] == ["1.2", "1.3"]  # the oldest dropped
    other = DeviceModel.from_dict({**pump("1").to_dict(), "name": "valve"})
    with pytest.raises(LimitError) as refused:
        cat.add(other, now=9.0, by="ops")
    assert refused.value.reason == "too_many_models"
    cat.store.close()
    assert [v.version for v in catalogue(tmp_path / "m.db").versions("pump")] == ["1.2", "1.3"]

"""The models folder, read the same way by the agent and the tunnel server.

Each end walks its folder itself (reading files is I/O); `device_models.ModelRegistry` does the
rest. Both ends are run through the same cases, which check the log lines word for word.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from device_models import BUILTIN_MODEL_YAML, MAX_MODEL_YAML_BYTES, ModelRegistry
from edge_agent.twins import models as edge_models
from tunnel_server.twins import models as cloud_models

Load = Callable[[Path | None], ModelRegistry]
LOADERS = {
    "edge_agent.twins.models": edge_models.load_models,
    "tunnel_server.twins.models": cloud_models.load_models,
}
BUILTINS = sorted(BUILTIN_MODEL_YAML)


def model_yaml(name: str, version: str = "1.0.0") -> str:
    return (
        f'apiVersion: edgefleet.io/v1\nkind: DeviceModel\nname: {name}\nversion: "{version}"\n'
        "properties:\n  - {name: level, type: int}\n"
    )


@pytest.fixture(params=sorted(LOADERS))
def logger(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def load(logger: str) -> Load:
    return LOADERS[logger]


def version(registry: ModelRegistry, name: str) -> str:
    model = registry.get(name)
    assert model is not None
    return model.version


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


def test_no_folder_or_a_missing_one_gives_the_builtins(load: Load, tmp_path: Path) -> None:
    assert load(None).names() == BUILTINS
    assert load(tmp_path / "missing").names() == BUILTINS


def test_yaml_and_yml_files_are_added_and_logged(
    load: Load, logger: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "pump.yaml").write_text(model_yaml("pump", "2.1"))
    (tmp_path / "fan.yml").write_text(model_yaml("fan"))
    (tmp_path / "notes.txt").write_text(model_yaml("notes"))
    caplog.set_level(logging.INFO)
    registry = load(tmp_path)
    assert registry.names() == sorted([*BUILTINS, "fan", "pump"])
    assert version(registry, "pump") == "2.1"
    assert registry.get("notes") is None
    assert lines(caplog, logger) == [
        (logging.INFO, f"loaded device model fan 1.0.0 from {tmp_path / 'fan.yml'}"),
        (logging.INFO, f"loaded device model pump 2.1 from {tmp_path / 'pump.yaml'}"),
    ]


def test_bad_files_are_logged_and_skipped_never_fatal(
    load: Load, logger: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-taken.yaml").write_text(model_yaml("thermostat", "9.9"))
    (tmp_path / "b-big.yaml").write_text("#" * (MAX_MODEL_YAML_BYTES + 1))
    (tmp_path / "c-dir.yaml").mkdir()
    (tmp_path / "d-invalid.yaml").write_text(model_yaml("Bad Name"))
    (tmp_path / "e-first.yml").write_text(model_yaml("twice", "1"))
    (tmp_path / "f-second.yaml").write_text(model_yaml("twice", "2"))
    caplog.set_level(logging.INFO)
    registry = load(tmp_path)
    assert registry.names() == sorted([*BUILTINS, "twice"])
    assert version(registry, "thermostat") == "1.0.0"
    assert version(registry, "twice") == "1"
    logged = lines(caplog, logger)
    assert logged[0] == (
        logging.ERROR,
        f"model thermostat in {tmp_path / 'a-taken.yaml'}: the name is already taken; skipped",
    )
    big = tmp_path / "b-big.yaml"
    assert logged[1] == (
        logging.ERROR,
        f"model file {big} is larger than {MAX_MODEL_YAML_BYTES} bytes; skipped",
    )
    assert logged[2][0] == logging.ERROR
    assert logged[2][1].startswith(f"cannot read model file {tmp_path / 'c-dir.yaml'}: [Errno ")
    assert logged[3][0] == logging.ERROR
    assert logged[3][1].startswith(
        f"invalid model file {tmp_path / 'd-invalid.yaml'}: invalid device model\n  name: "
    )
    assert logged[4:] == [
        (logging.INFO, f"loaded device model twice 1 from {tmp_path / 'e-first.yml'}"),
        (
            logging.ERROR,
            f"model twice in {tmp_path / 'f-second.yaml'}: the name is already taken; skipped",
        ),
    ]

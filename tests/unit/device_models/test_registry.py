"""The model registry: built-ins first, then one model per file, bad files logged and skipped."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import (
    BUILTIN_MODEL_YAML,
    MAX_MODEL_YAML_BYTES,
    ModelRegistry,
    builtin_model,
    builtin_models,
)

BUILTINS = sorted(BUILTIN_MODEL_YAML)
LOG = logging.getLogger("tests.registry")


def model_yaml(name: str, version: str = "1.0.0") -> str:
    return (
        f'apiVersion: edgefleet.io/v1\nkind: DeviceModel\nname: {name}\nversion: "{version}"\n'
        "properties:\n  - {name: level, type: int}\n"
    )


def logged(caplog: pytest.LogCaptureFixture, logger: str = LOG.name) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


def version(registry: ModelRegistry, name: str) -> str:
    model = registry.get(name)
    assert model is not None
    return model.version


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def test_lookup_by_name_and_sorted_names() -> None:
    models = {
        "thermostat": builtin_model("thermostat"),
        "power-meter": builtin_model("power-meter"),
    }
    registry = ModelRegistry(models)
    models.clear()  # the registry keeps its own copy
    assert registry.names() == ["power-meter", "thermostat"]
    assert registry.get("thermostat") == builtin_model("thermostat")
    assert registry.get("relay-switch") is None
    assert registry.get("Thermostat") is None  # names are exact


def test_no_files_gives_the_builtins(caplog: pytest.LogCaptureFixture) -> None:
    registry = ModelRegistry.from_yaml_files([], log=LOG)
    assert registry.names() == BUILTINS
    assert all(registry.get(name) == model for name, model in builtin_models().items())
    assert logged(caplog) == []


def test_files_are_added_from_text_or_bytes(caplog: pytest.LogCaptureFixture) -> None:
    files: list[tuple[str, str | bytes]] = [
        ("pump.yaml", model_yaml("pump", "2.1")),
        ("fan.yml", model_yaml("fan").encode()),
    ]
    registry = ModelRegistry.from_yaml_files(files, log=LOG)
    assert registry.names() == sorted([*BUILTINS, "fan", "pump"])
    assert version(registry, "pump") == "2.1"
    assert logged(caplog) == [
        (logging.INFO, "loaded device model pump 2.1 from pump.yaml"),
        (logging.INFO, "loaded device model fan 1.0.0 from fan.yml"),
    ]


def test_a_builtin_name_cannot_be_taken(caplog: pytest.LogCaptureFixture) -> None:
    registry = ModelRegistry.from_yaml_files([("t.yaml", model_yaml("thermostat", "9"))], log=LOG)
    assert registry.names() == BUILTINS
    assert registry.get("thermostat") == builtin_model("thermostat")
    assert logged(caplog) == [
        (logging.ERROR, "model thermostat in t.yaml: the name is already taken; skipped"),
    ]


def test_of_two_files_with_one_name_the_first_wins(caplog: pytest.LogCaptureFixture) -> None:
    files = [("b.yaml", model_yaml("pump", "2")), ("a.yaml", model_yaml("pump", "1"))]
    registry = ModelRegistry.from_yaml_files(files, log=LOG)
    assert version(registry, "pump") == "2"
    assert logged(caplog) == [
        (logging.INFO, "loaded device model pump 2 from b.yaml"),
        (logging.ERROR, "model pump in a.yaml: the name is already taken; skipped"),
    ]


def test_an_invalid_file_is_logged_with_every_problem_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = model_yaml("Bad Name", "x").replace("type: int", "type: int, min: 5, max: 1")
    files = [("bad.yaml", bad), ("not-yaml.yaml", "{"), ("ok.yaml", model_yaml("ok"))]
    registry = ModelRegistry.from_yaml_files(files, log=LOG)
    assert registry.names() == sorted([*BUILTINS, "ok"])
    lines = logged(caplog)
    assert [level for level, _ in lines] == [logging.ERROR, logging.ERROR, logging.INFO]
    first = lines[0][1].splitlines()
    assert first[0] == "invalid model file bad.yaml: invalid device model"
    assert [line.split(":")[0].strip() for line in first[1:]] == [
        "name",
        "version",
        "properties[0].min",
    ]
    assert lines[1][1].startswith("invalid model file not-yaml.yaml: ")


def test_text_over_the_model_limit_is_invalid_not_parsed(caplog: pytest.LogCaptureFixture) -> None:
    huge = model_yaml("huge") + "#" * MAX_MODEL_YAML_BYTES
    registry = ModelRegistry.from_yaml_files([("huge.yaml", huge)], log=LOG)
    assert registry.get("huge") is None
    ((level, message),) = logged(caplog)
    assert level == logging.ERROR
    assert message.startswith("invalid model file huge.yaml: ")


def test_files_are_taken_one_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    """The caller's own log lines (read errors) stay in file order with the registry's."""

    def read() -> Iterator[tuple[str, str]]:
        yield "a.yaml", model_yaml("a")
        LOG.error("cannot read model file b.yaml")
        yield "c.yaml", model_yaml("c")

    ModelRegistry.from_yaml_files(read(), log=LOG)
    assert [message for _, message in logged(caplog)] == [
        "loaded device model a 1.0.0 from a.yaml",
        "cannot read model file b.yaml",
        "loaded device model c 1.0.0 from c.yaml",
    ]


def test_without_a_logger_it_logs_as_device_models(caplog: pytest.LogCaptureFixture) -> None:
    ModelRegistry.from_yaml_files([("p.yaml", model_yaml("pump"))])
    assert logged(caplog, "device_models") == [
        (logging.INFO, "loaded device model pump 1.0.0 from p.yaml"),
    ]


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), max_size=4))
def test_any_file_contents_leave_the_builtins_intact(texts: list[str | bytes]) -> None:
    files = [(f"{index}.yaml", text) for index, text in enumerate(texts)]
    registry = ModelRegistry.from_yaml_files(files, log=LOG)
    assert all(registry.get(name) == model for name, model in builtin_models().items())

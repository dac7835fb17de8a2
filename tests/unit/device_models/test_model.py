"""Device models: the YAML format, its errors, the built-ins, and validating values."""

from __future__ import annotations

import textwrap

import pytest

from device_models import (
    BUILTIN_MODEL_YAML,
    MAX_MODEL_YAML_BYTES,
    MAX_PROPERTIES,
    Access,
    DeviceModel,
    Kind,
    ModelError,
    PropertyType,
    ValidationError,
    builtin_model,
    builtin_models,
)

HEADER = 'apiVersion: edgefleet.io/v1\nkind: DeviceModel\nname: test\nversion: "1"\n'


def model_yaml(properties: str) -> str:
    body = textwrap.indent(textwrap.dedent(properties), "  ")
    return HEADER + "properties:\n" + body.rstrip("\n") + "\n"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ModelError) as caught:
        DeviceModel.from_yaml(text)
    return [str(problem) for problem in caught.value.problems]


# ------------------------------------------------------------------------------ parsing


def test_a_full_model_parses_with_defaults_filled_in() -> None:
    model = DeviceModel.from_yaml(
        HEADER
        + textwrap.dedent("""\
        description: A test device.
        protocol: {transport: mqtt, qos: 1, retain: false, pollSeconds: 2.5}
        properties:
          - {name: temp, type: float, unit: "°C", min: -40, max: 125, kind: telemetry}
          - {name: level, type: int, min: 0}
          - {name: label, type: string, maxLength: 8, access: read-write}
          - {name: mode, type: enum, values: [eco, comfort], access: read-write}
          - name: config
            type: object
            access: read-write
            properties:
              - {name: enabled, type: bool, access: read-write}
        """)
    )
    assert model.name == "test"
    assert model.version == "1"
    assert dict(model.protocol) == {
        "transport": "mqtt",
        "qos": 1,
        "retain": False,
        "pollSeconds": 2.5,
    }
    temp = model.property("temp")
    assert temp is not None
    assert (temp.type, temp.unit, temp.minimum, temp.maximum) == (
        PropertyType.FLOAT,
        "°C",
        -40,
        125,
    )
    assert (temp.access, temp.kind) == (Access.READ_ONLY, Kind.TELEMETRY)
    level = model.property("level")
    assert level is not None
    assert (level.maximum, level.kind) == (None, Kind.STATE)
    config = model.property("config")
    assert config is not None
    assert config.member("enabled") is not None
    assert model.property("nope") is None


def test_to_dict_round_trips() -> None:
    for model in builtin_models().values():
        assert DeviceModel.from_dict(model.to_dict()) == model


def test_bytes_are_accepted() -> None:
    assert DeviceModel.from_yaml(BUILTIN_MODEL_YAML["relay-switch"].encode()).name == "relay-switch"


def test_every_builtin_parses() -> None:
    models = builtin_models()
    assert {"temperature-sensor", "relay-switch", "power-meter", "thermostat"} <= set(models)
    thermostat = builtin_model("thermostat")
    setpoint = thermostat.property("setpoint")
    assert setpoint is not None
    assert setpoint.access is Access.READ_WRITE


def test_unknown_builtin() -> None:
    with pytest.raises(ModelError, match="no built-in model 'toaster'"):
        builtin_model("toaster")


def test_header_errors_are_all_reported() -> None:
    text = "name: Bad_Name\nversion: 1.0\nextra: 1\nprotocol: [1]\nproperties: []\n"
    assert problems_of(text) == [
        (
            "extra: unknown field (expected apiVersion, description, kind, localControl, name, "
            "properties, protocol, version)"
        ),
        "apiVersion: must be 'edgefleet.io/v1' (missing)",
        "kind: must be 'DeviceModel' (missing)",
        (
            "name: must be a DNS label: lowercase letters, digits and '-', at most 63 characters "
            "(got 'Bad_Name')"
        ),
        'version: must be a string such as "1.0.0", quoted in YAML (got 1.0)',
        "protocol: must be a mapping of settings (got array)",
        "properties: must be a non-empty list of properties (got array)",
    ]


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        (
            "- {name: a, type: int, min: 10, max: 5}",
            "properties[0].min: must be <= max (got 10 > 5)",
        ),
        (
            "- {name: a, type: int, min: 1.5}",
            "properties[0].min: must be an integer for an int property (got 1.5)",
        ),
        ("- {name: a, type: float, max: yes}", "properties[0].max: must be a number (got True)"),
        (
            "- {name: a, type: string, min: 1}",
            "properties[0].min: only int and float properties have min (this is string)",
        ),
        (
            "- {name: a, type: bool, values: [x]}",
            "properties[0].values: only enum properties have values (this is bool)",
        ),
        (
            "- {name: a, type: integer}",
            (
                "properties[0].type: must be one of int, float, bool, string, enum, object "
                "(got 'integer')"
            ),
        ),
        (
            "- {name: a}",
            "properties[0].type: must be one of int, float, bool, string, enum, object (missing)",
        ),
        (
            "- {name: 2fast, type: bool}",
            (
                "properties[0].name: must be an identifier (letters, digits, '_', not starting "
                "with a digit) of at most 64 characters (got '2fast')"
            ),
        ),
        (
            "- {name: a, type: bool, mxa: 1}",
            "properties[0].mxa: unknown field (expected access, description, kind, name, type)",
        ),
        (
            "- {name: a, type: float, access: write}",
            "properties[0].access: must be one of read-only, read-write (got 'write')",
        ),
        (
            "- {name: a, type: float, access: read-write, kind: telemetry}",
            (
                "properties[0].kind: a read-write property must be of kind state (telemetry is "
                "measured, not set)"
            ),
        ),
        (
            "- {name: a, type: string, maxLength: 0}",
            "properties[0].maxLength: must be an integer from 1 to 4096 (got 0)",
        ),
        (
            "- {name: a, type: enum}",
            "properties[0].values: an enum needs a list of 1 to 64 strings (got None)",
        ),
        (
            "- {name: a, type: enum, values: [x, x]}",
            "properties[0].values[1]: duplicate value 'x'",
        ),
        (
            "- {name: a, type: object}",
            "properties[0].properties: must be a non-empty list of properties (missing)",
        ),
        (
            "- {name: a, type: float, unit: ''}",
            "properties[0].unit: must be a string of 1 to 32 characters (got '')",
        ),
        ("- 42", "properties[0]: a property must be a mapping (got int)"),
        (
            "- {name: a, type: bool}\n- {name: a, type: int}",
            "properties[1].name: duplicate 'a' (see properties[0])",
        ),
        (
            "- {name: o, type: object, properties: [{name: x, type: object, properties: [1]}]}",
            "properties[0].properties[0].properties[0]: a property must be a mapping (got int)",
        ),
    ],
)
def test_each_property_error_names_its_path(properties: str, expected: str) -> None:
    assert problems_of(model_yaml(properties)) == [expected]


def test_protocol_settings_are_bounded_scalars() -> None:
    text = model_yaml("- {name: a, type: bool}") + "protocol: {topic: [x], 9lives: 1, ok: 1}\n"
    assert problems_of(text) == [
        "protocol.topic: settings are strings, numbers or booleans (got array)",
        (
            "protocol.9lives: must be an identifier (letters, digits, '_', not starting with a "
            "digit) of at most 64 characters (got '9lives')"
        ),
    ]


def test_nesting_is_bounded() -> None:
    leaf = "{name: leaf, type: bool}"
    nested = leaf
    for level in range(6):
        nested = f"{{name: o{level}, type: object, properties: [{nested}]}}"
    path = "properties[0]" + ".properties[0]" * 4 + ".properties"
    assert problems_of(model_yaml(f"- {nested}")) == [f"{path}: objects nest at most 5 levels deep"]


def test_property_count_is_bounded() -> None:
    many = "".join(f"- {{name: p{index}, type: bool}}\n" for index in range(MAX_PROPERTIES + 1))
    assert problems_of(model_yaml(many)) == ["properties: a model has at most 256 properties"]


def test_yaml_size_is_checked_before_parsing() -> None:
    text = "#" * (MAX_MODEL_YAML_BYTES + 1)
    assert problems_of(text) == [
        f"<root>: YAML text is {MAX_MODEL_YAML_BYTES + 1} bytes, more than 65536"
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: &x [1, 2]\nb: *x\n", "aliases (*name) are not allowed"),
        ("[" * 100 + "]" * 100, "nested deeper than 64 levels"),
        ("a: [1, 2\n", "not valid YAML"),
        ("!!python/object:os.system {}\n", "could not determine a constructor"),
        (b"\xff\xfe\xfa", "not valid"),
    ],
)
def test_hostile_yaml_is_refused(text: str | bytes, fragment: str) -> None:
    (problem,) = problems_of(text)  # type: ignore[arg-type]  # bytes are fine too
    assert fragment in problem


def test_a_model_must_be_a_mapping() -> None:
    assert problems_of("- 1\n") == ["<root>: a device model must be a mapping (got array)"]


def test_all_problems_are_collected_not_just_the_first() -> None:
    problems = problems_of(model_yaml("- {name: a, type: int, min: 3, max: 1}\n- {type: nope}"))
    assert len(problems) == 3


# ------------------------------------------------------------------------------ values


THERMOSTAT = builtin_model("thermostat")


def validation_problems(patch: object, *, desired: bool) -> list[str]:
    validate = THERMOSTAT.validate_desired if desired else THERMOSTAT.validate_reported
    with pytest.raises(ValidationError) as caught:
        validate(patch)
    return [str(problem) for problem in caught.value.problems]


def test_valid_patches_are_returned_as_copies() -> None:
    patch = {"setpoint": 21, "mode": "heat", "schedule": {"enabled": True, "eco": None}}
    checked = THERMOSTAT.validate_desired(patch)
    assert checked == patch
    assert checked is not patch
    assert checked["schedule"] is not patch["schedule"]
    reported = {"temperature": 20.5, "heating": False, "firmware": "1.2", "setpoint": None}
    assert THERMOSTAT.validate_reported(reported) == reported


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"setpoint": True}, "setpoint: must be a number (got bool True)"),
        ({"setpoint": "21"}, "setpoint: must be a number (got string '21')"),
        ({"setpoint": 31}, "setpoint: must be <= 30 (got 31)"),
        ({"setpoint": 4.5}, "setpoint: must be >= 5 (got 4.5)"),
        ({"mode": "turbo"}, "mode: must be one of 'off', 'heat', 'cool', 'auto' (got 'turbo')"),
        ({"heating": 1}, "heating: must be a bool (got int 1)"),
        ({"firmware": "x" * 33}, "firmware: must be at most 32 characters (got 33)"),
        ({"firmware": 3}, "firmware: must be a string (got int)"),
        ({"schedule": [1]}, "schedule: must be an object (got array)"),
        ({"schedule": {"comfort": 40}}, "schedule.comfort: must be <= 30 (got 40)"),
        (
            {"fan": 1},
            (
                "fan: unknown property (model thermostat has: temperature, heating, setpoint, "
                "mode, schedule, firmware)"
            ),
        ),
        (
            {"setpoint": float("nan")},
            "setpoint: numbers must be finite (JSON has no NaN or Infinity)",
        ),
        ([], "<root>: must be an object (got array)"),
        ({"$version": 1}, "$version: keys starting with '$' are reserved"),
    ],
)
def test_reported_errors_name_path_and_reason(patch: object, expected: str) -> None:
    assert validation_problems(patch, desired=False) == [expected]


def test_int_properties_are_strict() -> None:
    sensor = builtin_model("temperature-sensor")
    assert sensor.validate_reported({"battery": 7, "temperature": 21}) == {
        "battery": 7,
        "temperature": 21,
    }
    for bad, got in ((7.0, "float 7.0"), (True, "bool True")):
        with pytest.raises(ValidationError) as caught:
            sensor.validate_reported({"battery": bad})
        assert str(caught.value.problems[0]) == f"battery: must be an int (got {got})"


def test_desired_may_only_touch_read_write_properties() -> None:
    assert validation_problems(
        {"temperature": 20, "heating": None, "setpoint": 20}, desired=True
    ) == [
        "temperature: read-only: desired may only set read-write properties",
        "heating: read-only: desired may only set read-write properties",
    ]


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(ValidationError) as caught:
        THERMOSTAT.validate_desired({"setpoint": 99, "mode": 1})
    assert str(caught.value) == (
        "desired patch does not fit model thermostat\n"
        "  setpoint: must be <= 30 (got 99)\n"
        "  mode: must be one of 'off', 'heat', 'cool', 'auto' (got 1)"
    )


def test_typed_fields_are_unknown_at_the_top_level() -> None:
    text = model_yaml("- {name: a, type: bool}") + "min: 1\n"
    assert problems_of(text) == [
        (
            "min: unknown field (expected apiVersion, description, kind, localControl, name, "
            "properties, protocol, version)"
        )
    ]

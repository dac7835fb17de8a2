"""Device models: the YAML format, its parser, and validation of twin patches against a model.

Rules of the format (docs/device-models.md has the long form):

- A model is a mapping with `apiVersion: edgefleet.io/v1`, `kind: DeviceModel`, `name` (a DNS
  label), `version` (a quoted string like "1.2.0"), optional `description` and `protocol` (a
  bounded mapping of scalars the device's driver reads), optional `localControl` (a boolean,
  default false: whether the edge may change desired itself while the cloud is unreachable,
  docs/twins.md §4), and a non-empty `properties` list.
- A property has `name` (identifier), `type` (int, float, bool, string, enum, object), and per
  type: `unit`, `min`, `max` (numbers); `maxLength` (string); `values` (enum); `properties`
  (object). Every property may have `description`, `access` (read-only | read-write, default
  read-only) and `kind` (telemetry | state, default state). Telemetry is measured, so a
  read-write property must be of kind state.
- Unknown fields are errors, so a typo (`mxa: 5`) never silently drops a constraint.
- Parsing collects every problem and raises one `ModelError` naming each path and reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

import yaml

from device_models._errors import ModelError, Problem, Problems, ValidationError
from device_models._json import (
    INT_MAX,
    INT_MIN,
    MAX_STRING_LENGTH,
    JsonObject,
    JsonValue,
    checked_object,
    index_path,
    join_path,
    type_name,
)

__all__ = [
    "API_VERSION",
    "MAX_ENUM_VALUES",
    "MAX_MODEL_DEPTH",
    "MAX_MODEL_YAML_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_PROPERTIES",
    "MAX_PROTOCOL_SETTINGS",
    "Access",
    "DeviceModel",
    "Kind",
    "PropertySpec",
    "PropertyType",
]

API_VERSION = "edgefleet.io/v1"
MODEL_KIND = "DeviceModel"

# Models are written by people and shipped to every edge node: keep them small and shallow.
MAX_MODEL_YAML_BYTES = 64 * 1024
MAX_PROPERTIES = 256  # all levels together
MAX_MODEL_DEPTH = 5  # object properties nested in object properties; the twin allows 10 levels
MAX_NAME_LENGTH = 64
MAX_ENUM_VALUES = 64
MAX_PROTOCOL_SETTINGS = 32
MAX_DESCRIPTION_LENGTH = 1024
MAX_UNIT_LENGTH = 32
MAX_SETTING_STRING_LENGTH = 256
# YAML nesting is checked on tokens before composing: PyYAML's composer recurses per level.
MAX_YAML_NESTING = 64

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_VERSION = re.compile(r"[0-9]+(\.[0-9]+){0,2}([-+][0-9A-Za-z.-]+)?")

Scalar = str | int | float | bool


class PropertyType(StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STRING = "string"
    ENUM = "enum"
    OBJECT = "object"


class Access(StrEnum):
    READ_ONLY = "read-only"
    READ_WRITE = "read-write"


class Kind(StrEnum):
    TELEMETRY = "telemetry"
    STATE = "state"


@dataclass(frozen=True, kw_only=True, slots=True)
class PropertySpec:
    """One property of a device model (YAML keys in brackets where they differ)."""

    name: str
    type: PropertyType
    description: str = ""
    unit: str | None = None
    minimum: int | float | None = None  # [min] inclusive
    maximum: int | float | None = None  # [max] inclusive
    max_length: int | None = None  # [maxLength] characters; None means the twin's 4096
    values: tuple[str, ...] = ()  # enum members
    properties: tuple[PropertySpec, ...] = ()  # members of an object
    access: Access = Access.READ_ONLY
    kind: Kind = Kind.STATE

    def member(self, name: str) -> PropertySpec | None:
        return _find(self.properties, name)

    def to_dict(self) -> dict[str, object]:
        optional: dict[str, object] = {
            "description": self.description or None,
            "unit": self.unit,
            "min": self.minimum,
            "max": self.maximum,
            "maxLength": self.max_length,
            "values": list(self.values) or None,
            "properties": [member.to_dict() for member in self.properties] or None,
        }
        present = {key: value for key, value in optional.items() if value is not None}
        head = {"name": self.name, "type": str(self.type)}
        return {**head, **present, "access": str(self.access), "kind": str(self.kind)}


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceModel:
    """A parsed, valid device model. Build one with `from_yaml` or `from_dict`."""

    name: str
    version: str
    properties: tuple[PropertySpec, ...]
    description: str = ""
    protocol: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    local_control: bool = False  # [localControl] the edge may write desired while cut off

    @classmethod
    def from_yaml(cls, text: str | bytes) -> DeviceModel:
        """Parse YAML text (at most 64 KiB, safe_load only, no aliases)."""
        return cls.from_dict(_load_yaml(text))

    @classmethod
    def from_dict(cls, data: object) -> DeviceModel:
        """Validate a mapping (decoded YAML or JSON); raises ModelError with every problem."""
        problems = Problems()
        model = _ModelParser(problems).parse(data)
        problems.raise_if_any(ModelError, "invalid device model")
        return model

    def property(self, name: str) -> PropertySpec | None:
        return _find(self.properties, name)

    def validate_reported(self, patch: object) -> JsonObject:
        """Check a reported merge patch (any property, null deletes); returns a copy."""
        return self._validate(patch, desired=False)

    def validate_desired(self, patch: object) -> JsonObject:
        """Check a desired merge patch: only read-write properties; returns a copy."""
        return self._validate(patch, desired=True)

    def to_dict(self) -> dict[str, object]:
        """The model as a plain mapping that `from_dict` accepts (defaults written out).

        ``localControl`` is written only when true: an agent of an older release refuses a
        model with a field it does not know, and a model without the option means the same
        to it.
        """
        local: dict[str, object] = {"localControl": True} if self.local_control else {}
        return {
            "apiVersion": API_VERSION,
            "kind": MODEL_KIND,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "protocol": dict(self.protocol),
            **local,
            "properties": [spec.to_dict() for spec in self.properties],
        }

    def _validate(self, patch: object, *, desired: bool) -> JsonObject:
        problems = Problems()
        checked = checked_object(patch, path="", problems=problems, allow_null_members=True)
        if not problems:
            checker = _ValueChecker(problems, model=self.name, desired=desired)
            checker.members(self.properties, checked, "")
        section = "desired" if desired else "reported"
        problems.raise_if_any(ValidationError, f"{section} patch does not fit model {self.name}")
        return checked


def _find(specs: tuple[PropertySpec, ...], name: str) -> PropertySpec | None:
    return next((spec for spec in specs if spec.name == name), None)


# ---------------------------------------------------------------------------------- YAML


def _load_yaml(text: str | bytes) -> object:
    if not isinstance(text, str | bytes):
        raise ModelError("invalid device model", _one("", "YAML must be str or bytes"))
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_MODEL_YAML_BYTES:
        reason = f"YAML text is {size} bytes, more than {MAX_MODEL_YAML_BYTES}"
        raise ModelError("invalid device model", _one("", reason))
    try:
        _check_tokens(text)
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ModelError("invalid device model", _one("", f"not valid YAML: {error}")) from None
    except UnicodeError as error:  # PyYAML decodes bytes itself
        raise ModelError("invalid device model", _one("", f"not valid text: {error}")) from None


def _check_tokens(text: str | bytes) -> None:
    """Refuse aliases (no billion-laughs expansion) and deep nesting before composing."""
    nesting = 0
    opening = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken)
    flow_opening = (yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)
    closing = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, yaml.AliasToken):
            raise yaml.YAMLError("aliases (*name) are not allowed in device models")
        if isinstance(token, opening + flow_opening):
            nesting += 1
            if nesting > MAX_YAML_NESTING:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_NESTING} levels")
        elif isinstance(token, closing):
            nesting -= 1


def _one(path: str, reason: str) -> tuple[Problem, ...]:
    return (Problem(path=path, reason=reason),)


# -------------------------------------------------------------------------------- parsing

_TOP_FIELDS = (
    "apiVersion",
    "kind",
    "name",
    "version",
    "description",
    "protocol",
    "localControl",
    "properties",
)
_COMMON_FIELDS = frozenset({"name", "type", "description", "access", "kind"})
_E = TypeVar("_E", bound=StrEnum)
_NUMBER_TYPES = (PropertyType.INT, PropertyType.FLOAT)
# Which optional fields each type may carry; anything else on a property is an error.
_TYPE_FIELDS: Mapping[PropertyType, frozenset[str]] = MappingProxyType(
    {
        PropertyType.INT: frozenset({"unit", "min", "max"}),
        PropertyType.FLOAT: frozenset({"unit", "min", "max"}),
        PropertyType.BOOL: frozenset(),
        PropertyType.STRING: frozenset({"maxLength"}),
        PropertyType.ENUM: frozenset({"values"}),
        PropertyType.OBJECT: frozenset({"properties"}),
    }
)
_TYPED_FIELDS = frozenset().union(*_TYPE_FIELDS.values())


def _show(value: object) -> str:
    """A short rendering of an offending value for an error message."""
    if isinstance(value, str):
        return repr(value[:40] + "..." if len(value) > 40 else value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return type_name(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _ModelParser:
    """Walks a decoded model, recording every problem; the result is used only if none."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.count = 0  # properties seen so far, all levels

    def parse(self, data: object) -> DeviceModel:
        if not isinstance(data, dict):
            self.problems.add("", f"a device model must be a mapping (got {type_name(data)})")
            return DeviceModel(name="", version="", properties=())
        self._unknown_fields(data, "", frozenset(_TOP_FIELDS))
        self._constant(data, "apiVersion", API_VERSION)
        self._constant(data, "kind", MODEL_KIND)
        return DeviceModel(
            name=self._model_name(data),
            version=self._version(data),
            description=self._text(data, "", "description", MAX_DESCRIPTION_LENGTH),
            protocol=self._protocol(data.get("protocol", {})),
            local_control=self._flag(data, "localControl"),
            properties=self._property_list(data.get("properties"), "properties", depth=1),
        )

    # ---- header

    def _unknown_fields(
        self,
        data: dict[object, object],
        path: str,
        allowed: frozenset[str],
        *,
        reported_elsewhere: frozenset[str] = frozenset(),
    ) -> None:
        for key in data:
            if key not in allowed and key not in reported_elsewhere:
                expected = ", ".join(sorted(allowed))
                self.problems.add(join_path(path, str(key)), f"unknown field (expected {expected})")

    def _constant(self, data: dict[object, object], key: str, expected: str) -> None:
        value = data.get(key)
        if value != expected:
            got = "missing" if value is None else f"got {_show(value)}"
            self.problems.add(key, f"must be {expected!r} ({got})")

    def _model_name(self, data: dict[object, object]) -> str:
        name = data.get("name")
        if isinstance(name, str) and len(name) <= 63 and _DNS_LABEL.fullmatch(name):
            return name
        reason = "must be a DNS label: lowercase letters, digits and '-', at most 63 characters"
        self.problems.add("name", f"{reason} (got {_show(name)})")
        return ""

    def _version(self, data: dict[object, object]) -> str:
        version = data.get("version")
        if isinstance(version, str) and len(version) <= 32 and _VERSION.fullmatch(version):
            return version
        if isinstance(version, str):
            reason = f"must look like 1, 1.2 or 1.2.3 (got {_show(version)})"
        else:
            reason = f'must be a string such as "1.0.0", quoted in YAML (got {_show(version)})'
        self.problems.add("version", reason)
        return ""

    def _text(self, data: dict[object, object], path: str, key: str, limit: int) -> str:
        value = data.get(key, "")
        if isinstance(value, str) and len(value) <= limit:
            return value
        self.problems.add(join_path(path, key), f"must be a string of at most {limit} characters")
        return ""

    def _flag(self, data: dict[object, object], key: str) -> bool:
        value = data.get(key, False)
        if isinstance(value, bool):
            return value
        self.problems.add(key, f"must be true or false (got {_show(value)})")
        return False

    def _protocol(self, raw: object) -> Mapping[str, Scalar]:
        if not isinstance(raw, dict):
            self.problems.add("protocol", f"must be a mapping of settings (got {type_name(raw)})")
            return MappingProxyType({})
        if len(raw) > MAX_PROTOCOL_SETTINGS:
            self.problems.add("protocol", f"more than {MAX_PROTOCOL_SETTINGS} settings")
            return MappingProxyType({})
        settings: dict[str, Scalar] = {}
        for key, value in raw.items():
            path = join_path("protocol", str(key))
            if not isinstance(key, str) or not self._identifier_ok(key):
                self.problems.add(path, _identifier_reason(key))
                continue
            setting = self._setting(value, path)
            if setting is not None:
                settings[key] = setting
        return MappingProxyType(settings)

    def _setting(self, value: object, path: str) -> Scalar | None:
        if isinstance(value, str):
            ok = len(value) <= MAX_SETTING_STRING_LENGTH
            reason = f"strings are at most {MAX_SETTING_STRING_LENGTH} characters"
        elif isinstance(value, bool):
            return value
        elif isinstance(value, int):
            ok, reason = INT_MIN <= value <= INT_MAX, "integer out of the 64-bit range"
        elif isinstance(value, float):
            ok, reason = math.isfinite(value), "numbers must be finite"
        else:
            self._bad_setting(path, value)
            return None
        if not ok:
            self.problems.add(path, reason)
            return None
        return value

    def _bad_setting(self, path: str, value: object) -> None:
        reason = f"settings are strings, numbers or booleans (got {_show(value)})"
        self.problems.add(path, reason)

    @staticmethod
    def _identifier_ok(name: object) -> bool:
        return (
            isinstance(name, str)
            and len(name) <= MAX_NAME_LENGTH
            and _IDENTIFIER.fullmatch(name) is not None
        )

    # ---- properties

    def _property_list(self, raw: object, path: str, *, depth: int) -> tuple[PropertySpec, ...]:
        if not isinstance(raw, list) or not raw:
            got = "missing" if raw is None else f"got {_show(raw)}"
            self.problems.add(path, f"must be a non-empty list of properties ({got})")
            return ()
        specs: list[PropertySpec] = []
        first_seen: dict[str, int] = {}
        for position, item in enumerate(raw):
            if self.count >= MAX_PROPERTIES:
                self.problems.add(path, f"a model has at most {MAX_PROPERTIES} properties")
                break
            self.count += 1
            here = index_path(path, position)
            spec = self._property(item, here, depth=depth)
            if spec.name and spec.name in first_seen:
                also = index_path(path, first_seen[spec.name])
                self.problems.add(join_path(here, "name"), f"duplicate {spec.name!r} (see {also})")
            first_seen.setdefault(spec.name, position)
            specs.append(spec)
        return tuple(specs)

    def _property(self, raw: object, path: str, *, depth: int) -> PropertySpec:
        if not isinstance(raw, dict):
            self.problems.add(path, f"a property must be a mapping (got {type_name(raw)})")
            return PropertySpec(name="", type=PropertyType.STRING)
        name = raw.get("name")
        if not self._identifier_ok(name):
            self.problems.add(join_path(path, "name"), _identifier_reason(name))
        ptype = self._choice(raw, path, "type", PropertyType, default=None)
        typed = _TYPE_FIELDS[ptype] if ptype is not None else frozenset()
        # A typed field on the wrong type gets its own message from _type_fields.
        self._unknown_fields(raw, path, _COMMON_FIELDS | typed, reported_elsewhere=_TYPED_FIELDS)
        self._type_fields(raw, path, ptype)
        access = self._choice(raw, path, "access", Access, default=Access.READ_ONLY)
        kind = self._choice(raw, path, "kind", Kind, default=Kind.STATE)
        if access is Access.READ_WRITE and kind is Kind.TELEMETRY:
            reason = "a read-write property must be of kind state (telemetry is measured, not set)"
            self.problems.add(join_path(path, "kind"), reason)
        minimum, maximum = self._bounds(raw, path, ptype)
        return PropertySpec(
            name=name if isinstance(name, str) else "",
            type=ptype or PropertyType.STRING,
            description=self._text(raw, path, "description", MAX_DESCRIPTION_LENGTH),
            unit=self._unit(raw, path, ptype),
            minimum=minimum,
            maximum=maximum,
            max_length=self._max_length(raw, path, ptype),
            values=self._enum_values(raw, path, ptype),
            properties=self._members(raw, path, ptype, depth),
            access=access or Access.READ_ONLY,
            kind=kind or Kind.STATE,
        )

    def _choice(
        self,
        raw: dict[object, object],
        path: str,
        key: str,
        choices: type[_E],
        *,
        default: _E | None,
    ) -> _E | None:
        value = raw.get(key)
        if value is None and default is not None:
            return default
        for choice in choices:
            if value == choice.value:
                return choice
        expected = ", ".join(choice.value for choice in choices)
        got = "missing" if value is None else f"got {_show(value)}"
        self.problems.add(join_path(path, key), f"must be one of {expected} ({got})")
        return None

    def _type_fields(
        self, raw: dict[object, object], path: str, ptype: PropertyType | None
    ) -> None:
        if ptype is None:
            return
        for key in raw:
            if key in _TYPED_FIELDS and key not in _TYPE_FIELDS[ptype]:
                owners = [str(t) for t, fields in _TYPE_FIELDS.items() if key in fields]
                reason = f"only {' and '.join(owners)} properties have {key} (this is {ptype})"
                self.problems.add(join_path(path, str(key)), reason)

    def _unit(self, raw: dict[object, object], path: str, ptype: PropertyType | None) -> str | None:
        if ptype not in _NUMBER_TYPES or "unit" not in raw:
            return None
        unit = raw["unit"]
        if isinstance(unit, str) and 0 < len(unit) <= MAX_UNIT_LENGTH:
            return unit
        reason = f"must be a string of 1 to {MAX_UNIT_LENGTH} characters (got {_show(unit)})"
        self.problems.add(join_path(path, "unit"), reason)
        return None

    def _bounds(
        self, raw: dict[object, object], path: str, ptype: PropertyType | None
    ) -> tuple[int | float | None, int | float | None]:
        if ptype not in _NUMBER_TYPES:
            return None, None
        minimum = self._bound(raw, path, "min", ptype)
        maximum = self._bound(raw, path, "max", ptype)
        if minimum is not None and maximum is not None and minimum > maximum:
            reason = f"must be <= max (got {minimum} > {maximum})"
            self.problems.add(join_path(path, "min"), reason)
        return minimum, maximum

    def _bound(
        self, raw: dict[object, object], path: str, key: str, ptype: PropertyType | None
    ) -> int | float | None:
        if key not in raw:
            return None
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            reason = f"must be a number (got {_show(value)})"
        elif ptype is PropertyType.INT and not isinstance(value, int):
            reason = f"must be an integer for an int property (got {_show(value)})"
        elif isinstance(value, float) and not math.isfinite(value):
            reason = "must be finite"
        elif isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            reason = "integer out of the 64-bit range"
        else:
            return value
        self.problems.add(join_path(path, key), reason)
        return None

    def _max_length(
        self, raw: dict[object, object], path: str, ptype: PropertyType | None
    ) -> int | None:
        if ptype is not PropertyType.STRING or "maxLength" not in raw:
            return None
        value = raw["maxLength"]
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 1 <= value <= MAX_STRING_LENGTH
        ):
            return value
        reason = f"must be an integer from 1 to {MAX_STRING_LENGTH} (got {_show(value)})"
        self.problems.add(join_path(path, "maxLength"), reason)
        return None

    def _enum_values(
        self, raw: dict[object, object], path: str, ptype: PropertyType | None
    ) -> tuple[str, ...]:
        if ptype is not PropertyType.ENUM:
            return ()
        here = join_path(path, "values")
        values = raw.get("values")
        if not isinstance(values, list) or not 0 < len(values) <= MAX_ENUM_VALUES:
            reason = f"an enum needs a list of 1 to {MAX_ENUM_VALUES} strings (got {_show(values)})"
            self.problems.add(here, reason)
            return ()
        for position, value in enumerate(values):
            if not (isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH):
                reason = f"must be a string of 1 to {MAX_NAME_LENGTH} characters"
                self.problems.add(index_path(here, position), f"{reason} (got {_show(value)})")
            elif values.index(value) != position:
                self.problems.add(index_path(here, position), f"duplicate value {value!r}")
        return tuple(value for value in values if isinstance(value, str))

    def _members(
        self, raw: dict[object, object], path: str, ptype: PropertyType | None, depth: int
    ) -> tuple[PropertySpec, ...]:
        if ptype is not PropertyType.OBJECT:
            return ()
        here = join_path(path, "properties")
        if depth >= MAX_MODEL_DEPTH:
            self.problems.add(here, f"objects nest at most {MAX_MODEL_DEPTH} levels deep")
            return ()
        return self._property_list(raw.get("properties"), here, depth=depth + 1)


def _identifier_reason(name: object) -> str:
    return (
        "must be an identifier (letters, digits, '_', not starting with a digit) of at most "
        f"{MAX_NAME_LENGTH} characters (got {_show(name)})"
    )


# ------------------------------------------------------------------------------- values


class _ValueChecker:
    """Checks a merge patch against property specs; null members delete and are allowed."""

    def __init__(self, problems: Problems, *, model: str, desired: bool) -> None:
        self.problems = problems
        self.model = model
        self.desired = desired

    def members(
        self, specs: tuple[PropertySpec, ...], patch: dict[str, JsonValue], path: str
    ) -> None:
        for key, value in patch.items():
            here = join_path(path, key)
            spec = _find(specs, key)
            if spec is None:
                known = ", ".join(spec.name for spec in specs)
                self.problems.add(here, f"unknown property (model {self.model} has: {known})")
            elif self.desired and spec.access is not Access.READ_WRITE:
                self.problems.add(here, "read-only: desired may only set read-write properties")
            elif value is not None:
                self.value(spec, value, here)

    def value(self, spec: PropertySpec, value: JsonValue, path: str) -> None:
        if spec.type is PropertyType.OBJECT and isinstance(value, dict):
            self.members(spec.properties, value, path)
            return
        reason = _VALUE_CHECKS[spec.type](spec, value)
        if reason is not None:
            self.problems.add(path, reason)


def _int_reason(spec: PropertySpec, value: JsonValue) -> str | None:
    # bool is an int subclass in Python but not a number in JSON; 1.0 is a float, not an int.
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an int (got {type_name(value)} {_show(value)})"
    return _range_reason(spec, value)


def _float_reason(spec: PropertySpec, value: JsonValue) -> str | None:
    # An int is a fine float: JSON does not tell 21 from 21.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number (got {type_name(value)} {_show(value)})"
    return _range_reason(spec, value)


def _range_reason(spec: PropertySpec, value: float) -> str | None:
    if spec.minimum is not None and value < spec.minimum:
        return f"must be >= {spec.minimum} (got {value})"
    if spec.maximum is not None and value > spec.maximum:
        return f"must be <= {spec.maximum} (got {value})"
    return None


def _bool_reason(_spec: PropertySpec, value: JsonValue) -> str | None:
    if isinstance(value, bool):
        return None
    return f"must be a bool (got {type_name(value)} {_show(value)})"


def _string_reason(spec: PropertySpec, value: JsonValue) -> str | None:
    if not isinstance(value, str):
        return f"must be a string (got {type_name(value)})"
    limit = spec.max_length or MAX_STRING_LENGTH
    if len(value) > limit:
        return f"must be at most {limit} characters (got {len(value)})"
    return None


def _enum_reason(spec: PropertySpec, value: JsonValue) -> str | None:
    if isinstance(value, str) and value in spec.values:
        return None
    expected = ", ".join(repr(member) for member in spec.values)
    return f"must be one of {expected} (got {_show(value)})"


def _object_reason(_spec: PropertySpec, value: JsonValue) -> str | None:
    return None if isinstance(value, dict) else f"must be an object (got {type_name(value)})"


# Why a value does not fit a property of each type, or None if it fits.
_VALUE_CHECKS: Mapping[PropertyType, Callable[[PropertySpec, JsonValue], str | None]] = (
    MappingProxyType(
        {
            PropertyType.INT: _int_reason,
            PropertyType.FLOAT: _float_reason,
            PropertyType.BOOL: _bool_reason,
            PropertyType.STRING: _string_reason,
            PropertyType.ENUM: _enum_reason,
            PropertyType.OBJECT: _object_reason,
        }
    )
)

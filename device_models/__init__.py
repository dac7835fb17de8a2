"""Device model schema and validation, twin documents (pure: no I/O).

- `DeviceModel.from_yaml` / `from_dict` parse a device model; `validate_reported` and
  `validate_desired` check twin patches against it. `builtin_model(name)` gives the built-ins.
- `ModelRegistry` holds the models by name: the built-ins plus models parsed from YAML files
  that the caller has read (`ModelRegistry.from_yaml_files`).
- `Twin` is the twin document: desired and reported sections with `$version` and `$metadata`,
  RFC 7386 merge patches, `delta()`, limits of 32 KB and 10 levels per section.
- `Replica`, `TwinChange`, `write_change` and `apply_change` keep the edge's and the cloud's
  copies equal across outages, applying each change exactly once.
- Every error is a `DeviceModelsError` carrying the `Problem`s found (path and reason).

docs/device-models.md describes the formats and rules.
"""

from device_models._builtin import BUILTIN_MODEL_YAML, builtin_model, builtin_models
from device_models._errors import (
    DeviceModelsError,
    DocumentError,
    LimitExceededError,
    ModelError,
    Problem,
    SequenceGapError,
    ValidationError,
    VersionConflictError,
)
from device_models._json import (
    MAX_DEPTH,
    MAX_KEY_LENGTH,
    MAX_SECTION_BYTES,
    MAX_STRING_LENGTH,
    JsonObject,
    JsonValue,
    compact_size,
    diff,
    json_equal,
    merge_patch,
    nesting_depth,
    reject_constant,
)
from device_models._model import (
    API_VERSION,
    MAX_MODEL_DEPTH,
    MAX_MODEL_YAML_BYTES,
    MAX_PROPERTIES,
    Access,
    DeviceModel,
    Kind,
    PropertySpec,
    PropertyType,
)
from device_models._registry import ModelRegistry
from device_models._sync import (
    AUTHORITY,
    MAX_ORIGINS,
    MAX_PENDING_KEYS,
    ChangeResult,
    Replica,
    Role,
    TwinChange,
    apply_change,
    write_change,
)
from device_models._twin import Section, Twin, TwinSection
from device_models._versions import is_newer, version_key

__all__ = [
    "API_VERSION",
    "AUTHORITY",
    "BUILTIN_MODEL_YAML",
    "MAX_DEPTH",
    "MAX_KEY_LENGTH",
    "MAX_MODEL_DEPTH",
    "MAX_MODEL_YAML_BYTES",
    "MAX_ORIGINS",
    "MAX_PENDING_KEYS",
    "MAX_PROPERTIES",
    "MAX_SECTION_BYTES",
    "MAX_STRING_LENGTH",
    "Access",
    "ChangeResult",
    "DeviceModel",
    "DeviceModelsError",
    "DocumentError",
    "JsonObject",
    "JsonValue",
    "Kind",
    "LimitExceededError",
    "ModelError",
    "ModelRegistry",
    "Problem",
    "PropertySpec",
    "PropertyType",
    "Replica",
    "Role",
    "Section",
    "SequenceGapError",
    "Twin",
    "TwinChange",
    "TwinSection",
    "ValidationError",
    "VersionConflictError",
    "apply_change",
    "builtin_model",
    "builtin_models",
    "compact_size",
    "diff",
    "is_newer",
    "json_equal",
    "merge_patch",
    "nesting_depth",
    "reject_constant",
    "version_key",
    "write_change",
]

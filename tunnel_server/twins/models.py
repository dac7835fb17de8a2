"""Device models the cloud validates against: the built-ins plus ``*.yaml`` files in a folder."""

from __future__ import annotations

import logging
from pathlib import Path

from device_models import MAX_MODEL_YAML_BYTES, DeviceModel, DeviceModelsError, builtin_models

__all__ = ["ModelRegistry"]

log = logging.getLogger("tunnel_server.twins.models")


class ModelRegistry:
    """Models by name. A folder model may not replace a built-in one (names are global)."""

    def __init__(self, models: dict[str, DeviceModel]) -> None:
        self._models = dict(models)

    @classmethod
    def load(cls, folder: Path | None) -> ModelRegistry:
        """Built-ins plus ``folder/*.yaml``; a bad file is logged and skipped, never fatal."""
        models = builtin_models()
        if folder is None or not folder.is_dir():
            return cls(models)
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            model = _read(path)
            if model is None:
                continue
            if model.name in models:
                log.error("model %s in %s: the name is already taken; skipped", model.name, path)
                continue
            models[model.name] = model
            log.info("loaded device model %s %s from %s", model.name, model.version, path)
        return cls(models)

    def get(self, name: str) -> DeviceModel | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)


def _read(path: Path) -> DeviceModel | None:
    try:
        if path.stat().st_size > MAX_MODEL_YAML_BYTES:
            log.error("model file %s is larger than %s bytes; skipped", path, MAX_MODEL_YAML_BYTES)
            return None
        return DeviceModel.from_yaml(path.read_bytes())
    except OSError as error:
        log.error("cannot read model file %s: %s", path, error)  # noqa: TRY400 - no traceback needed
    except DeviceModelsError as error:
        log.error("invalid model file %s: %s", path, error)  # noqa: TRY400 - the message says it all
    return None

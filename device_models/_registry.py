"""The model registry: the built-in device models plus models parsed from YAML files.

Pure like the rest of this package: it never lists a folder nor opens a file. The caller reads
the files and hands over ``(file name, contents)`` pairs; a lazy iterable keeps the caller's
read errors and this module's log lines in file order. The logger is the caller's, so each
program logs under its own name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from device_models._builtin import builtin_models
from device_models._errors import DeviceModelsError
from device_models._model import DeviceModel
from device_models._versions import is_newer

__all__ = ["ModelRegistry"]

_log = logging.getLogger("device_models")


class ModelRegistry:
    """Models by name. A file model may not replace a built-in one (names are global).

    ``offer`` lets a higher version of a name replace any model of it.
    """

    def __init__(self, models: Mapping[str, DeviceModel]) -> None:
        self._models = dict(models)

    @classmethod
    def from_yaml_files(
        cls, files: Iterable[tuple[str, str | bytes]], *, log: logging.Logger = _log
    ) -> ModelRegistry:
        """Built-ins plus one model per file; a bad file is logged and skipped, never fatal.

        Files are taken in the order given: of two with the same model name, the first wins.
        """
        models = builtin_models()
        for name, text in files:
            try:
                model = DeviceModel.from_yaml(text)
            except DeviceModelsError as exc:
                log.error("invalid model file %s: %s", name, exc)  # noqa: TRY400 - the message says it all
                continue
            if model.name in models:
                log.error("model %s in %s: the name is already taken; skipped", model.name, name)
                continue
            models[model.name] = model
            log.info("loaded device model %s %s from %s", model.name, model.version, name)
        return cls(models)

    def offer(self, model: DeviceModel) -> bool:
        """Take ``model`` if its name is new or its version is higher than the one held.

        This is how a newer version reaches a running program (uploaded in the cloud, received
        by an agent): a higher version replaces any model of the name, a built-in too; an equal
        or lower one is ignored (False). Holders of this registry see the change at once.
        """
        held = self._models.get(model.name)
        if held is not None and not is_newer(model.version, held.version):
            return False
        self._models[model.name] = model
        return True

    def get(self, name: str) -> DeviceModel | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

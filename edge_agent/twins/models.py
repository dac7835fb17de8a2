"""The agent's device models: built-ins, the ``*.yaml`` of a folder, and those the cloud sent.

Received models (``ReceivedModels``) live in their own folder, ``<data dir>/twins/models``,
written by the agent only (never the operator's ``models_dir``): one ``<name>.yaml`` per model,
replaced atomically. At start they are offered to the registry after the built-ins and the
operator's folder, so the highest version of each name wins; at run time a received model is
stored first and then offered, so onboarding and twin validation use it at once, and after a
restart too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from daemon_support import model_folder
from daemon_support.files import write_atomic
from device_models import (
    MAX_MODEL_YAML_BYTES,
    DeviceModel,
    DeviceModelsError,
    ModelRegistry,
    is_newer,
)
from device_models.model_wire import render_yaml

__all__ = ["MAX_RECEIVED", "ReceivedModels", "load_models"]

log = logging.getLogger("edge_agent.twins.models")

MAX_RECEIVED = 256
"""Models kept from the cloud (at most 64 KiB of YAML each): 16 MiB of disk at most."""


def load_models(folder: Path | None) -> ModelRegistry:
    """Built-ins plus ``folder/*.yaml``; a bad file is logged and skipped, never fatal."""
    return model_folder.load_models(folder, log=log)


class ReceivedModels:
    """The models the cloud sent, on disk, and the registry they are offered to."""

    def __init__(self, *, folder: Path, registry: ModelRegistry, limit: int = MAX_RECEIVED) -> None:
        self.folder = folder
        self.registry = registry
        self.limit = limit

    def load(self) -> int:
        """Offer every stored model to the registry; the number taken. Bad files are skipped."""
        taken = 0
        for path in sorted(self.folder.glob("*.yaml")) if self.folder.is_dir() else ():
            try:
                if path.stat().st_size > MAX_MODEL_YAML_BYTES:
                    log.error(
                        "received model file %s is over %s bytes; skipped",
                        path,
                        MAX_MODEL_YAML_BYTES,
                    )
                    continue
                model = DeviceModel.from_yaml(path.read_bytes())
            except OSError as error:
                log.error("cannot read received model file %s: %s", path, error)  # noqa: TRY400
                continue
            except DeviceModelsError as error:
                log.error("invalid received model file %s: %s", path, error)  # noqa: TRY400
                continue
            if self.registry.offer(model):
                taken += 1
                log.info("loaded device model %s %s from the cloud", model.name, model.version)
        return taken

    def have(self) -> dict[str, str]:
        """Every model the agent holds, name -> version (for the hello)."""
        out = {}
        for name in self.registry.names():
            model = self.registry.get(name)
            if model is not None:
                out[name] = model.version
        return out

    def receive(self, model: DeviceModel) -> tuple[str, str | None]:
        """Store and use a model from the cloud: ``("stored" | "kept" | "refused", reason)``.

        The model was validated by the wire parser. Stored first, then offered, so a model in
        use is always on disk. OSError from the disk propagates (the stream ends; the cloud
        sends the model again on the next hello).
        """
        held = self.registry.get(model.name)
        if held is not None and not is_newer(model.version, held.version):
            return "kept", None
        path = self.folder / f"{model.name}.yaml"
        if not path.exists() and self._count() >= self.limit:
            reason = f"the agent holds {self.limit} models from the cloud already (the bound)"
            log.error("device model %s %s refused: %s", model.name, model.version, reason)
            return "refused", reason
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, render_yaml(model).encode(), mode=0o644)
        self.registry.offer(model)
        log.info("device model %s %s received from the cloud and in use", model.name, model.version)
        return "stored", None

    def _count(self) -> int:
        if not self.folder.is_dir():
            return 0
        return sum(1 for _ in self.folder.glob("*.yaml"))

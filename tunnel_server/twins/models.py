"""Device models the cloud validates against: the built-ins plus ``*.yaml`` files in a folder."""

from __future__ import annotations

import logging
from pathlib import Path

from daemon_support import model_folder
from device_models import ModelRegistry

__all__ = ["load_models"]

log = logging.getLogger("tunnel_server.twins.models")


def load_models(folder: Path | None) -> ModelRegistry:
    """Built-ins plus ``folder/*.yaml``; a bad file is logged and skipped, never fatal."""
    return model_folder.load_models(folder, log=log)

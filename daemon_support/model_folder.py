"""Device models for a daemon: the built-ins plus the ``*.yaml`` files found in a folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from device_models import MAX_MODEL_YAML_BYTES, ModelRegistry

__all__ = ["load_models"]


def load_models(folder: Path | None, *, log: logging.Logger) -> ModelRegistry:
    """Built-ins plus ``folder/*.yaml``; a bad file is logged on ``log`` and skipped."""
    return ModelRegistry.from_yaml_files(_read_folder(folder, log), log=log)


def _read_folder(folder: Path | None, log: logging.Logger) -> Iterator[tuple[str, bytes]]:
    """Each model file's name and contents, lazily, so the log stays in file order."""
    if folder is None or not folder.is_dir():
        return
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            if path.stat().st_size > MAX_MODEL_YAML_BYTES:
                log.error(
                    "model file %s is larger than %s bytes; skipped", path, MAX_MODEL_YAML_BYTES
                )
                continue
            text = path.read_bytes()
        except OSError as exc:
            log.error("cannot read model file %s: %s", path, exc)  # noqa: TRY400 - no traceback needed
            continue
        yield str(path), text

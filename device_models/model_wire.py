"""The ``models`` stream: how the cloud hands device models to agents, sans-IO.

One stream per tunnel session, opened by the agent to the cloud's ``models`` target; framing is
the twin sync's (`device_models.sync_wire`: 4-byte length, a JSON object with a ``type``).

1. edge → cloud ``{"type": "hello", "version": 1, "have": {name: version, ...}}``: every model
   the agent holds (built-ins included), at most ``MAX_HAVE`` entries.
2. cloud → edge ``{"type": "model", "model": <DeviceModel.to_dict()>}`` for every model the
   cloud holds at a higher version than ``have`` says (or that the agent lacks), then one for
   each later upload, for as long as the stream lives.
3. edge → cloud ``{"type": "ack", "name", "version", "result": "stored" | "kept" | "refused",
   "reason"?}``: stored (it is the agent's model of that name now), kept (the agent has that
   version or a higher one), refused (invalid or over a bound; the reason says which).

Every model is validated on arrival (`DeviceModel.from_dict`) and must render to at most
``MAX_MODEL_YAML_BYTES`` of YAML, the size the agent's loader reads back. A model message is at
most ``MAX_MESSAGE_BYTES``. Anything else is a `WireError`: the receiver resets the stream.
"""

from __future__ import annotations

from typing import Any

import yaml

from device_models._errors import ModelError, Problem
from device_models._model import MAX_MODEL_YAML_BYTES, DeviceModel
from device_models._versions import version_key
from device_models.sync_wire import WireError

__all__ = [
    "MAX_HAVE",
    "MAX_MESSAGE_BYTES",
    "MAX_REASON",
    "MODELS_TARGET",
    "PROTOCOL_VERSION",
    "RESULTS",
    "ack",
    "hello",
    "model_message",
    "parse_ack",
    "parse_hello",
    "parse_model",
    "render_yaml",
]

MODELS_TARGET = "models"
PROTOCOL_VERSION = 1
MAX_HAVE = 1024
"""Models an agent may name in its hello (256 properties each; far more than a node needs)."""
MAX_MESSAGE_BYTES = 4 * MAX_MODEL_YAML_BYTES
"""A model as compact JSON is smaller than its YAML; 256 KiB leaves room for escapes."""
MAX_DEPTH = 24
MAX_REASON = 512
RESULTS = ("stored", "kept", "refused")


def render_yaml(model: DeviceModel) -> str:
    """The model's YAML file text (``DeviceModel.from_yaml`` reads it back as the same model)."""
    return yaml.safe_dump(model.to_dict(), sort_keys=False, allow_unicode=True)


def hello(have: dict[str, str]) -> dict[str, Any]:
    return {"type": "hello", "version": PROTOCOL_VERSION, "have": dict(have)}


def parse_hello(message: dict[str, Any]) -> dict[str, str]:
    """The ``have`` map of a hello; WireError when it is not one."""
    if message.get("type") != "hello" or message.get("version") != PROTOCOL_VERSION:
        raise WireError(f'expected {{"type": "hello", "version": {PROTOCOL_VERSION}}} first')
    have = message.get("have")
    if not isinstance(have, dict) or len(have) > MAX_HAVE:
        raise WireError(f"hello.have must be an object of at most {MAX_HAVE} name: version")
    for name, version in have.items():
        if not isinstance(version, str) or len(name) > 63:
            raise WireError("hello.have maps model names to version strings")
        try:
            version_key(version)
        except ValueError as error:
            raise WireError(f"hello.have[{name[:63]!r}]: {error}") from None
    return have


def model_message(model: DeviceModel) -> dict[str, Any]:
    return {"type": "model", "model": model.to_dict()}


def parse_model(message: dict[str, Any]) -> DeviceModel:
    """The model of a ``model`` message; DeviceModelsError if invalid or too large once written.

    WireError when the message is not a ``model`` message at all.
    """
    if message.get("type") != "model" or not isinstance(message.get("model"), dict):
        raise WireError('expected {"type": "model", "model": {...}}')
    model = DeviceModel.from_dict(message["model"])
    size = len(render_yaml(model).encode())
    if size > MAX_MODEL_YAML_BYTES:
        # The agent stores models as YAML and reads them back under this bound.
        reason = f"renders to {size} bytes of YAML, more than {MAX_MODEL_YAML_BYTES}"
        raise ModelError("invalid device model", (Problem(path="", reason=reason),))
    return model


def ack(name: str, version: str, result: str, reason: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "ack", "name": name, "version": version, "result": result}
    if reason is not None:
        body["reason"] = reason[:MAX_REASON]
    return body


def parse_ack(message: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """``(name, version, result, reason)`` of an ack; WireError when it is not one."""
    name, version, result = message.get("name"), message.get("version"), message.get("result")
    reason = message.get("reason")
    if (
        message.get("type") != "ack"
        or not isinstance(name, str)
        or not isinstance(version, str)
        or result not in RESULTS
        or not (reason is None or isinstance(reason, str))
    ):
        raise WireError("expected an ack: name, version, result (stored, kept or refused)")
    return name[:63], version[:32], str(result), None if reason is None else reason[:MAX_REASON]

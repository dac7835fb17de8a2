"""The agent's config file (TOML): every key optional, unknown keys refused, values checked.

Example, with the defaults spelled out::

    data_dir = "/var/lib/edge-agent"

    [local_api]
    port = 10267

    [tunnel]
    backoff_cap = 60.0        # seconds
    drain_grace = 10.0        # seconds

    [tunnel.targets]          # what the cloud may reach through this node
    kubelet = "127.0.0.1:10250"
    web = "localhost:8080"
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from edge_agent.settings import AgentSettings, LocalApiSettings, TunnelClientSettings

MAX_CONFIG_BYTES = 256 * 1024
"""A config file is a few hundred bytes; anything this large is a mistake, not a config."""
MAX_TARGETS = 256
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class ConfigError(ValueError):
    """The config file is unusable; the message names the file, the key and the fix."""


def parse_address(value: str, *, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT such as 127.0.0.1:10250, got {value!r}")
    return host, int(port)


def _targets(raw: object, where: str) -> dict[str, tuple[str, int]]:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: expected a table of name = "host:port"')
    if len(raw) > MAX_TARGETS:
        raise ConfigError(f"{where}: at most {MAX_TARGETS} targets")
    out: dict[str, tuple[str, int]] = {}
    for name, value in raw.items():
        if not name or len(name) > 63 or not set(name) <= _NAME_CHARS:
            raise ConfigError(f"{where}.{name}: names use a-z 0-9 - _ . (at most 63)")
        if not isinstance(value, str):
            raise ConfigError(f'{where}.{name}: expected "host:port"')
        out[name] = parse_address(value, where=f"{where}.{name}")
    return out


def _fields(cls: type[Any], raw: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    values: dict[str, Any] = {}
    for name, given in raw.items():
        default = getattr(cls(), name)
        if isinstance(default, bool) or not isinstance(default, int | float | str | Path):
            raise ConfigError(f"{where}.{name}: not settable here")
        value = given
        if isinstance(default, float) and isinstance(given, int) and not isinstance(given, bool):
            value = float(given)
        if isinstance(default, Path) and isinstance(given, str):
            value = Path(given)
        if type(value) is not type(default):
            raise ConfigError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
        if isinstance(value, int | float) and value < 0:
            raise ConfigError(f"{where}.{name}: must not be negative")
        values[name] = value
    return values


def load(path: Path | None, *, overrides: dict[str, Any] | None = None) -> AgentSettings:
    """Settings from ``path`` (or defaults), then command-line ``overrides`` on top."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        try:
            raw = tomllib.loads(data.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
    where = str(path or "config")
    tunnel_raw = dict(raw.pop("tunnel", {}))
    targets = _targets(tunnel_raw.pop("targets", {}), f"{where}: tunnel.targets")
    tunnel = TunnelClientSettings(
        targets=targets, **_fields(TunnelClientSettings, tunnel_raw, f"{where}: [tunnel]")
    )
    local_api = LocalApiSettings(
        **_fields(LocalApiSettings, dict(raw.pop("local_api", {})), f"{where}: [local_api]")
    )
    top = _fields(AgentSettings, raw, where)
    top.update(overrides or {})
    return AgentSettings(tunnel=tunnel, local_api=local_api, **top)

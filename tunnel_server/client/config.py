"""The file ``tunnel-server login`` writes: server URL, its CA (PEM) and the token, 0600.

``$XDG_CONFIG_HOME/edgefleet/cli.yaml`` (default ``~/.config/edgefleet/cli.yaml``). It holds a
credential, so it is written owner-only, atomically, and read only if it is a small mapping.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunnel_server.client import exits

MAX_BYTES = 256 * 1024
"""A login config is a URL, one CA certificate and a token: a few KiB."""


def path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if Path(base).is_absolute() else Path.home() / ".config"
    return root / "edgefleet" / "cli.yaml"


@dataclass(frozen=True, kw_only=True)
class LoginConfig:
    server: str
    """``https://HOST[:PORT]`` of the API."""
    ca_pem: str
    """The server's CA certificate, checked against ``--ca-hash`` at login."""
    token: str
    """The admin token, a user token or an SSO session token."""


def load(file: Path | None = None) -> LoginConfig | None:
    """The saved login, or None when there is none; a broken file is a usage error (exit 2)."""
    where = file or path()
    try:
        with where.open("rb") as handle:
            text = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise exits.ClientError(f"cannot read {where}: {exc.strerror}", exits.USAGE) from None
    problem = f"{where} is no login config of `tunnel-server login`: log in again"
    if len(text) > MAX_BYTES:
        raise exits.ClientError(problem + " (it is too large)", exits.USAGE)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError):
        raise exits.ClientError(problem + " (not YAML)", exits.USAGE) from None
    fields = ("server", "ca", "token")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in fields):
        raise exits.ClientError(problem + " (server, ca and token are needed)", exits.USAGE)
    return LoginConfig(server=data["server"], ca_pem=data["ca"], token=data["token"])


def save(config: LoginConfig, file: Path | None = None) -> Path:
    """Write it owner-only (0600, its folder 0700), replacing any older login at once."""
    where = file or path()
    where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = yaml.safe_dump(
        {"server": config.server, "ca": config.ca_pem, "token": config.token}, sort_keys=False
    )
    descriptor, temporary = tempfile.mkstemp(dir=where.parent, prefix=".cli.", suffix=".yaml")
    try:
        with os.fdopen(descriptor, "w") as handle:  # mkstemp made it 0600
            handle.write(text)
        Path(temporary).replace(where)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temporary).unlink()
        raise
    return where


def remove(file: Path | None = None) -> bool:
    """Forget the login; False when there was none."""
    try:
        (file or path()).unlink()
    except FileNotFoundError:
        return False
    return True

"""A real mosquitto broker (Debian's package) on a free loopback port.

Two flavours: anonymous (for plain publish/subscribe tests) and dynamic security, where
clients need credentials and an admin manages clients, roles and ACLs through the
``$CONTROL/dynamic-security/v1`` topic, exactly as the agent's onboarding does in production.
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from tests.harness.procs import ManagedProcess, ServiceError, free_port, wait_port

MOSQUITTO = "/usr/sbin/mosquitto"
DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"


@dataclass(kw_only=True)
class Broker:
    host: str
    port: int
    workdir: Path
    admin_username: str | None
    admin_password: str | None
    process: ManagedProcess
    tls_context: ssl.SSLContext | None = None
    """Set when the listener speaks TLS (`run_config`): every `client` uses it."""

    @property
    def dynsec(self) -> bool:
        return self.admin_username is not None

    def client(self, **kwargs: Any) -> aiomqtt.Client:
        """An aiomqtt client for this broker (as admin when dynamic security is on)."""
        if self.dynsec:
            kwargs.setdefault("username", self.admin_username)
            kwargs.setdefault("password", self.admin_password)
        kwargs.setdefault("tls_context", self.tls_context)
        return aiomqtt.Client(self.host, self.port, **kwargs)

    async def dynsec_command(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one dynamic-security command as admin and return its response object."""
        async with self.client(identifier=f"harness-admin-{secrets.token_hex(4)}") as client:
            await client.subscribe(f"{CONTROL_TOPIC}/response")
            await client.publish(CONTROL_TOPIC, json.dumps({"commands": [command]}))
            async for message in client.messages:
                if not isinstance(message.payload, bytes | bytearray):
                    continue
                payload = json.loads(message.payload)
                response: dict[str, Any] = payload["responses"][0]
                if response.get("command") == command["command"]:
                    return response
        raise ServiceError("the broker closed the admin connection before answering")

    def stop(self) -> None:
        self.process.stop()


def _require_mosquitto(*, dynsec: bool) -> None:
    if not Path(MOSQUITTO).is_file():
        raise ServiceError(
            f"{MOSQUITTO} not found: install Debian's mosquitto package "
            "(scripts/test does: apt-get install mosquitto mosquitto-clients)"
        )
    if dynsec and (not DYNSEC_PLUGIN.is_file() or shutil.which("mosquitto_ctrl") is None):
        raise ServiceError(
            f"{DYNSEC_PLUGIN} or mosquitto_ctrl missing: install mosquitto and mosquitto-clients"
        )


def start(workdir: Path, *, dynsec: bool = False) -> Broker:
    """Start mosquitto with a generated config and wait until it accepts connections."""
    _require_mosquitto(dynsec=dynsec)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [
        f"listener {port} 127.0.0.1",
        "user root",  # the harness runs as root; do not drop to a user that cannot read tmp dirs
        "persistence false",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    admin_user = admin_password = None
    if dynsec:
        admin_user, admin_password = "admin", secrets.token_urlsafe(16)
        state = workdir / "dynamic-security.json"
        subprocess.run(
            ["mosquitto_ctrl", "dynsec", "init", str(state), admin_user, admin_password],
            check=True,
            capture_output=True,
        )
        lines += [
            "allow_anonymous false",
            f"plugin {DYNSEC_PLUGIN}",
            f"plugin_opt_config_file {state}",
        ]
    else:
        lines.append("allow_anonymous true")
    return run_config(
        workdir,
        "\n".join(lines) + "\n",
        port=port,
        admin_username=admin_user,
        admin_password=admin_password,
    )


def run_config(
    workdir: Path,
    config_text: str,
    *,
    port: int,
    admin_username: str | None,
    admin_password: str | None,
    tls_context: ssl.SSLContext | None = None,
) -> Broker:
    """Start mosquitto with this config text (listening on 127.0.0.1:`port`) and wait for it.

    For a config written elsewhere (docs/mqtt-broker.md's, in its test); `tls_context` is what
    clients of the returned broker use.
    """
    _require_mosquitto(dynsec=admin_username is not None)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "mosquitto.conf"
    config.write_text(config_text)
    process = ManagedProcess(
        "mosquitto", [MOSQUITTO, "-c", str(config)], log_path=workdir / "mosquitto.log"
    )
    try:
        wait_port("127.0.0.1", port, timeout=20.0, proc=process)
    except BaseException:
        process.stop()
        raise
    return Broker(
        host="127.0.0.1",
        port=port,
        workdir=workdir,
        admin_username=admin_username,
        admin_password=admin_password,
        process=process,
        tls_context=tls_context,
    )

"""A small admin client for mosquitto's dynamic-security plugin (``$CONTROL/dynamic-security/v1``).

Each call opens a short admin connection, sends one batch of commands and waits for the batch
of answers (the plugin answers a batch in order on ``.../response``). Onboarding is rare, so a
connection per call is simpler than a long-lived one and cannot go stale.

Only features of mosquitto 2.0 are used: in 2.0 the plugin does not substitute ``%c`` / ``%u`` in
ACL topics, so every device gets a role with its own literal topics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from edge_agent.twins import topics

__all__ = [
    "AGENT_ROLE",
    "CLAIM_ROLE",
    "DynsecClient",
    "DynsecError",
    "device_acls",
    "device_role",
    "device_username",
]

log = logging.getLogger("edge_agent.twins.dynsec")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CLAIM_ROLE = "edgefleet-claim"
AGENT_ROLE = "edgefleet-agent"
# Answers that mean "already as wanted" for idempotent setup and teardown.
_ALREADY = ("already exists", "not found")


class DynsecError(Exception):
    """The broker refused a command or did not answer."""


@dataclass(frozen=True, kw_only=True)
class Acl:
    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    def command(self, rolename: str) -> dict[str, Any]:
        return {
            "command": "addRoleACL",
            "rolename": rolename,
            "acltype": self.acltype,
            "topic": self.topic,
            "allow": self.allow,
            "priority": self.priority,
        }


def device_username(device_id: str) -> str:
    """A device's broker username; the prefix keeps device ids out of the admin's namespace."""
    return f"device:{device_id}"


def device_role(device_id: str) -> str:
    return f"device:{device_id}"


def device_acls(device_id: str) -> list[Acl]:
    """A device may publish its reports, read and subscribe to its own subtree, nothing else."""
    prefix = topics.device_prefix(device_id)
    sends = [
        Acl(acltype="publishClientSend", topic=topics.device_topic(device_id, op))
        for op in topics.DEVICE_PUBLISHES
    ]
    return [
        *sends,
        Acl(acltype="subscribePattern", topic=f"{prefix}/#"),
        Acl(acltype="publishClientReceive", topic=f"{prefix}/#", priority=1),
        Acl(acltype="publishClientReceive", topic="#", allow=False),
    ]


def claim_acls() -> list[Acl]:
    """The shared claim credential: send a claim request, read provisioning answers only."""
    return [
        Acl(acltype="publishClientSend", topic=topics.PROVISION_REQUEST),
        Acl(acltype="subscribePattern", topic=topics.PROVISION_RESPONSE_FILTER),
        Acl(acltype="publishClientReceive", topic=topics.PROVISION_RESPONSE_FILTER, priority=1),
        Acl(acltype="publishClientReceive", topic="#", allow=False),
    ]


def agent_acls() -> list[Acl]:
    root = f"{topics.ROOT}/#"
    return [
        Acl(acltype="publishClientSend", topic=root),
        Acl(acltype="subscribePattern", topic=root),
        Acl(acltype="publishClientReceive", topic=root),
    ]


class DynsecClient:
    def __init__(
        self, *, host: str, port: int, username: str, password: str, timeout: float
    ) -> None:
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._timeout = timeout

    async def execute(
        self, commands: list[dict[str, Any]], *, tolerate: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Run a batch; raise DynsecError on any error answer not containing a tolerated text."""
        tolerated = tuple(tolerate)
        answers = await self._round_trip(commands)
        for command, answer in zip(commands, answers, strict=True):
            error = answer.get("error")
            if error is None or any(text in str(error) for text in tolerated):
                continue
            what = command.get("rolename") or command.get("username") or ""
            raise DynsecError(f"{command['command']} {what}: {error}")
        return answers

    async def _round_trip(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        identifier = f"edgefleet-dynsec-{secrets.token_hex(4)}"
        try:
            async with aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                identifier=identifier,
                timeout=self._timeout,
            ) as client:
                await client.subscribe(f"{CONTROL_TOPIC}/response", qos=1)
                await client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
                return await self._answers(client, commands)
        except aiomqtt.MqttError as exc:
            raise DynsecError(f"dynamic-security admin connection failed: {exc}") from exc
        except TimeoutError:
            raise DynsecError(f"no dynamic-security answer within {self._timeout} s") from None

    async def _answers(
        self, client: aiomqtt.Client, commands: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        names = [command["command"] for command in commands]
        async with asyncio.timeout(self._timeout):
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    continue
                responses = json.loads(payload).get("responses", [])
                if [response.get("command") for response in responses] == names:
                    return list(responses)
                log.debug("ignoring a dynamic-security answer to another batch")
        raise DynsecError("the broker closed the admin connection before answering")

    async def ensure_role(self, rolename: str, acls: list[Acl]) -> None:
        """Create the role with these ACLs; existing role and ACLs are kept (idempotent)."""
        commands = [{"command": "createRole", "rolename": rolename}]
        commands += [acl.command(rolename) for acl in acls]
        await self.execute(commands, tolerate=_ALREADY)

    async def ensure_client(
        self, username: str, password: str, rolename: str, *, client_id: str | None = None
    ) -> None:
        """Create the client, or reset its password and make sure it has the role.

        With `client_id`, the credential works only with that client id (set again on an
        existing client); without, with any.
        """
        create: dict[str, Any] = {
            "command": "createClient",
            "username": username,
            "password": password,
            "roles": [{"rolename": rolename}],
        }
        if client_id is not None:
            create["clientid"] = client_id
        [created] = await self.execute([create], tolerate=("already exists",))
        if "error" not in created:
            return
        [current] = await self.execute([{"command": "getClient", "username": username}])
        roles = current.get("data", {}).get("client", {}).get("roles", [])
        commands: list[dict[str, Any]] = [
            {"command": "setClientPassword", "username": username, "password": password}
        ]
        if client_id is not None:
            commands.append({"command": "setClientId", "username": username, "clientid": client_id})
        if rolename not in [role.get("rolename") for role in roles]:
            # mosquitto 2.0 answers "Internal error" when the role is already there: ask first.
            commands.append(
                {"command": "addClientRole", "username": username, "rolename": rolename}
            )
        await self.execute(commands)

    async def create_device(self, device_id: str, password: str, *, client_id: str) -> None:
        """Replace any half-made credential of this device with a fresh one, in one batch.

        The credential only works with ``client_id``, which the device learns sealed.
        """
        username, rolename = device_username(device_id), device_role(device_id)
        await self.execute(
            [
                {"command": "deleteClient", "username": username},
                {"command": "deleteRole", "rolename": rolename},
                {"command": "createRole", "rolename": rolename},
                *(acl.command(rolename) for acl in device_acls(device_id)),
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "clientid": client_id,
                    "roles": [{"rolename": rolename}],
                },
            ],
            tolerate=("not found",),
        )

    async def delete_device(self, device_id: str) -> None:
        """Remove the device's credential and role; the broker disconnects it."""
        await self.execute(
            [
                {"command": "deleteClient", "username": device_username(device_id)},
                {"command": "deleteRole", "rolename": device_role(device_id)},
            ],
            tolerate=("not found",),
        )

"""A small admin client for mosquitto's dynamic-security plugin (``$CONTROL/dynamic-security/v1``).

Each call opens a short admin connection, sends one batch of commands and waits for the batch
of answers (the plugin answers a batch in order on ``.../response``, to every admin
connection: each command's ``correlationData`` marks which answers are ours). Onboarding is
rare, so a connection per call is simpler than a long-lived one and cannot go stale.

Only features of mosquitto 2.0 are used: in 2.0 the plugin does not substitute ``%c`` / ``%u`` in
ACL topics, so every device gets a role with its own literal topics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
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
    "node_role",
    "owner_tag",
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


OWNER_PREFIX = "edgefleet-node:"
"""A device user's ``textname`` is this plus the name of the node that owns the device."""


def owner_tag(node: str) -> str:
    return f"{OWNER_PREFIX}{node}"


def node_role(node: str) -> str:
    """An empty role whose existence says that `node`'s agent uses this broker."""
    return f"{OWNER_PREFIX}{node}"


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


def agent_acls(discovery_prefix: str | None = None) -> list[Acl]:
    """The agent: everything under ``edgefleet/``.

    With Home Assistant discovery on, also publish (retained configs) under the discovery
    prefix (docs/home-assistant.md).
    """
    root = f"{topics.ROOT}/#"
    acls = [
        Acl(acltype="publishClientSend", topic=root),
        Acl(acltype="subscribePattern", topic=root),
        Acl(acltype="publishClientReceive", topic=root),
    ]
    if discovery_prefix is not None:
        acls.append(Acl(acltype="publishClientSend", topic=f"{discovery_prefix}/#"))
    return acls


class DynsecClient:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        timeout: float,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._tls_context = tls_context
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
        # Every admin connection receives every answer on the response topic (other agents
        # sharing the broker administer it too): correlation data tells ours apart.
        batch = secrets.token_hex(8)
        commands = [
            {**command, "correlationData": f"{batch}.{index}"}
            for index, command in enumerate(commands)
        ]
        identifier = f"edgefleet-dynsec-{secrets.token_hex(8)}"
        try:
            async with aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                identifier=identifier,
                timeout=self._timeout,
                tls_context=self._tls_context,
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
        wanted = [command["correlationData"] for command in commands]
        async with asyncio.timeout(self._timeout):
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    continue
                responses = json.loads(payload).get("responses", [])
                if [response.get("correlationData") for response in responses] == wanted:
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

    async def reserve_device(self, device_id: str, *, node: str) -> str | None:
        """Reserve the device's broker user for `node`; None if done, else its owner now.

        ``createClient`` is atomic in the broker, so when several agents share it and all
        receive one claim, exactly one creates the user and owns the device. The reservation
        has a random password nobody knows and no role until `create_device` fills it in.
        The owner is the node named in the user's ``textname`` (``""`` for a user made
        before owners were recorded).
        """
        [created] = await self.execute(
            [
                {
                    "command": "createClient",
                    "username": device_username(device_id),
                    "password": secrets.token_urlsafe(24),
                    "textname": owner_tag(node),
                }
            ],
            tolerate=("already exists",),
        )
        if "error" not in created:
            return None
        owner = await self.device_owner(device_id)
        return "" if owner is None else owner

    async def device_owner(self, device_id: str) -> str | None:
        """The node that owns the device's broker user (``""``: unrecorded), None if none."""
        [answer] = await self.execute(
            [{"command": "getClient", "username": device_username(device_id)}],
            tolerate=("not found",),
        )
        if "error" in answer:
            return None
        text = str(answer.get("data", {}).get("client", {}).get("textname") or "")
        return text.removeprefix(OWNER_PREFIX) if text.startswith(OWNER_PREFIX) else ""

    async def hand_over(self, device_id: str, *, node: str) -> None:
        """Make `node` the owner of the device's broker user; its credential is unchanged."""
        await self.execute(
            [
                {
                    "command": "modifyClient",
                    "username": device_username(device_id),
                    "textname": owner_tag(node),
                }
            ]
        )

    async def announce_node(self, node: str) -> None:
        """Record that `node` serves this broker (what a move to it checks first)."""
        await self.execute(
            [{"command": "createRole", "rolename": node_role(node)}], tolerate=_ALREADY
        )

    async def node_present(self, node: str) -> bool:
        [answer] = await self.execute(
            [{"command": "getRole", "rolename": node_role(node)}], tolerate=("not found",)
        )
        return "error" not in answer

    async def create_device(
        self, device_id: str, password: str, *, client_id: str, node: str
    ) -> None:
        """Replace any half-made credential of this device with a fresh one, in one batch.

        The credential only works with ``client_id``, which the device learns sealed; the
        user records `node` as its owner.
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
                    "textname": owner_tag(node),
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

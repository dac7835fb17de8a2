"""Simulated devices: claim a credential through the real broker, then report valid values.

``main(argv)`` is ``edge-agent simulate``; `claim_device` and `SimulatedDevice` are the same
device side for tests and the benchmark. A simulated device does what docs/mqtt.md asks of a
real one: it claims with the shared claim credential, connects with its own credential and a
retained ``offline`` last will, announces ``online``, and applies desired values it is sent
(echoing them in its next report).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import logging
import os
import random
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

from daemon_support import arguments
from device_models import (
    Access,
    DeviceModel,
    JsonObject,
    JsonValue,
    PropertySpec,
    PropertyType,
    builtin_model,
    builtin_models,
)
from edge_agent.twins import topics
from edge_agent.twins.onboarding import open_credential
from edge_agent.twins.payloads import RequestError, decode_object, encode
from edge_agent.twins.tls import BrokerTls, BrokerTlsError, client_context
from edge_agent.twins.topics import Op

__all__ = [
    "ClaimRejectedError",
    "DeviceCredential",
    "SimulatedDevice",
    "claim_device",
    "main",
    "random_patch",
]

log = logging.getLogger("edge_agent.twins.simulator")

Answer = dict[str, Any]  # a decoded JSON object from the agent (loosely typed for callers)

MAX_ANSWER_BYTES = 256 * 1024


class ClaimRejectedError(Exception):
    """The agent refused a claim; `reason` is the stable word (docs/mqtt.md)."""

    def __init__(self, answer: JsonObject) -> None:
        self.answer = answer
        self.reason = str(answer.get("reason"))
        super().__init__(f"claim refused: {self.reason}: {answer.get('detail')}")


@dataclass(frozen=True, kw_only=True)
class DeviceCredential:
    device_id: str
    model: str
    username: str
    password: str
    client_id: str


async def claim_device(
    *,
    host: str,
    port: int,
    claim_username: str,
    claim_password: str,
    device_id: str,
    model: str,
    claim_secret: str | None = None,
    node: str | None = None,
    answer_timeout: float = 15.0,
    tls_context: ssl.SSLContext | None = None,
) -> DeviceCredential:
    """Onboard one device; raises ClaimRejectedError with the agent's reason.

    With `tls_context` (`edge_agent.twins.tls.client_context`), over TLS.
    """
    rid = secrets.token_urlsafe(16)
    key = os.urandom(32)
    request: JsonObject = {
        "rid": rid,
        "deviceId": device_id,
        "model": model,
        "responseKey": base64.urlsafe_b64encode(key).rstrip(b"=").decode(),
    }
    if claim_secret is not None:
        request["claimSecret"] = claim_secret
    if node is not None:
        request["node"] = node
    async with aiomqtt.Client(
        host,
        port,
        username=claim_username,
        password=claim_password,
        identifier=f"claim-{secrets.token_hex(6)}",
        timeout=answer_timeout,
        tls_context=tls_context,
    ) as client:
        await client.subscribe(topics.provision_response(rid), qos=1)
        await client.publish(topics.PROVISION_REQUEST, encode(request), qos=1)
        async with asyncio.timeout(answer_timeout):
            message = await anext(aiter(client.messages))
    answer = decode_object(_payload(message), max_bytes=MAX_ANSWER_BYTES)
    credential = answer.get("credential")
    if answer.get("code") != 200 or not isinstance(credential, dict):
        raise ClaimRejectedError(answer)
    sealed = open_credential(key, device_id, credential)
    return DeviceCredential(
        device_id=device_id,
        model=model,
        username=str(answer["username"]),
        password=sealed.password,
        client_id=sealed.client_id,
    )


def _payload(message: aiomqtt.Message) -> bytes:
    return message.payload


class SimulatedDevice:
    """One device's broker session. Use ``async with``; messages are read on demand."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        credential: DeviceCredential,
        clean_session: bool = True,
        timeout: float = 15.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.credential = credential
        self.device_id = credential.device_id
        self.timeout = timeout
        self._client = aiomqtt.Client(
            host,
            port,
            username=credential.username,
            password=credential.password,
            identifier=credential.client_id,
            clean_session=clean_session,
            timeout=timeout,
            will=aiomqtt.Will(self.topic(Op.AVAILABILITY), b"offline", qos=1, retain=True),
            tls_context=tls_context,
        )
        self._inbox: dict[Op, collections.deque[Answer]] = collections.defaultdict(
            collections.deque
        )

    @property
    def client(self) -> aiomqtt.Client:
        return self._client

    def topic(self, op: Op) -> str:
        return topics.device_topic(self.device_id, op)

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        await self._client.subscribe(
            [(self.topic(op), 1) for op in (Op.RESULT, Op.DESIRED, Op.DELTA)]
        )
        await self._client.publish(self.topic(Op.AVAILABILITY), b"online", qos=1, retain=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            # The broker may have ended the session already (its user changed hands when the
            # device moved to another node): the last will said "offline" then.
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.publish(
                    self.topic(Op.AVAILABILITY), b"offline", qos=1, retain=True
                )
        await self._client.__aexit__(exc_type, exc, tb)

    async def request(self, op: Op, body: JsonObject) -> Answer:
        """Publish a request with a fresh rid and wait for its answer."""
        rid = str(body.get("rid") or secrets.token_urlsafe(12))
        await self._client.publish(self.topic(op), encode({**body, "rid": rid}), qos=1)
        return await self.wait_for(Op.RESULT, lambda answer: answer.get("rid") == rid)

    async def report(self, patch: JsonObject, **extra: JsonValue) -> Answer:
        return await self.request(Op.REPORTED, {"patch": patch, **extra})

    async def get(self) -> Answer:
        return await self.request(Op.GET, {})

    async def wait_for(
        self, op: Op, predicate: Callable[[Answer], bool] = lambda _: True
    ) -> Answer:
        """The next message on ``twin/<op>`` that matches (earlier non-matching ones are kept)."""
        async with asyncio.timeout(self.timeout):
            while True:
                found = self.take(op, predicate)
                if found is not None:
                    return found
                await self._read_one()

    def take(self, op: Op, predicate: Callable[[Answer], bool] = lambda _: True) -> Answer | None:
        """A message already received on ``twin/<op>`` that matches, or None."""
        queue = self._inbox[op]
        for index, item in enumerate(queue):
            if predicate(item):
                del queue[index]
                return item
        return None

    async def drain(self) -> None:
        """Read whatever the broker already delivered (without waiting for more)."""
        while len(self._client.messages):
            await self._read_one()

    async def _read_one(self) -> None:
        message = await anext(aiter(self._client.messages))
        suffix = str(message.topic).removeprefix(topics.device_prefix(self.device_id) + "/")
        try:
            op = Op(suffix)
            body = decode_object(_payload(message), max_bytes=MAX_ANSWER_BYTES)
        except (ValueError, RequestError):
            log.warning("%s: unexpected message on %s", self.device_id, message.topic)
            return
        self._inbox[op].append(body)


# ---------------------------------------------------------------------- values


def random_value(spec: PropertySpec, rng: random.Random) -> JsonValue:
    """A value that fits `spec` (ranges, enum members, lengths, nested objects)."""
    if spec.type is PropertyType.BOOL:
        return rng.random() < 0.5
    if spec.type is PropertyType.ENUM:
        return rng.choice(spec.values)
    if spec.type is PropertyType.STRING:
        return f"v{rng.randrange(10**6)}"[: spec.max_length or 4096]
    if spec.type is PropertyType.OBJECT:
        return {member.name: random_value(member, rng) for member in spec.properties}
    low = spec.minimum if spec.minimum is not None else 0
    high = spec.maximum if spec.maximum is not None else low + 1000
    if spec.type is PropertyType.INT:
        return rng.randint(int(low), int(high))
    return round(rng.uniform(float(low), float(high)), 2)


def random_patch(model: DeviceModel, rng: random.Random) -> JsonObject:
    """Telemetry properties each time, plus one random read-only state property now and then.

    Read-write properties are left alone: a real device reports those when desired changes
    them (the simulator reports the delta it receives), so the console's delta stays honest.
    """
    telemetry = [spec for spec in model.properties if spec.kind == "telemetry"]
    state = [
        spec
        for spec in model.properties
        if spec.kind != "telemetry" and spec.access != Access.READ_WRITE
    ]
    chosen = list(telemetry)
    if state and (not telemetry or rng.random() < 0.2):
        chosen.append(rng.choice(state))
    return {spec.name: random_value(spec, rng) for spec in chosen}


# ---------------------------------------------------------------------- command line


@dataclass(frozen=True, kw_only=True)
class _Options:
    host: str
    port: int
    model: str
    count: int
    prefix: str
    interval: float
    reports: int
    claim_username: str
    claim_password: str
    credentials: Path | None
    seed: int | None
    node: str | None = None
    tls_context: ssl.SSLContext | None = None


@dataclass(kw_only=True)
class _Totals:
    onboarded: int = 0
    reports: int = 0
    rejected: int = 0
    errors: int = 0


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.Parser(
        prog="edge-agent simulate",
        description="Onboard N simulated devices through the broker and report values.",
        epilog="exit codes: 0 every device ran; 1 a device failed (logged); 2 bad arguments",
    )
    parser.add_argument(
        "--model",
        default="temperature-sensor",
        choices=sorted(builtin_models()),
        metavar="MODEL",
        help=f"one of {', '.join(builtin_models())}",
    )
    parser.add_argument(
        "--count", type=arguments.whole(low=1, high=100_000), default=1, help="devices, 1 or more"
    )
    parser.add_argument(
        "--broker", type=arguments.host_port, default="127.0.0.1:1883", help="HOST:PORT"
    )
    parser.add_argument("--prefix", default="sim", help="device ids are PREFIX-0, PREFIX-1, ...")
    parser.add_argument(
        "--interval",
        type=arguments.seconds(low=0.0, high=86400.0),
        default=1.0,
        help="seconds between reports per device",
    )
    parser.add_argument(
        "--reports",
        type=arguments.whole(low=0, high=10**9),
        default=0,
        help="reports per device, 0: until interrupted",
    )
    parser.add_argument("--claim-username", default="edgefleet-claim")
    parser.add_argument(
        "--claim-password",
        default=os.environ.get("EDGEFLEET_CLAIM_PASSWORD"),
        help="the shared claim password (default: $EDGEFLEET_CLAIM_PASSWORD)",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        help="JSON file keeping device credentials, so a second run reuses them",
    )
    parser.add_argument("--seed", type=int, help="seed for reproducible values")
    parser.add_argument(
        "--node", help="the node whose agent should onboard the devices (a shared broker)"
    )
    tls = parser.add_argument_group("TLS (docs/mqtt-broker.md)")
    tls.add_argument(
        "--broker-ca-file",
        type=Path,
        help="connect over TLS, trusting this PEM CA (it signed the broker's certificate)",
    )
    tls.add_argument("--broker-cert-file", type=Path, help="PEM client certificate (optional)")
    tls.add_argument("--broker-key-file", type=Path, help="its PEM private key")
    tls.add_argument(
        "--broker-server-name",
        default="",
        help="name the broker's certificate must carry (default: the --broker host)",
    )
    return parser


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of the ``--broker-*`` options; BrokerTlsError says what is wrong."""
    if args.broker_ca_file is None:
        given = [
            option
            for option, value in (
                ("--broker-cert-file", args.broker_cert_file),
                ("--broker-key-file", args.broker_key_file),
                ("--broker-server-name", args.broker_server_name),
            )
            if value
        ]
        if given:
            raise BrokerTlsError(f"{given[0]} needs --broker-ca-file (TLS)")
        return None
    settings = BrokerTls(
        ca_file=args.broker_ca_file,
        cert_file=args.broker_cert_file,
        key_file=args.broker_key_file,
        server_name=args.broker_server_name,
    )
    return client_context(settings, where="", options=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``edge-agent simulate``; prints one JSON summary line. Exit 0, or 1 on any error."""
    args = build_parser().parse_args(argv)
    host, port = args.broker
    if not args.claim_password:
        sys.stderr.write("edge-agent simulate: error: need --claim-password (or its variable)\n")
        return 2
    try:
        tls_context = _tls_context(args)
    except BrokerTlsError as error:
        sys.stderr.write(f"edge-agent simulate: error: {error}\n")
        return 2
    options = _Options(
        host=host,
        port=port,
        model=args.model,
        count=args.count,
        prefix=args.prefix,
        interval=args.interval,
        reports=args.reports,
        claim_username=args.claim_username,
        claim_password=args.claim_password,
        credentials=args.credentials,
        seed=args.seed,
        node=args.node,
        tls_context=tls_context,
    )
    started = time.monotonic()
    totals = asyncio.run(run_devices(options))
    summary = {**asdict(totals), "seconds": round(time.monotonic() - started, 3)}
    sys.stdout.write(json.dumps(summary) + "\n")
    return 1 if totals.errors else 0


async def run_devices(options: _Options) -> _Totals:
    model = builtin_model(options.model)
    known = _load_credentials(options.credentials)
    totals = _Totals()
    credentials: list[DeviceCredential] = []
    for index in range(options.count):
        device_id = f"{options.prefix}-{index}"
        credential = known.get(device_id)
        if credential is None:
            try:
                credential = await claim_device(
                    host=options.host,
                    port=options.port,
                    claim_username=options.claim_username,
                    claim_password=options.claim_password,
                    device_id=device_id,
                    model=options.model,
                    node=options.node,
                    tls_context=options.tls_context,
                )
            except (ClaimRejectedError, aiomqtt.MqttError, TimeoutError) as exc:
                log.error("%s: %s", device_id, exc)  # noqa: TRY400 - the reason is the message
                totals.errors += 1
                continue
            totals.onboarded += 1
        credentials.append(credential)
    _save_credentials(options.credentials, {**known, **{c.device_id: c for c in credentials}})
    async with asyncio.TaskGroup() as group:
        for index, credential in enumerate(credentials):
            rng = random.Random(None if options.seed is None else options.seed + index)  # noqa: S311 - simulated values
            group.create_task(
                _drive(options, credential, model, rng, totals), name=f"simulate.{index}"
            )
    return totals


RECONNECTS = 5
"""Sessions in a row a simulated device may lose without a report answered in between
before it gives up (the broker ends a session, for example, when the device is moved to
another node: it connects again with the same credential)."""


async def _drive(
    options: _Options,
    credential: DeviceCredential,
    model: DeviceModel,
    rng: random.Random,
    totals: _Totals,
) -> None:
    sent = [0]
    failures = 0
    while True:
        before = sent[0]
        try:
            await _session(options, credential, model=model, rng=rng, totals=totals, sent=sent)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            failures = 1 if sent[0] > before else failures + 1
            if failures > RECONNECTS:
                log.error("%s: %s", credential.device_id, exc)  # noqa: TRY400 - the reason is the message
                totals.errors += 1
                return
            log.warning("%s: %s; connecting again", credential.device_id, exc)
            await asyncio.sleep(0.5 * failures)
        else:
            return


async def _session(
    options: _Options,
    credential: DeviceCredential,
    *,
    model: DeviceModel,
    rng: random.Random,
    totals: _Totals,
    sent: list[int],
) -> None:
    """One broker session of a simulated device: report until done (`sent` counts across)."""
    async with SimulatedDevice(
        host=options.host,
        port=options.port,
        credential=credential,
        tls_context=options.tls_context,
    ) as device:
        while options.reports == 0 or sent[0] < options.reports:
            await device.drain()
            patch = random_patch(model, rng)
            while (delta := device.take(Op.DELTA)) is not None:
                wanted = delta.get("delta")
                if isinstance(wanted, dict):
                    patch.update(wanted)  # apply desired values and report them
            answer = await device.report(patch)
            sent[0] += 1
            totals.reports += 1
            if answer.get("code") != 200:
                totals.rejected += 1
                log.warning("%s: report refused: %s", device.device_id, answer)
            await asyncio.sleep(options.interval)


def _load_credentials(path: Path | None) -> dict[str, DeviceCredential]:
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {item["device_id"]: DeviceCredential(**item) for item in data}


def _save_credentials(path: Path | None, credentials: dict[str, DeviceCredential]) -> None:
    if path is None:
        return
    path.write_text(json.dumps([asdict(c) for c in credentials.values()], indent=1))
    path.chmod(0o600)

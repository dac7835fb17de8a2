"""The ``fleet`` tunnel stream's messages, sans-IO: framing, encoding, strict decoding, bounds.

One stream per tunnel session, opened by a cluster-mode agent to the cloud's ``fleet`` target
(docs/fleet/stream.md is the protocol's reference). A message is a 4-byte big-endian length
followed by that many bytes of UTF-8 JSON: an object with a string ``type`` (the twin sync's
framing, re-implemented here because the pure packages import nothing of each other).

agent → cloud: ``hello`` (first, once), then ``lease``, ``status``, ``removed``.
cloud → agent: ``settings``, ``work``, ``delete``.

Decoding is strict and bounded: the length is checked against ``MAX_MESSAGE_BYTES`` before any
byte of the body is buffered, the nesting depth by a linear scan before ``json.loads`` runs,
NaN and Infinity are refused, every name is a DNS-1123 subdomain, every count has a cap. Any
violation is a `WireError` (the receiver resets the stream); nothing else ever escapes.
Fields a message does not define are ignored, so a later protocol may add some.

Optional fields added since protocol 1 (an older peer ignores them, so ``PROTOCOL_VERSION``
stays 1): ``lease.readyEndpoints`` — the ready endpoints of the Service ports the agent's
gateway serves, ``{"namespace/name:port": count}``, at most ``MAX_READY_ENTRIES`` entries,
each count 0..``MAX_READY_COUNT``; absent means "not reported" (an agent without the gateway,
or an older one), never "none ready".
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeAlias

from fleet_model.problems import is_name

__all__ = [
    "FLEET_TARGET",
    "HEADER",
    "MAX_CLAIMS",
    "MAX_DEPTH",
    "MAX_MESSAGE_BYTES",
    "MAX_READY_COUNT",
    "MAX_READY_ENTRIES",
    "MAX_WORKS",
    "PROPAGATION_POLICIES",
    "PROTOCOL_VERSION",
    "AgentMessage",
    "CloudMessage",
    "Decoder",
    "Delete",
    "Hello",
    "LeaseRenewal",
    "Removed",
    "Settings",
    "Status",
    "WireError",
    "WorkMessage",
    "encode",
    "fitting",
    "parse_agent_message",
    "parse_cloud_message",
    "ready_key",
]

FLEET_TARGET = "fleet"
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")

MAX_MESSAGE_BYTES = 1024 * 1024 + 64 * 1024
"""Bytes of one message body: a Work of up to 1 MiB (the default cap is 512 KiB) plus room
for its envelope and JSON escapes."""
MAX_DEPTH = 100
"""JSON nesting of one message: a Work's manifests (CRD schemas nest deeply) sit 6 levels in."""
MAX_WORKS = 2048
"""Works one agent may hold: 2,048 names of 253 characters still fit one hello."""
MAX_CLAIMS = 64
"""Cluster claims in one hello or lease (ours are 5; the rest are the operator's)."""
MAX_CLAIM_VALUE = 1024
"""Characters of one claim value."""
MAX_QUANTITY = 64
"""Characters of one Kubernetes quantity (real ones are under 20)."""
RESOURCES = ("cpu", "memory")
"""What ``allocatable`` and ``capacity`` carry."""
MAX_LEASE_SECONDS = 3600
"""``leaseDurationSeconds`` is 1..3600, as the ManagedCluster spec allows."""
MAX_RESOURCE_VERSION = 2**63 - 1
PROPAGATION_POLICIES = ("Foreground", "Orphan")
MAX_REASON = 512
MAX_READY_ENTRIES = 256
"""Service ports in one ``lease.readyEndpoints``: as many as an agent's gateway allow-list has
patterns; an agent with more sends the first ones by name (the rest stay unknown to the cloud,
which then judges them by requests and checks, as before the field existed)."""
MAX_READY_COUNT = 1_000_000
"""Ready endpoints of one Service port (the agent balances over at most 4,096 of them)."""

_QUANTITY = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)"
)
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DIGITS = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PORT = re.compile(r"^[1-9][0-9]{0,4}$")


def ready_key(namespace: str, name: str, port: int) -> str:
    """The key of one Service port in ``lease.readyEndpoints``: ``namespace/name:port``."""
    return f"{namespace}/{name}:{port}"


class WireError(ValueError):
    """The peer broke the framing or sent a message this protocol does not allow."""


def _fail(message: str) -> NoReturn:
    raise WireError(message)


# ------------------------------------------------------------------ messages


@dataclass(frozen=True, kw_only=True)
class Hello:
    """agent → cloud, first: what the agent holds and what its cluster is."""

    works: Mapping[str, int]
    """Work name → the resourceVersion of the copy the agent holds (and applies)."""
    generations: Mapping[str, int] = field(default_factory=dict)
    """Work name → the generation of that copy (optional, names of ``works`` only): a Work
    whose status alone moved its resourceVersion since is not sent again after a reconnect."""
    claims: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)
    apiserver_healthy: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "works": dict(self.works),
            "generations": dict(self.generations),
            "claims": dict(self.claims),
            "allocatable": dict(self.allocatable),
            "capacity": dict(self.capacity),
            "apiserverHealthy": self.apiserver_healthy,
        }


@dataclass(frozen=True, kw_only=True)
class LeaseRenewal:
    """agent → cloud, every ``leaseDurationSeconds``: I am here; claims when they changed."""

    apiserver_healthy: bool | None
    claims: Mapping[str, str] | None = None
    allocatable: Mapping[str, str] | None = None
    capacity: Mapping[str, str] | None = None
    ready_endpoints: Mapping[str, int] | None = None
    """``namespace/name:port`` -> ready endpoints of every Service port the agent's gateway
    serves (all of them, up to ``MAX_READY_ENTRIES``); None: not reported (no gateway)."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "lease", "apiserverHealthy": self.apiserver_healthy}
        for key, value in (
            ("claims", self.claims),
            ("allocatable", self.allocatable),
            ("capacity", self.capacity),
            ("readyEndpoints", self.ready_endpoints),
        ):
            if value is not None:
                body[key] = dict(value)
        return body


@dataclass(frozen=True, kw_only=True)
class Status:
    """agent → cloud: the status of a Work as applied at ``resource_version`` (on change)."""

    work: str
    resource_version: int
    status: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "status",
            "work": self.work,
            "resourceVersion": self.resource_version,
            "status": dict(self.status),
        }


@dataclass(frozen=True, kw_only=True)
class Removed:
    """agent → cloud: what the Work ``work`` applied is deleted (or orphaned) and forgotten."""

    work: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "removed", "work": self.work}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """cloud → agent, first: how often to renew the lease."""

    lease_duration_seconds: int

    def to_json(self) -> dict[str, Any]:
        return {"type": "settings", "leaseDurationSeconds": self.lease_duration_seconds}


@dataclass(frozen=True, kw_only=True)
class WorkMessage:
    """cloud → agent: a new or changed Work for this cluster (its document, without status)."""

    document: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.document["metadata"]["name"])

    @property
    def resource_version(self) -> int:
        return int(self.document["metadata"]["resourceVersion"])

    def to_json(self) -> dict[str, Any]:
        return {"type": "work", "document": dict(self.document)}


@dataclass(frozen=True, kw_only=True)
class Delete:
    """cloud → agent: the Work is gone; remove what it applied (or orphan it).

    ``propagation_policy`` None: the cloud no longer knows the Work's ``deleteOption`` (it was
    deleted while the agent was away); the agent uses the one of the copy it holds.
    """

    work: str
    propagation_policy: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "delete", "work": self.work}
        if self.propagation_policy is not None:
            body["propagationPolicy"] = self.propagation_policy
        return body


AgentMessage: TypeAlias = Hello | LeaseRenewal | Status | Removed
CloudMessage: TypeAlias = Settings | WorkMessage | Delete


# ------------------------------------------------------------------ encoding


def encode(message: AgentMessage | CloudMessage) -> bytes:
    """One framed message; WireError if its body would exceed ``MAX_MESSAGE_BYTES``."""
    try:
        text = json.dumps(
            message.to_json(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise WireError(f"not encodable as JSON: {error}") from None
    body = text.encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise WireError(
            f"{message.to_json()['type']} message of {len(body)} bytes exceeds the cap of"
            f" {MAX_MESSAGE_BYTES}"
        )
    return HEADER.pack(len(body)) + body


# ------------------------------------------------------------------ field checks


def _name(value: object, what: str) -> str:
    if not is_name(value):
        _fail(f"{what} must be a DNS-1123 subdomain of at most 253 characters")
    return str(value)


def _version(value: object, what: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 < value <= MAX_RESOURCE_VERSION
    ):
        _fail(f"{what} must be a positive integer (a resourceVersion)")
    return value


def _healthy(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        _fail("apiserverHealthy must be true, false or null")
    return value


def _claim_name(name: str) -> bool:
    prefix, slash, rest = name.rpartition("/")
    if slash and not is_name(prefix):
        return False
    return 0 < len(rest) <= 63 and bool(_QUALIFIED.match(rest))


def _claims(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_CLAIMS:
        _fail(f"claims must be an object of at most {MAX_CLAIMS} name: string")
    for name, claim in value.items():
        if not _claim_name(name):
            _fail(f"claim name {name[:80]!r} is not a qualified name (like a label key)")
        if not isinstance(claim, str) or len(claim) > MAX_CLAIM_VALUE:
            _fail(f"claim {name!r} must be a string of at most {MAX_CLAIM_VALUE} characters")
    return dict(value)


def _resources(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        _fail(f"{what} must be an object of cpu and memory quantities")
    for key, quantity in value.items():
        if key not in RESOURCES:
            _fail(f"{what} may name only {', '.join(RESOURCES)}, not {key[:40]!r}")
        if (
            not isinstance(quantity, str)
            or len(quantity) > MAX_QUANTITY
            or not _QUANTITY.fullmatch(quantity)
        ):
            _fail(f"{what}.{key} must be a Kubernetes quantity")
    return dict(value)


def _ready_key_ok(key: object) -> bool:
    if not isinstance(key, str) or len(key) > 64 + 64 + 6:
        return False
    namespace, slash, rest = key.partition("/")
    name, colon, port = rest.rpartition(":")
    return (
        bool(slash and colon)
        and bool(_LABEL.match(namespace))
        and bool(_LABEL.match(name))
        and bool(_PORT.match(port))
        and int(port) <= 65535  # the largest TCP port
    )


def _ready_endpoints(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_READY_ENTRIES:
        _fail(
            f"lease.readyEndpoints must be an object of at most {MAX_READY_ENTRIES}"
            " namespace/name:port: count"
        )
    for key, count in value.items():
        if not _ready_key_ok(key):
            _fail(f"lease.readyEndpoints key {str(key)[:80]!r} is not namespace/name:port")
        if (
            isinstance(count, bool)
            or not isinstance(count, int)
            or not 0 <= count <= MAX_READY_COUNT
        ):
            _fail(f"lease.readyEndpoints[{key!r}] must be an integer in 0..{MAX_READY_COUNT}")
    return dict(value)


def fitting(hello: Hello) -> Hello:
    """``hello``, or it without its optional generations when it would not fit one message."""
    if not hello.generations:
        return hello
    try:
        encode(hello)
    except WireError:
        return dataclasses.replace(hello, generations={})
    return hello


def _optional(
    message: Mapping[str, Any], key: str, parse: Callable[[object], dict[str, str]]
) -> dict[str, str] | None:
    return None if message.get(key) is None else parse(message[key])


# ------------------------------------------------------------------ parsing


def _parse_hello(message: Mapping[str, Any]) -> Hello:
    if message.get("protocol") != PROTOCOL_VERSION:
        _fail(f"hello.protocol must be {PROTOCOL_VERSION}")
    works = message.get("works")
    if not isinstance(works, dict) or len(works) > MAX_WORKS:
        _fail(f"hello.works must be an object of at most {MAX_WORKS} name: resourceVersion")
    for name, version in works.items():
        _name(name, "a work name in hello.works")
        _version(version, f"hello.works[{name!r}]")
    generations = message.get("generations", {})
    if not isinstance(generations, dict):
        _fail("hello.generations must be an object of name: generation")
    for name, generation in generations.items():
        if name not in works:
            _fail(f"hello.generations names {str(name)[:64]!r}, which hello.works does not")
        _version(generation, f"hello.generations[{name!r}]")
    return Hello(
        works=dict(works),
        generations=dict(generations),
        claims=_claims(message.get("claims", {})),
        allocatable=_resources(message.get("allocatable", {}), "allocatable"),
        capacity=_resources(message.get("capacity", {}), "capacity"),
        apiserver_healthy=_healthy(message.get("apiserverHealthy")),
    )


def _parse_lease(message: Mapping[str, Any]) -> LeaseRenewal:
    return LeaseRenewal(
        apiserver_healthy=_healthy(message.get("apiserverHealthy")),
        claims=_optional(message, "claims", _claims),
        allocatable=_optional(message, "allocatable", lambda v: _resources(v, "allocatable")),
        capacity=_optional(message, "capacity", lambda v: _resources(v, "capacity")),
        ready_endpoints=(
            None
            if message.get("readyEndpoints") is None
            else _ready_endpoints(message["readyEndpoints"])
        ),
    )


def _parse_status(message: Mapping[str, Any]) -> Status:
    status = message.get("status")
    if not isinstance(status, dict):
        _fail("status.status must be an object (a Work status)")
    return Status(
        work=_name(message.get("work"), "status.work"),
        resource_version=_version(message.get("resourceVersion"), "status.resourceVersion"),
        status=status,
    )


def _parse_removed(message: Mapping[str, Any]) -> Removed:
    return Removed(work=_name(message.get("work"), "removed.work"))


def _parse_settings(message: Mapping[str, Any]) -> Settings:
    seconds = message.get("leaseDurationSeconds")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or not 1 <= seconds <= MAX_LEASE_SECONDS
    ):
        _fail(f"settings.leaseDurationSeconds must be an integer in 1..{MAX_LEASE_SECONDS}")
    return Settings(lease_duration_seconds=seconds)


def _parse_work(message: Mapping[str, Any]) -> WorkMessage:
    document = message.get("document")
    if not isinstance(document, dict):
        _fail("work.document must be an object (a Work)")
    if document.get("kind") != "Work":
        _fail('work.document.kind must be "Work"')
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        _fail("work.document.metadata must be an object")
    _name(metadata.get("name"), "work.document.metadata.name")
    version = metadata.get("resourceVersion")
    if not isinstance(version, str) or not _DIGITS.match(version) or version == "0":
        _fail("work.document.metadata.resourceVersion must be a positive integer as a string")
    generation = metadata.get("generation")
    if generation is not None:
        _version(generation, "work.document.metadata.generation")
    spec = document.get("spec")
    if not isinstance(spec, dict):
        _fail("work.document.spec must be an object")
    _name(spec.get("clusterName"), "work.document.spec.clusterName")
    return WorkMessage(document=document)


def _parse_delete(message: Mapping[str, Any]) -> Delete:
    policy = message.get("propagationPolicy")
    if policy is not None and policy not in PROPAGATION_POLICIES:
        _fail(f"delete.propagationPolicy must be one of {', '.join(PROPAGATION_POLICIES)}")
    return Delete(work=_name(message.get("work"), "delete.work"), propagation_policy=policy)


_FROM_AGENT: dict[str, Callable[[Mapping[str, Any]], AgentMessage]] = {
    "hello": _parse_hello,
    "lease": _parse_lease,
    "status": _parse_status,
    "removed": _parse_removed,
}
_FROM_CLOUD: dict[str, Callable[[Mapping[str, Any]], CloudMessage]] = {
    "settings": _parse_settings,
    "work": _parse_work,
    "delete": _parse_delete,
}


def parse_agent_message(message: Mapping[str, Any]) -> AgentMessage:
    """A message an agent sent; WireError when it is none of hello, lease, status, removed."""
    parse = _FROM_AGENT.get(str(message.get("type")))
    if parse is None:
        _fail(
            f"an agent sends hello, lease, status or removed, not {str(message.get('type'))[:40]!r}"
        )
    return parse(message)


def parse_cloud_message(message: Mapping[str, Any]) -> CloudMessage:
    """A message the cloud sent; WireError when it is none of settings, work, delete."""
    parse = _FROM_CLOUD.get(str(message.get("type")))
    if parse is None:
        _fail(f"the cloud sends settings, work or delete, not {str(message.get('type'))[:40]!r}")
    return parse(message)


# ------------------------------------------------------------------ framing


def _nesting_depth(text: str, limit: int) -> int:
    """Deepest bracket nesting of JSON text outside strings, scanning until ``limit`` is passed.

    Checked on the raw text before parsing, so hostile input cannot make the parser recurse.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes) -> dict[str, Any]:
    """One message body as a JSON object with a string ``type``; WireError otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise WireError(f"not UTF-8: {error.reason}") from None
    if _nesting_depth(text, MAX_DEPTH) > MAX_DEPTH:
        _fail(f"JSON nests deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise WireError(f"not JSON: {str(error)[:200]}") from None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        _fail('a message is a JSON object with a string "type"')
    return value


Side = Literal["agent", "cloud"]


class Decoder:
    """Feed bytes as they come; take whole, validated messages out.

    ``sender``: whose messages these are (the cloud decodes the agent's and vice versa).
    After a WireError the stream is broken: the caller resets it and drops the decoder.
    """

    def __init__(self, *, sender: Side) -> None:
        self._parse: Callable[[Mapping[str, Any]], AgentMessage | CloudMessage] = (
            parse_agent_message if sender == "agent" else parse_cloud_message
        )
        self._buffer = bytearray()
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[AgentMessage | CloudMessage]:
        """The messages completed by ``data`` (maybe none); WireError on a broken message."""
        self._buffer += data
        messages: list[AgentMessage | CloudMessage] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return messages
                (length,) = HEADER.unpack_from(self._buffer)
                if length == 0 or length > MAX_MESSAGE_BYTES:
                    self._buffer.clear()  # a broken stream: keep nothing of it
                    _fail(f"message length {length} is not within 1..{MAX_MESSAGE_BYTES}")
                del self._buffer[: HEADER.size]
                self._need = length
            if len(self._buffer) < self._need:
                return messages
            body = bytes(self._buffer[: self._need])
            del self._buffer[: self._need]
            self._need = None
            messages.append(self._parse(decode_body(body)))

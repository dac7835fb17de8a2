"""Onboarding: a device with the shared claim credential asks for its own credential.

Flow (docs/mqtt.md §2):

1. The device connects with the claim credential. The broker lets that credential publish on
   ``edgefleet/provision/request`` and read ``edgefleet/provision/response/+``, nothing else.
2. It publishes ``{"rid", "deviceId", "model", "claimSecret"?, "responseKey"}``.
3. Every agent on the broker receives it. An agent that has the id active answers
   ``duplicate_id``. Otherwise each reserves the broker user ``device:<id>`` for its node
   (``createClient`` is atomic in the broker): exactly one succeeds and owns the device, the
   others stay silent (docs/mqtt.md §2, "Several agents on one broker").
4. The owner checks the model (built-in or from the models folder) and the claim (a device
   registered in advance must present its secret; unregistered devices are refused when
   `require_registration` is set); a refusal frees the reservation.
5. It records the device as ``provisioning``, fills in the broker user (bound to client id
   ``<id>-<16 random hex>``, a random password, a role limited to
   ``edgefleet/devices/<id>/``, its node as owner), then records it ``active`` together with
   a ``device`` record for the cloud, and answers on ``edgefleet/provision/response/<rid>``.

Why the password is encrypted: mosquitto 2.0 cannot restrict who reads which response topic
(no ``%c`` in ACLs), so every claim-credential holder can read every answer. The device sends a
fresh 256-bit ``responseKey`` in its request, which only the agent can read, and the password
comes back sealed with AES-256-GCM under that key (the device id is the associated data).

A crash between steps leaves the device ``provisioning``: its next claim starts over and
replaces the half-made credential.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device_models import DeviceModel, JsonObject
from edge_agent.twins import topics
from edge_agent.twins.dynsec import DynsecClient, DynsecError, device_username
from edge_agent.twins.outbox import Metrics, Outbox
from edge_agent.twins.payloads import (
    Code,
    RequestError,
    decode_object,
    encode,
    only_fields,
    optional_rid,
)
from edge_agent.twins.replica import EdgeTwinReplica
from edge_agent.twins.twin_store import DeviceRecord, DeviceState, TwinStore

__all__ = [
    "ClaimAnswer",
    "NotOwnerError",
    "Onboarding",
    "SealedSecrets",
    "open_credential",
    "seal_credential",
]

log = logging.getLogger("edge_agent.twins.onboarding")

_FIELDS = frozenset({"rid", "deviceId", "model", "claimSecret", "responseKey", "node"})
KEY_BYTES = 32
MAX_SECRET_LENGTH = 256
PASSWORD_BYTES = 24  # 192 bits of randomness, 32 characters of base64url
CLIENT_ID_SUFFIX_BYTES = 8
"""Random bytes (16 hex digits) after ``<device id>-`` in a device's MQTT client id. Secret
like the password: a holder of the shared claim credential who knew a device's client id could
connect with it, and the broker would disconnect the device (a client-id takeover)."""


class NotOwnerError(Exception):
    """Another node owns the device on this broker: it answers the claim, not us."""

    def __init__(self, device_id: str, owner: str, *, addressed: bool = False) -> None:
        who = f"node {owner}" if owner else "a node that did not record its name"
        if addressed:
            text = f"the claim of {device_id} is addressed to node {owner}; left to it"
        else:
            text = f"device {device_id} belongs to {who} on this broker; left to it"
        super().__init__(text)
        self.owner = owner


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    topic: str
    payload: bytes


def b64decode(text: str) -> bytes:
    """base64url with or without padding (standard base64 characters are accepted too)."""
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, kw_only=True, slots=True)
class SealedSecrets:
    """What only the device may read of its onboarding answer (docs/mqtt.md section 2)."""

    password: str
    client_id: str


def seal_credential(key: bytes, device_id: str, sealed: SealedSecrets) -> JsonObject:
    plain = json.dumps({"password": sealed.password, "clientId": sealed.client_id})
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, plain.encode(), device_id.encode())
    return {"alg": "A256GCM", "nonce": b64encode(nonce), "ciphertext": b64encode(ciphertext)}


def open_credential(key: bytes, device_id: str, credential: JsonObject) -> SealedSecrets:
    """The device side of `seal_credential` (used by the simulator)."""
    nonce, sealed = credential.get("nonce"), credential.get("ciphertext")
    if (
        credential.get("alg") != "A256GCM"
        or not isinstance(nonce, str)
        or not isinstance(sealed, str)
    ):
        raise ValueError("credential must be {alg: A256GCM, nonce, ciphertext}")
    plain = AESGCM(key).decrypt(b64decode(nonce), b64decode(sealed), device_id.encode())
    opened = json.loads(plain)
    if not isinstance(opened, dict) or not all(
        isinstance(opened.get(k), str) for k in ("password", "clientId")
    ):
        raise ValueError("sealed credential must be {password, clientId}")
    return SealedSecrets(password=opened["password"], client_id=opened["clientId"])


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


REVOKED = "revoked"
"""The ``claims`` row of a revoked device holds this instead of a secret's digest (no SHA-256
hex digest equals it): claims of the id are refused until an operator registers it again."""


@dataclass(frozen=True, kw_only=True, slots=True)
class _Claim:
    rid: str
    device_id: str
    model: str
    secret: str | None
    key: bytes
    node: str | None = None
    """The node the device asks to be onboarded by (optional routing on a shared broker)."""


class Onboarding:
    def __init__(
        self,
        *,
        twins: EdgeTwinReplica,
        store: TwinStore,
        outbox: Outbox,
        dynsec: DynsecClient,
        metrics: Metrics,
        node: str,
        require_registration: bool,
        max_devices: int,
        max_request_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._twins = twins
        self._store = store
        self._outbox = outbox
        self._dynsec = dynsec
        self._metrics = metrics
        self._node = node
        self._require_registration = require_registration
        self._max_devices = max_devices
        self._max_request = max_request_bytes
        self._clock = clock

    def register_claim(self, device_id: str, model: str, claim_secret: str) -> None:
        """Expect `device_id` of `model`, which must present `claim_secret` when it claims."""
        self.register_digest(device_id, model, secret_digest(claim_secret))

    def register_digest(self, device_id: str, model: str, digest: str) -> None:
        """`register_claim` with the secret's SHA-256 hex digest (the cloud keeps the secret)."""
        if not topics.DEVICE_ID.fullmatch(device_id):
            raise RequestError(Code.BAD_REQUEST, f"invalid device id {device_id!r}")
        if self._twins.models.get(model) is None:
            known = ", ".join(self._twins.models.names())
            raise RequestError(
                Code.UNKNOWN_MODEL, f"model {model} is not known on node {self._node} ({known})"
            )
        existing = self._twins.device(device_id)
        if existing is not None and existing.state is DeviceState.ACTIVE:
            raise RequestError(
                Code.DUPLICATE_ID,
                f"device {device_id} is already onboarded on node {self._node}: remove it first",
            )
        self._store.register_claim(device_id, model, digest)

    def forget_claim(self, device_id: str, *, revoke: bool) -> None:
        """Drop the device's registration; `revoke`: refuse its claims until registered again."""
        if revoke:
            self._store.register_claim(device_id, "", REVOKED)
        else:
            self._store.delete_claim(device_id)

    def has_claim(self, device_id: str) -> bool:
        registered = self._store.claim(device_id)
        return registered is not None and registered[1] != REVOKED

    async def handle(self, payload: bytes) -> ClaimAnswer | None:
        """Answer one claim request; None when it has no usable rid (nowhere to answer)."""
        rid: str | None = None
        try:
            if len(payload) > self._max_request:
                rid = oversized_rid(payload)
            data = decode_object(payload, max_bytes=self._max_request)
            rid = optional_rid(data)
            claim = _parse(rid, data)
            body = await self._onboard(claim)
        except NotOwnerError as other:
            log.info("claim %s: %s", rid, other)
            return None
        except RequestError as error:
            self._metrics.claims_rejected += 1
            log.info("claim %s refused: %s %s", rid, error.code, error.message)
            body = error.to_json()
        except DynsecError as error:
            self._metrics.claims_rejected += 1
            log.error("claim %s: the broker did not create the credential: %s", rid, error)  # noqa: TRY400 - expected outage, no traceback
            body = RequestError(Code.UNAVAILABLE, "the broker is unavailable; retry").to_json()
        except Exception:
            log.exception("claim %s: internal error", rid)
            body = RequestError(Code.INTERNAL, "internal error").to_json()
        if rid is None:
            return None
        return ClaimAnswer(topics.provision_response(rid), encode({"rid": rid, **body}))

    def busy_answer(self, payload: bytes) -> ClaimAnswer | None:
        """The answer to a claim that finds the queue full (``unavailable``: retry later)."""
        try:
            data = decode_object(payload, max_bytes=self._max_request)
            rid = optional_rid(data)
        except RequestError:
            return None
        if rid is None or data.get("node") not in (None, self._node):
            return None  # addressed to another node: its agent answers
        self._metrics.claims_rejected += 1
        error = RequestError(Code.UNAVAILABLE, "too many claims at once; retry").to_json()
        return ClaimAnswer(topics.provision_response(rid), encode({"rid": rid, **error}))

    async def _onboard(self, claim: _Claim) -> JsonObject:
        existing = self._twins.device(claim.device_id)
        if existing is not None and existing.state is DeviceState.ACTIVE:
            raise RequestError(
                Code.DUPLICATE_ID,
                f"device {claim.device_id} is already onboarded on node {self._node}: connect "
                "with its credential (an operator moves it to another node with "
                f"POST /api/v1/devices/{self._node}:{claim.device_id}/move)",
            )
        if claim.node is not None and claim.node != self._node:
            raise NotOwnerError(claim.device_id, claim.node, addressed=True)
        await self._reserve(claim.device_id, ours=existing is not None)
        try:
            model = self._check(claim, existing)
        except RequestError:
            await self._dynsec.delete_device(claim.device_id)  # free the reservation
            raise
        now = self._clock()
        record = DeviceRecord(
            device_id=claim.device_id,
            model=model.name,
            state=DeviceState.PROVISIONING,
            created=now,
            replica=self._store.new_replica(),
        )
        await self._twins.commit_device(record, outbox=[])
        sealed = SealedSecrets(
            password=secrets.token_urlsafe(PASSWORD_BYTES),
            client_id=f"{claim.device_id}-{secrets.token_hex(CLIENT_ID_SUFFIX_BYTES)}",
        )
        await self._dynsec.create_device(
            claim.device_id, sealed.password, client_id=sealed.client_id, node=self._node
        )
        active = DeviceRecord(
            device_id=record.device_id,
            model=record.model,
            state=DeviceState.ACTIVE,
            created=now,
            replica=record.replica,
        )
        announce: JsonObject = {
            "kind": "device",
            "origin": self._store.origin,
            "device": claim.device_id,
            "model": model.name,
            "modelVersion": model.version,
            "at": now,
        }
        await self._twins.commit_device(active, outbox=[announce])
        self._metrics.devices_onboarded += 1
        log.info("onboarded device %s (model %s)", claim.device_id, model.name)
        return {
            "code": 200,
            "deviceId": claim.device_id,
            "username": device_username(claim.device_id),
            "topicPrefix": topics.device_prefix(claim.device_id),
            "credential": seal_credential(claim.key, claim.device_id, sealed),
        }

    async def _reserve(self, device_id: str, *, ours: bool) -> None:
        """Make this node the device's owner on the broker, or raise NotOwnerError.

        Every agent on a shared broker receives every claim; the broker's atomic
        ``createClient`` picks exactly one of them (dynsec.reserve_device). The others stay
        silent, so the device gets one answer. A user already owned by this node is a
        half-made onboarding (a crash, or a lost database) and is taken over; one made before
        owners were recorded is ours only if we have the device's row.
        """
        owner = await self._dynsec.reserve_device(device_id, node=self._node)
        if owner is None or owner == self._node or (owner == "" and ours):
            return
        raise NotOwnerError(device_id, owner)

    def _check(self, claim: _Claim, existing: DeviceRecord | None) -> DeviceModel:
        model = self._twins.models.get(claim.model)
        if model is None:
            known = ", ".join(self._twins.models.names())
            raise RequestError(Code.UNKNOWN_MODEL, f"unknown model {claim.model} (known: {known})")
        self._check_claim(claim)
        if existing is None and len(self._twins.device_ids()) >= self._max_devices:
            raise RequestError(
                Code.UNAVAILABLE, f"this agent serves {self._max_devices} devices at most"
            )
        self._outbox.check_room(1)
        return model

    def _check_claim(self, claim: _Claim) -> None:
        registered = self._store.claim(claim.device_id)
        if registered is None:
            if self._require_registration:
                raise RequestError(
                    Code.BAD_CLAIM, f"device {claim.device_id} is not registered for claiming"
                )
            return
        model, digest = registered
        if digest == REVOKED:
            raise RequestError(
                Code.BAD_CLAIM,
                f"device {claim.device_id} was revoked by an operator: it may claim again only"
                " once registered again (POST /api/v1/devices)",
            )
        if model != claim.model:
            raise RequestError(
                Code.BAD_CLAIM, f"device {claim.device_id} is registered as model {model}"
            )
        offered = secret_digest(claim.secret or "")
        if claim.secret is None or not hmac.compare_digest(offered, digest):
            raise RequestError(Code.BAD_CLAIM, "wrong claim secret")


OVERSIZED_SCAN_BYTES = 64 * 1024
"""How far into an oversized claim the agent looks for its ``rid``: a claim is refused
because it is too large, so it is never parsed, and the scan stays linear and bounded."""

_RID_FIELD = re.compile(rb'"rid"\s*:\s*"([A-Za-z0-9._-]{1,64})"')


def oversized_rid(payload: bytes) -> str | None:
    """The ``rid`` of a claim too large to parse, to address its ``too_large`` answer.

    Found only when the payload is a JSON object whose first 64 KiB hold exactly one
    ``"rid": "<rid>"``; with none or several (a nested one could name another device's
    answer topic) there is no safe address, and the claim gets no answer.
    """
    head = payload[:OVERSIZED_SCAN_BYTES]
    if not head.lstrip().startswith(b"{"):
        return None
    found = _RID_FIELD.findall(head)
    return found[0].decode() if len(found) == 1 else None


def _parse(rid: str | None, data: JsonObject) -> _Claim:
    if rid is None:
        raise RequestError(Code.BAD_REQUEST, "rid is required")
    only_fields(data, _FIELDS)
    device_id, model = data.get("deviceId"), data.get("model")
    secret, key_text = data.get("claimSecret"), data.get("responseKey")
    if not isinstance(device_id, str) or not topics.DEVICE_ID.fullmatch(device_id):
        raise RequestError(
            Code.BAD_REQUEST,
            "deviceId must be 1 to 64 of letters, digits and ._- starting with a letter or digit",
        )
    if not isinstance(model, str) or not 0 < len(model) <= 63:
        raise RequestError(Code.BAD_REQUEST, "model must be a model name")
    if secret is not None and (not isinstance(secret, str) or len(secret) > MAX_SECRET_LENGTH):
        raise RequestError(
            Code.BAD_REQUEST, f"claimSecret must be a string of at most {MAX_SECRET_LENGTH}"
        )
    key = b""
    if isinstance(key_text, str) and len(key_text) <= 64:
        try:
            key = b64decode(key_text)
        except (binascii.Error, ValueError):
            key = b""
    if len(key) != KEY_BYTES:
        raise RequestError(
            Code.BAD_REQUEST, f"responseKey must be {KEY_BYTES} random bytes in base64url"
        )
    node = data.get("node")
    if node is not None and (not isinstance(node, str) or not topics.NODE_NAME.fullmatch(node)):
        raise RequestError(Code.BAD_REQUEST, "node must be a node name")
    return _Claim(rid=rid, device_id=device_id, model=model, secret=secret, key=key, node=node)

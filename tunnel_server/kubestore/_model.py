"""The custom resources of the Kubernetes store, their codecs, and the in-memory mirror.

Pure: no I/O, no client. Rules:

- One object per thing the server must change atomically. The Kubernetes API has no
  multi-object transaction, so a node's certificates and its join request live inside its
  ``Node`` object, and a user's tokens inside its ``User`` object: ``issue_pending``,
  ``record_certificate``, ``add_user_token`` (with its per-user bound) are each one write.
- Object names: node and user names are DNS names already and are used as they are (so
  ``kubectl get nodes.edgefleet.io edge-1`` works). Opaque ids (tokens, sessions) are used
  as they are when they are a DNS label that does not start with ``x-``, else as ``x-`` and
  224 bits of the SHA-256 of the id: injective, and the real id is always in the spec.
- Times are UNIX seconds as JSON numbers; the API server may hand a whole number back as an
  integer, so decoders go through ``float``.
- The mirror orders versions of one object by ``resourceVersion`` read as an integer (etcd's
  revision, which is what every kube-apiserver hands out) so that a watch event older than a
  write this process applied already never rolls the mirror back.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from tunnel_server.store import (
    CertificateRecord,
    JoinRequest,
    NodeKind,
    NodeRecord,
    NodeState,
    TokenRecord,
    UserRecord,
    UserTokenRecord,
)

GROUP: Final = "edgefleet.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
META_NAME: Final = "store"
"""The one ``StoreMeta`` object of a namespace."""

Obj = dict[str, Any]
KindName = Literal["BootstrapToken", "Node", "User", "RevokedSession", "APIToken", "StoreMeta"]


@dataclass(frozen=True, kw_only=True)
class Kind:
    name: KindName
    plural: str
    bumps: bool
    """Whether a change of its spec moves ``revision()`` (as the SQLite store bumps it)."""
    has_status: bool


BOOTSTRAP_TOKEN = Kind(
    name="BootstrapToken", plural="bootstraptokens", bumps=True, has_status=False
)
NODE = Kind(name="Node", plural="nodes", bumps=True, has_status=True)
USER = Kind(name="User", plural="users", bumps=True, has_status=False)
REVOKED_SESSION = Kind(
    name="RevokedSession", plural="revokedsessions", bumps=False, has_status=False
)
API_TOKEN = Kind(name="APIToken", plural="apitokens", bumps=True, has_status=False)
STORE_META = Kind(name="StoreMeta", plural="storemetas", bumps=False, has_status=False)
KINDS: Final = (BOOTSTRAP_TOKEN, NODE, USER, REVOKED_SESSION, API_TOKEN, STORE_META)

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def id_name(opaque: str) -> str:
    """The object name for an opaque id (token, session): itself if it is a plain DNS label."""
    if _LABEL.fullmatch(opaque) and not opaque.startswith("x-"):
        return opaque
    # 224 bits of the hash: still collision-free in practice, and the name stays a DNS label.
    return "x-" + hashlib.sha256(opaque.encode()).hexdigest()[:56]


def dns_name(name: str) -> str:
    """A node or user name as an object name; they are validated upstream as DNS names."""
    if not _SUBDOMAIN.fullmatch(name):
        raise ValueError(f"{name!r} is not a DNS name: it cannot name a Kubernetes object")
    return name


def new_object(kind: Kind, name: str, spec: Obj, *, resource_version: str | None = None) -> Obj:
    metadata: Obj = {"name": name}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": API_VERSION, "kind": kind.name, "metadata": metadata, "spec": spec}


def _opt(value: float | None) -> float | None:
    return None if value is None else float(value)


def _drop_none(values: Obj) -> Obj:
    # Optional fields are left out rather than sent as null: the schemas do not say nullable.
    return {k: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------- codecs


def token_spec(token: TokenRecord) -> Obj:
    return _drop_none(
        {
            "tokenId": token.id,
            "secretHash": token.secret_hash,
            "kind": token.kind,
            "nodeName": token.name,
            "createdAt": token.created_at,
            "expiresAt": token.expires_at,
            "requireApproval": token.require_approval,
            "usedAt": token.used_at,
            "revokedAt": token.revoked_at,
        }
    )


def token_record(obj: Obj) -> TokenRecord:
    spec = obj["spec"]
    return TokenRecord(
        id=spec["tokenId"],
        secret_hash=spec["secretHash"],
        kind=cast("NodeKind", spec["kind"]),
        name=spec["nodeName"],
        created_at=float(spec["createdAt"]),
        expires_at=float(spec["expiresAt"]),
        require_approval=bool(spec["requireApproval"]),
        used_at=_opt(spec.get("usedAt")),
        revoked_at=_opt(spec.get("revokedAt")),
    )


def node_spec(node: NodeRecord) -> Obj:
    """A new node's spec: no certificate or request yet (they are added to it before writing)."""
    return {
        "kind": node.kind,
        "state": node.state,
        "createdAt": node.created_at,
        "certificates": [],
    }


def cert_entry(certificate: CertificateRecord) -> Obj:
    return {
        "serial": certificate.serial,
        "notAfter": certificate.not_after,
        "issuedAt": certificate.issued_at,
    }


def with_certificate(spec: Obj, certificate: CertificateRecord) -> Obj:
    """The node's spec with ``certificate`` added and made current."""
    certificates = [c for c in spec.get("certificates", []) if c["serial"] != certificate.serial]
    certificates.append(cert_entry(certificate))
    return {
        **spec,
        "certificates": certificates,
        "certSerial": certificate.serial,
        "certNotAfter": certificate.not_after,
    }


def request_entry(request: JoinRequest) -> Obj:
    return _drop_none(
        {
            "id": request.id,
            "kind": request.kind,
            "csrPem": request.csr_pem,
            "pollHash": request.poll_hash,
            "createdAt": request.created_at,
            "expiresAt": request.expires_at,
            "certificatePem": request.certificate_pem,
        }
    )


def node_record(obj: Obj) -> NodeRecord:
    spec, status = obj["spec"], obj.get("status") or {}
    return NodeRecord(
        name=obj["metadata"]["name"],
        kind=cast("NodeKind", spec["kind"]),
        state=cast("NodeState", spec["state"]),
        created_at=float(spec["createdAt"]),
        cert_serial=spec.get("certSerial"),
        cert_not_after=_opt(spec.get("certNotAfter")),
        last_seen=_opt(status.get("lastSeen")),
        agent_version=status.get("agentVersion"),
    )


def certificate_record(obj: Obj, serial: str) -> CertificateRecord | None:
    for entry in obj["spec"].get("certificates", []):
        if entry["serial"] == serial:
            return CertificateRecord(
                serial=serial,
                name=obj["metadata"]["name"],
                not_after=float(entry["notAfter"]),
                issued_at=float(entry["issuedAt"]),
            )
    return None


def join_request(obj: Obj) -> JoinRequest | None:
    entry = obj["spec"].get("joinRequest")
    if entry is None:
        return None
    return JoinRequest(
        id=entry["id"],
        name=obj["metadata"]["name"],
        kind=cast("NodeKind", entry["kind"]),
        csr_pem=entry["csrPem"],
        poll_hash=entry["pollHash"],
        created_at=float(entry["createdAt"]),
        expires_at=float(entry["expiresAt"]),
        certificate_pem=entry.get("certificatePem"),
    )


def user_spec(user: UserRecord) -> Obj:
    return _drop_none(
        {
            "userId": user.id,
            "role": user.role,
            "clusters": None if user.clusters is None else list(user.clusters),
            "createdAt": user.created_at,
            "expiresAt": user.expires_at,
            "revokedAt": user.revoked_at,
            "tokens": [],
        }
    )


def user_record(obj: Obj, *, now: float | None = None) -> UserRecord:
    """The user; with ``now``, with the count of its tokens unexpired then (none if revoked)."""
    spec = obj["spec"]
    clusters = spec.get("clusters")
    revoked = _opt(spec.get("revokedAt"))
    live = 0
    if now is not None and revoked is None:
        live = sum(1 for t in spec.get("tokens", []) if float(t["expiresAt"]) > now)
    return UserRecord(
        id=spec["userId"],
        name=obj["metadata"]["name"],
        role=spec["role"],
        clusters=None if clusters is None else tuple(clusters),
        created_at=float(spec["createdAt"]),
        expires_at=float(spec["expiresAt"]),
        revoked_at=revoked,
        tokens=live,
    )


def user_token_entry(token: UserTokenRecord) -> Obj:
    return {
        "id": token.id,
        "secretHash": token.secret_hash,
        "createdAt": token.created_at,
        "expiresAt": token.expires_at,
    }


def user_token_record(obj: Obj, token_id: str) -> UserTokenRecord | None:
    for entry in obj["spec"].get("tokens", []):
        if entry["id"] == token_id:
            return UserTokenRecord(
                id=token_id,
                user_id=obj["spec"]["userId"],
                secret_hash=entry["secretHash"],
                created_at=float(entry["createdAt"]),
                expires_at=float(entry["expiresAt"]),
            )
    return None


# ---------------------------------------------------------------- the mirror

Index = Literal["token", "cert", "request", "user_id", "user_token", "session", "api_token"]


def _index_keys(kind: Kind, obj: Obj) -> list[tuple[Index, str]]:
    spec = obj.get("spec") or {}
    if kind is BOOTSTRAP_TOKEN:
        return [("token", spec["tokenId"])]
    if kind is NODE:
        keys: list[tuple[Index, str]] = [
            ("cert", c["serial"]) for c in spec.get("certificates", [])
        ]
        if spec.get("joinRequest") is not None:
            keys.append(("request", spec["joinRequest"]["id"]))
        return keys
    if kind is USER:
        return [("user_id", spec["userId"])] + [("user_token", t["id"]) for t in spec["tokens"]]
    if kind is REVOKED_SESSION:
        return [("session", spec["sessionId"])]
    if kind is API_TOKEN:
        return [("api_token", spec["tokenId"])]
    return []


def _version(obj: Obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


class Mirror:
    """Every object of the store's kinds in one namespace, as last seen; thread-safe.

    Fed by the watch thread and by the writes of this process (their answers), in any order:
    a version older than the one held is ignored, a deletion leaves a tombstone so that a late
    event cannot bring the object back. ``revision`` counts the changes that matter (a new,
    deleted, or re-specced object of a bumping kind; heartbeats touch ``status`` only).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Obj]] = {kind.name: {} for kind in KINDS}
        self._tombstones: dict[tuple[str, str], int] = {}
        self._index: dict[tuple[Index, str], str] = {}
        self._revision = 0

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, kind: Kind, name: str) -> Obj | None:
        with self._lock:
            return self._objects[kind.name].get(name)

    def find(self, index: Index, key: str) -> str | None:
        """The name of the object holding ``key`` in ``index`` (e.g. a certificate's node)."""
        with self._lock:
            return self._index.get((index, key))

    def all(self, kind: Kind) -> list[Obj]:
        with self._lock:
            return list(self._objects[kind.name].values())

    def put(self, kind: Kind, obj: Obj) -> bool:
        """Apply an object as written or watched; whether the mirror changed."""
        name, version = obj["metadata"]["name"], _version(obj)
        with self._lock:
            if self._tombstones.get((kind.name, name), -1) >= version:
                return False
            self._tombstones.pop((kind.name, name), None)
            old = self._objects[kind.name].get(name)
            if old is not None and _version(old) >= version:
                return False
            self._replace(kind, name, old, obj)
            return True

    def delete(self, kind: Kind, obj: Obj) -> bool:
        """Apply a deletion (the object as last seen, or the DELETED event's)."""
        name, version = obj["metadata"]["name"], _version(obj)
        with self._lock:
            old = self._objects[kind.name].get(name)
            if old is not None and _version(old) > version:
                return False  # a deletion older than the object held: it came back since
            self._tombstones[(kind.name, name)] = version
            if old is None:
                return False
            self._replace(kind, name, old, None)
            return True

    def reset(self, kind: Kind, objects: list[Obj]) -> None:
        """Replace every object of ``kind`` by a fresh list (after a relist)."""
        with self._lock:
            fresh = {o["metadata"]["name"]: o for o in objects}
            for name, gone in list(self._objects[kind.name].items()):
                if name not in fresh:
                    self._replace(kind, name, gone, None)
            for name, obj in fresh.items():
                old = self._objects[kind.name].get(name)
                if old is None or _version(old) != _version(obj):
                    self._replace(kind, name, old, obj)
            self._tombstones = {k: v for k, v in self._tombstones.items() if k[0] != kind.name}

    def _replace(self, kind: Kind, name: str, old: Obj | None, new: Obj | None) -> None:
        if old is not None:
            for key in _index_keys(kind, old):
                if self._index.get(key) == name:
                    del self._index[key]
            del self._objects[kind.name][name]
        if new is not None:
            self._objects[kind.name][name] = new
            for key in _index_keys(kind, new):
                self._index[key] = name
        if kind.bumps and (
            old is None
            or new is None
            or old["metadata"].get("generation") != new["metadata"].get("generation")
        ):
            self._revision += 1

"""``KubeStore``: the ``Store`` Protocol on custom resources of ``edgefleet.io`` in one namespace.

Rules:

- Reads come from an in-memory mirror (``_model.Mirror``) kept current by one watch per kind
  (list, then watch from the list's resourceVersion; any error or 410 Gone: list again). The
  watches run on their own thread and event loop, because the Store Protocol is synchronous
  and the store is opened before the server's loop exists; ``close()`` stops them.
- Writes are synchronous calls. A read-modify-write always reads the object from the API
  (not the mirror, which may lag) and writes it back with its resourceVersion: a 409 means
  another writer came first, and the operation is retried from the fresh object (bounded);
  when the operation is not idempotent the fresh object decides (a token someone redeemed
  meanwhile is ``TokenUsedError``). Each write's answer is put into the mirror at once, so a
  replica reads its own writes; the watch brings every other replica's.
- ``redeem_token`` is single-use across replicas: the token's ``usedAt`` is written with
  the token's resourceVersion before the node is created, so of two replicas racing exactly
  one wins. If the node cannot be created then (its name was taken meanwhile), the token is
  released again and ``NameTakenError`` raised. A crash between the two writes leaves the
  token used with no node: the operator issues another token (there is no multi-object
  transaction in the Kubernetes API; this is the smallest window it allows).
- Heartbeats (``touch_node``) write the ``status`` subresource only, at most every
  ``touch_interval`` per node unless the agent version changes: high-rate data stays out of
  etcd (issue 17), and a status write never moves ``revision()``. They are not written on
  the caller's thread: ``touch_node`` queues the patch (one per node, the latest wins) and the
  watch thread writes it, so a heartbeat never waits for the API; while the API is
  unreachable the patches wait and are written when it answers again.
- An API server that is down never stalls the caller (the event loop) for long: a call that
  does not reach it (refused, reset, timed out; ``connect_timeout`` 2 s to connect) marks it
  unreachable (``reach.Reach``), and every write then fails at once with
  ``StoreUnavailableError`` (a ``StoreError``; the REST API answers 503) until the watch
  thread's probe or list gets an answer again.
- Secrets are never stored: tokens arrive hashed (SHA-256, as for ``SqliteStore``).
- ``import_object``, ``import_meta`` and ``import_ca`` are for ``tunnel-server migrate``
  only (``kubestore.migrate``): they write objects made elsewhere as they are, never over
  other content unless forced. The server never calls them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from lightkube import ApiError, AsyncClient, Client, ConfigError, KubeConfig
from lightkube.generic_resource import (
    GenericNamespacedResource,
    create_namespaced_resource,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from tunnel_server.kubestore import _model as m
from tunnel_server.kubestore.reach import Reach, StoreUnavailableError
from tunnel_server.kubestore.settings import KubeStoreSettings
from tunnel_server.kubestore.watch_thread import (
    WatchThread,
    call_api,
    client_timeout,
    is_unreachable,
)
from tunnel_server.store import (
    CertificateRecord,
    DuplicateIdError,
    JoinRequest,
    NameTakenError,
    NodeRecord,
    NodeState,
    NotFoundError,
    StoreError,
    TokenRecord,
    TokenUsedError,
    UserExistsError,
    UserRecord,
    UserTokenRecord,
    WrongStateError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

log = logging.getLogger("tunnel_server.kubestore")
# httpx2 logs every request at INFO: one line per heartbeat write would drown the server's log.
logging.getLogger("httpx2").setLevel(logging.WARNING)

FIELD_MANAGER = "tunnel-server"
CA_SECRET = "edgefleet-ca"  # noqa: S105 - a Secret's name, not a password
"""The Secret holding the CA certificate and key every replica signs with."""
WATCH_GRACE = 30.0
"""Seconds past the server's own watch timeout before a silent watch counts as dead."""
CA_FILES = ("ca.crt", "ca.key")
"""Its keys, named as the files of the data dir (tunnel_server.identity.pki)."""


ImportOutcome = Literal["created", "unchanged", "conflict", "replaced"]
"""What ``import_*`` did (or, in a dry run, would do) with one object."""


class _ConflictError(Exception):
    """409: the object changed since it was read, or one of the name exists already."""


_RESOURCES: dict[str, type[GenericNamespacedResource]] = {
    kind.name: create_namespaced_resource(m.GROUP, m.VERSION, kind.name, kind.plural)
    for kind in m.KINDS
}


def _res(kind: m.Kind) -> type[GenericNamespacedResource]:
    return _RESOURCES[kind.name]


def _config(settings: KubeStoreSettings) -> KubeConfig:
    where = settings.kubeconfig or "the pod's service account (in-cluster)"
    try:
        if settings.kubeconfig is not None:
            return KubeConfig.from_file(settings.kubeconfig)
        return KubeConfig.from_service_account()
    except (OSError, ConfigError, ValueError, KeyError) as error:
        raise StoreError(
            f"cannot reach the Kubernetes API with {where} ({error}): give --kubeconfig, or run"
            " in a pod"
        ) from error


def client_config(settings: KubeStoreSettings) -> KubeConfig:
    """The client configuration the store uses (for the replicas' Leases: the same identity)."""
    return _config(settings)


def _as_obj(resource: Any) -> m.Obj:  # noqa: ANN401 - lightkube's generic objects are dicts
    return dict(resource.to_dict())


class KubeStore:
    """``Store`` on the Kubernetes API: every replica opens one on the same namespace."""

    def __init__(self, settings: KubeStoreSettings) -> None:
        self.settings = settings
        self._ns = settings.namespace
        config = _config(settings)
        self._client = Client(
            config,
            namespace=self._ns,
            timeout=client_timeout(settings),
            field_manager=FIELD_MANAGER,
        )
        self._mirror = m.Mirror()
        self.reach = Reach(retry_after=settings.retry_after)
        self._status = _StatusWrites()
        self._watcher = _Watcher(
            config=config,
            settings=settings,
            mirror=self._mirror,
            reach=self.reach,
            status=self._status,
        )

    @classmethod
    def open(cls, settings: KubeStoreSettings) -> KubeStore:
        """Connect, list every kind, and start the watches; StoreError if the API says no."""
        store = cls(settings)
        try:
            store._watcher.start_and_wait()
        except BaseException:
            store.close()
            raise
        return store

    # ------------------------------------------------------------------ API calls

    def _call(self, what: str, call: Callable[[], Any]) -> Any:  # noqa: ANN401 - lightkube's
        return call_api(
            self.reach,
            what,
            call,
            unavailable=StoreUnavailableError,
            failed=StoreError,
            conflict=_ConflictError,
            gone=NotFoundError,
        )

    def _read(self, kind: m.Kind, name: str) -> m.Obj | None:
        try:
            obj = _as_obj(
                self._call(
                    f"get {kind.plural}/{name}",
                    lambda: self._client.get(_res(kind), name, namespace=self._ns),
                )
            )
        except NotFoundError:
            return None
        self._mirror.put(kind, obj)
        return obj

    def _create(self, kind: m.Kind, obj: m.Obj) -> m.Obj:
        resource = _res(kind).from_dict(obj)
        name = obj["metadata"]["name"]
        created = _as_obj(
            self._call(
                f"create {kind.plural}/{name}",
                lambda: self._client.create(resource, namespace=self._ns),
            )
        )
        self._mirror.put(kind, created)
        return created

    def _replace(self, kind: m.Kind, obj: m.Obj) -> m.Obj:
        """PUT with the object's resourceVersion: raises _ConflictError if it changed meanwhile."""
        obj["metadata"]["namespace"] = self._ns
        resource = _res(kind).from_dict(obj)
        name = obj["metadata"]["name"]
        replaced = _as_obj(
            self._call(f"replace {kind.plural}/{name}", lambda: self._client.replace(resource))
        )
        self._mirror.put(kind, replaced)
        return replaced

    def _patch_status(self, kind: m.Kind, name: str, status: m.Obj) -> None:
        patched = _as_obj(
            self._call(
                f"patch {kind.plural}/{name}/status",
                lambda: self._client.patch(
                    _res(kind).Status,
                    name,
                    {"status": status},
                    namespace=self._ns,
                    patch_type=PatchType.MERGE,
                ),
            )
        )
        self._mirror.put(kind, patched)

    def _delete(self, kind: m.Kind, obj: m.Obj) -> None:
        name = obj["metadata"]["name"]
        with contextlib.suppress(NotFoundError):  # gone already: what we wanted
            self._call(
                f"delete {kind.plural}/{name}",
                lambda: self._client.delete(_res(kind), name, namespace=self._ns),
            )
        self._mirror.delete(kind, obj)

    def _update(self, kind: m.Kind, name: str, change: Callable[[m.Obj], m.Obj | None]) -> m.Obj:
        """Read-modify-write under optimistic concurrency; ``change`` may raise to refuse.

        ``change`` gets a copy of the object as the API has it now and returns the new one,
        or None when there is nothing to write. NotFoundError if there is no such object.
        """
        for _ in range(self.settings.conflict_retries):
            current = self._read(kind, name)
            if current is None:
                raise NotFoundError(f"no {kind.name} named {name!r}")
            new = change(copy.deepcopy(current))
            if new is None:
                return current
            try:
                return self._replace(kind, new)
            except _ConflictError:
                log.debug("conflict writing %s/%s: reading it again", kind.plural, name)
        return self._too_busy(kind, name)

    def _too_busy(self, kind: m.Kind, name: str) -> NoReturn:
        raise StoreError(
            f"{kind.plural}/{name} changed under {self.settings.conflict_retries} attempts in a"
            " row: too many writers at once, try again"
        )

    # ------------------------------------------------------------------ meta

    def revision(self) -> int:
        return self._mirror.revision

    def _meta(self) -> dict[str, str]:
        obj = self._mirror.get(m.STORE_META, m.META_NAME)
        return {} if obj is None else dict(obj["spec"].get("values", {}))

    def get_meta(self, key: str) -> str | None:
        return self._meta().get(key)

    def _update_meta(self, values: dict[str, str]) -> dict[str, str]:
        """Set meta keys; return the values as they were."""
        for _ in range(self.settings.conflict_retries):
            current = self._read(m.STORE_META, m.META_NAME)
            try:
                if current is None:
                    self._create(
                        m.STORE_META, m.new_object(m.STORE_META, m.META_NAME, {"values": values})
                    )
                    return {}
                old = dict(current["spec"].get("values", {}))
                current["spec"]["values"] = {**old, **values}
                self._replace(m.STORE_META, current)
            except _ConflictError:
                continue
            return old
        return self._too_busy(m.STORE_META, m.META_NAME)

    def set_meta(self, key: str, value: str) -> None:
        self._update_meta({key: value})

    # ------------------------------------------------------------------ tokens

    def add_token(self, token: TokenRecord) -> None:
        obj = m.new_object(m.BOOTSTRAP_TOKEN, m.id_name(token.id), m.token_spec(token))
        try:
            self._create(m.BOOTSTRAP_TOKEN, obj)
        except _ConflictError:
            raise DuplicateIdError(f"token id {token.id} exists") from None

    def _token_obj(self, token_id: str) -> m.Obj | None:
        obj = self._mirror.get(m.BOOTSTRAP_TOKEN, m.id_name(token_id))
        return obj if obj is not None and obj["spec"]["tokenId"] == token_id else None

    def get_token(self, token_id: str) -> TokenRecord | None:
        obj = self._token_obj(token_id)
        return None if obj is None else m.token_record(obj)

    def list_tokens(self) -> list[TokenRecord]:
        records = [m.token_record(o) for o in self._mirror.all(m.BOOTSTRAP_TOKEN)]
        return sorted(records, key=lambda t: (t.created_at, t.id))

    def revoke_token(self, token_id: str, *, now: float) -> TokenRecord:
        def revoke(obj: m.Obj) -> m.Obj | None:
            spec = obj["spec"]
            if spec.get("usedAt") is not None:
                raise TokenUsedError(token_id)
            if spec.get("revokedAt") is not None:
                return None
            spec["revokedAt"] = now
            return obj

        try:
            return m.token_record(self._update(m.BOOTSTRAP_TOKEN, m.id_name(token_id), revoke))
        except NotFoundError:
            raise NotFoundError(f"no bootstrap token {token_id!r}") from None

    def add_api_token(self, *, token_id: str, secret_hash: str, role: str, now: float) -> None:
        spec = {"tokenId": token_id, "secretHash": secret_hash, "role": role, "createdAt": now}
        try:
            self._create(m.API_TOKEN, m.new_object(m.API_TOKEN, m.id_name(token_id), spec))
        except _ConflictError:
            raise DuplicateIdError(f"api token id {token_id} exists") from None

    def get_api_token_hash(self, token_id: str) -> str | None:
        obj = self._mirror.get(m.API_TOKEN, m.id_name(token_id))
        if obj is None or obj["spec"]["tokenId"] != token_id:
            return None
        return str(obj["spec"]["secretHash"])

    def rotate_admin_token(self, *, token_id: str, secret_hash: str, now: float) -> str | None:
        # Three writes, in the order that never leaves the server without a working admin
        # token: the new token, then meta pointing at it, then the old ones deleted.
        self.add_api_token(token_id=token_id, secret_hash=secret_hash, role="admin", now=now)
        old = self._update_meta({"admin_token_id": token_id, "admin_token_rotated_at": repr(now)})
        listed = self._call(
            "list apitokens", lambda: list(self._client.list(_res(m.API_TOKEN), namespace=self._ns))
        )
        for resource in listed:
            obj = _as_obj(resource)
            if obj["spec"]["role"] == "admin" and obj["spec"]["tokenId"] != token_id:
                self._delete(m.API_TOKEN, obj)
        return old.get("admin_token_id")

    # ------------------------------------------------------------------ nodes

    def get_node(self, name: str) -> NodeRecord | None:
        obj = self._mirror.get(m.NODE, name)
        return None if obj is None else m.node_record(obj)

    def list_nodes(self) -> list[NodeRecord]:
        return sorted((m.node_record(o) for o in self._mirror.all(m.NODE)), key=lambda n: n.name)

    def set_node_state(self, name: str, state: NodeState) -> NodeRecord:
        def change(obj: m.Obj) -> m.Obj:
            obj["spec"]["state"] = state
            return obj

        try:
            return m.node_record(self._update(m.NODE, m.dns_name(name), change))
        except NotFoundError:
            raise NotFoundError(f"no node named {name!r}") from None

    def change_node_state(
        self, name: str, state: NodeState, *, only_from: tuple[NodeState, ...]
    ) -> NodeRecord:
        def change(obj: m.Obj) -> m.Obj | None:
            node = m.node_record(obj)
            if node.state not in only_from:
                raise WrongStateError(node)
            if node.state == state:
                return None
            obj["spec"]["state"] = state
            return obj

        try:
            return m.node_record(self._update(m.NODE, m.dns_name(name), change))
        except NotFoundError:
            raise NotFoundError(f"no node named {name!r}") from None

    def touch_node(self, name: str, *, now: float, agent_version: str | None = None) -> None:
        obj = self._mirror.get(m.NODE, name)
        if obj is None:
            return  # as SQLite's UPDATE of no row: a node deleted meanwhile is no error
        status = self._status.merged(name, obj.get("status") or {})
        seen = status.get("lastSeen")
        if (
            seen is not None
            and now - float(seen) < self.settings.touch_interval
            and agent_version in (None, status.get("agentVersion"))
        ):
            return
        patch: m.Obj = {"lastSeen": now}
        if agent_version is not None:
            patch["agentVersion"] = agent_version
        # Written by the watch thread, never here: a heartbeat must not wait for the API.
        self._status.add(name, patch)
        self._watcher.wake_status()

    def touch_nodes(self, names: list[str], *, now: float) -> None:
        # One call per node whose lastSeen is older than touch_interval: not one transaction
        # as in SQLite, but each write stands alone (no revision, nothing depends on them).
        for name in names:
            self.touch_node(name, now=now)

    def redeem_token(
        self,
        token_id: str,
        *,
        now: float,
        node: NodeRecord,
        certificate: CertificateRecord | None = None,
        request: JoinRequest | None = None,
    ) -> None:
        name = m.dns_name(node.name)
        spec = m.node_spec(node)
        if certificate is not None:
            spec = m.with_certificate(spec, certificate)
        if request is not None:
            spec["joinRequest"] = m.request_entry(request)
        for _ in range(self.settings.conflict_retries):
            token = self._read(m.BOOTSTRAP_TOKEN, m.id_name(token_id))
            if token is None or token["spec"]["tokenId"] != token_id:
                raise TokenUsedError(token_id)
            held = token["spec"]
            if held.get("usedAt") is not None or held.get("revokedAt") is not None:
                raise TokenUsedError(token_id)
            existing = self._read(m.NODE, name)
            if existing is not None and existing["spec"]["state"] != "revoked":
                raise NameTakenError(name, existing["spec"]["state"])
            token["spec"]["usedAt"] = now
            try:
                token = self._replace(m.BOOTSTRAP_TOKEN, token)
            except _ConflictError:
                continue  # redeemed or revoked meanwhile (read again to say which), or a retry
            self._create_node(name, spec, existing, token, node)
            return
        self._too_busy(m.BOOTSTRAP_TOKEN, token_id)

    def _create_node(
        self, name: str, spec: m.Obj, existing: m.Obj | None, token: m.Obj, node: NodeRecord
    ) -> None:
        try:
            if existing is None:
                self._create(m.NODE, m.new_object(m.NODE, name, spec))
            else:  # a revoked node is replaced whole, certificates and request with it
                rv = existing["metadata"]["resourceVersion"]
                self._replace(m.NODE, m.new_object(m.NODE, name, spec, resource_version=rv))
        except _ConflictError:
            self._release_token(token)
            now = self._read(m.NODE, name)
            raise NameTakenError(name, "pending" if now is None else now["spec"]["state"]) from None
        if existing is not None or node.agent_version is not None:
            # Status is not written by create or replace: clear the old node's, set the new one's.
            self._patch_status(m.NODE, name, {"lastSeen": None, "agentVersion": node.agent_version})

    def _release_token(self, token: m.Obj) -> None:
        used_at = token["spec"]["usedAt"]

        def release(obj: m.Obj) -> m.Obj | None:
            if obj["spec"].get("usedAt") != used_at:
                return None
            del obj["spec"]["usedAt"]
            return obj

        self._update(m.BOOTSTRAP_TOKEN, token["metadata"]["name"], release)

    # ------------------------------------------------------------------ certificates

    def record_certificate(self, certificate: CertificateRecord) -> None:
        def change(obj: m.Obj) -> m.Obj:
            spec = m.with_certificate(obj["spec"], certificate)
            # Expired certificates can never authenticate again: forget them.
            spec["certificates"] = [
                c for c in spec["certificates"] if float(c["notAfter"]) >= certificate.issued_at
            ]
            obj["spec"] = spec
            return obj

        try:
            self._update(m.NODE, m.dns_name(certificate.name), change)
        except NotFoundError:
            raise NotFoundError(f"no node named {certificate.name!r}") from None

    def get_certificate(self, serial: str) -> CertificateRecord | None:
        name = self._mirror.find("cert", serial)
        obj = None if name is None else self._mirror.get(m.NODE, name)
        return None if obj is None else m.certificate_record(obj, serial)

    # ------------------------------------------------------------------ join requests

    def get_join_request(self, request_id: str) -> JoinRequest | None:
        name = self._mirror.find("request", request_id)
        obj = None if name is None else self._mirror.get(m.NODE, name)
        return None if obj is None else m.join_request(obj)

    def issue_pending(
        self, request_id: str, *, certificate: CertificateRecord, certificate_pem: str
    ) -> None:
        missing = NotFoundError(f"no unissued join request {request_id!r}")
        name = self._mirror.find("request", request_id)
        if name is None:
            raise missing

        def issue(obj: m.Obj) -> m.Obj:
            entry = obj["spec"].get("joinRequest")
            if entry is None or entry["id"] != request_id or entry.get("certificatePem"):
                raise missing
            entry["certificatePem"] = certificate_pem
            obj["spec"] = m.with_certificate(obj["spec"], certificate)
            return obj

        try:
            self._update(m.NODE, name, issue)
        except NotFoundError:
            raise missing from None

    # ------------------------------------------------------------------ console sessions

    def revoke_session(self, session_id: str, *, expires_at: float, now: float) -> None:
        for obj in self._mirror.all(m.REVOKED_SESSION):
            if float(obj["spec"]["expiresAt"]) <= now:
                self._delete(m.REVOKED_SESSION, obj)
        if expires_at <= now:
            return
        spec = {"sessionId": session_id, "expiresAt": expires_at}
        obj = m.new_object(m.REVOKED_SESSION, m.id_name(session_id), spec)
        with contextlib.suppress(_ConflictError):  # revoked already: idempotent
            self._create(m.REVOKED_SESSION, obj)

    def session_revoked(self, session_id: str) -> bool:
        obj = self._mirror.get(m.REVOKED_SESSION, m.id_name(session_id))
        return obj is not None and obj["spec"]["sessionId"] == session_id

    # ------------------------------------------------------------------ users

    def add_user(self, user: UserRecord) -> None:
        name = m.dns_name(user.name)
        for _ in range(self.settings.conflict_retries):
            existing = self._read(m.USER, name)
            if existing is not None and existing["spec"].get("revokedAt") is None:
                raise UserExistsError(user.name)
            holder = self._mirror.find("user_id", user.id)
            if holder is not None and (existing is None or existing["spec"]["userId"] != user.id):
                raise DuplicateIdError(f"user id {user.id} exists")
            try:
                if existing is None:
                    self._create(m.USER, m.new_object(m.USER, name, m.user_spec(user)))
                else:  # a revoked user is replaced, its tokens with it
                    rv = existing["metadata"]["resourceVersion"]
                    new = m.new_object(m.USER, name, m.user_spec(user), resource_version=rv)
                    self._replace(m.USER, new)
            except _ConflictError:
                continue
            return
        self._too_busy(m.USER, name)

    def get_user(self, name: str, *, now: float) -> UserRecord | None:
        obj = self._mirror.get(m.USER, name)
        return None if obj is None else m.user_record(obj, now=now)

    def get_user_by_id(self, user_id: str) -> UserRecord | None:
        name = self._mirror.find("user_id", user_id)
        obj = None if name is None else self._mirror.get(m.USER, name)
        return None if obj is None else m.user_record(obj)

    def list_users(self, *, now: float) -> list[UserRecord]:
        users = (m.user_record(o, now=now) for o in self._mirror.all(m.USER))
        return sorted(users, key=lambda u: u.name)

    def add_user_token(self, token: UserTokenRecord, *, now: float, max_tokens: int) -> None:
        missing = NotFoundError(f"no active user with id {token.user_id!r}")
        name = self._mirror.find("user_id", token.user_id)
        if name is None:
            raise missing
        if self._mirror.find("user_token", token.id) is not None:
            raise DuplicateIdError(f"user token id {token.id} exists")

        def add(obj: m.Obj) -> m.Obj:
            spec = obj["spec"]
            if spec["userId"] != token.user_id or spec.get("revokedAt") is not None:
                raise missing
            held = [t for t in spec.get("tokens", []) if float(t["expiresAt"]) > now]
            if len(held) >= max_tokens:
                raise StoreError(
                    f"the user holds {len(held)} unexpired tokens, the most allowed: revoke it"
                    " and create it again to start afresh"
                )
            spec["tokens"] = [*held, m.user_token_entry(token)]
            return obj

        try:
            self._update(m.USER, name, add)
        except NotFoundError:
            raise missing from None

    def get_user_token(self, token_id: str) -> tuple[UserTokenRecord, UserRecord] | None:
        name = self._mirror.find("user_token", token_id)
        obj = None if name is None else self._mirror.get(m.USER, name)
        token = None if obj is None else m.user_token_record(obj, token_id)
        if obj is None or token is None:
            return None
        return token, m.user_record(obj)

    def revoke_user(self, name: str, *, now: float) -> UserRecord:
        def revoke(obj: m.Obj) -> m.Obj | None:
            if obj["spec"].get("revokedAt") is not None:
                return None
            obj["spec"]["revokedAt"] = now
            return obj

        try:
            return m.user_record(self._update(m.USER, m.dns_name(name), revoke))
        except NotFoundError:
            raise NotFoundError(f"no user named {name!r}") from None

    # ------------------------------------------------------------------ the CA

    def fetch_ca(self, data_dir: Path) -> bool:
        """Write the shared CA from its Secret into ``data_dir``; False if there is none yet."""
        try:
            secret = self._call(
                f"get secret {CA_SECRET}",
                lambda: self._client.get(Secret, CA_SECRET, namespace=self._ns),
            )
        except NotFoundError:
            return False
        data = secret.data or {}
        if any(name not in data for name in CA_FILES):
            raise StoreError(f"secret {CA_SECRET} lacks one of {', '.join(CA_FILES)}")
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in CA_FILES:
            _write_private(data_dir / name, base64.b64decode(data[name]))
        return True

    def publish_ca(self, data_dir: Path) -> bool:
        """Store ``data_dir``'s CA as the shared one; False if another replica's came first.

        Then that one is in ``data_dir`` now (the caller loads the CA again).
        """
        data = {n: base64.b64encode((data_dir / n).read_bytes()).decode() for n in CA_FILES}
        secret = Secret(
            metadata=ObjectMeta(name=CA_SECRET, namespace=self._ns), type="Opaque", data=data
        )
        try:
            self._call(f"create secret {CA_SECRET}", lambda: self._client.create(secret))
        except _ConflictError:
            self.fetch_ca(data_dir)
            return False
        return True

    # ------------------------------------------------------------------ migrate's imports

    def import_object(
        self, kind: m.Kind, obj: m.Obj, *, force: bool = False, dry_run: bool = False
    ) -> ImportOutcome:
        """Write ``obj`` exactly as given (``tunnel-server migrate``); what was or would be done.

        An object of that name with the same spec is ``unchanged`` (its status is completed
        if a first run stopped between the create and the status write); with another spec
        it is a ``conflict`` and left alone, unless ``force`` replaces it. ``dry_run`` reads
        only.
        """
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        for attempt in range(self.settings.conflict_retries):
            # First from the mirror (listed at open: one call per object saved); a write it
            # misled ends in 409, and then the object is read from the API.
            current = self._mirror.get(kind, name) if attempt == 0 else self._read(kind, name)
            if current is not None and same_content(current["spec"], obj["spec"]):
                missing = {
                    k: v for k, v in status.items() if k not in (current.get("status") or {})
                }
                if missing and not dry_run:
                    self._patch_status(kind, name, missing)
                return "unchanged"
            if current is not None and not force:
                if attempt == 0:
                    continue  # the API, not the mirror, has the last word on a conflict
                return "conflict"
            if dry_run:
                return "created" if current is None else "replaced"
            new = {k: v for k, v in obj.items() if k != "status"}
            try:
                if current is None:
                    self._create(kind, new)
                else:
                    rv = current["metadata"]["resourceVersion"]
                    new["metadata"] = {**new["metadata"], "resourceVersion": rv}
                    self._replace(kind, new)
            except _ConflictError:
                continue  # made or changed meanwhile: judge it again
            if status:
                self._patch_status(kind, name, status)
            return "created" if current is None else "replaced"
        return self._too_busy(kind, name)

    def import_meta(
        self, values: dict[str, str], *, force: bool = False, dry_run: bool = False
    ) -> tuple[ImportOutcome, list[str]]:
        """Add meta keys (``tunnel-server migrate``); the outcome and the keys in conflict.

        Keys the target lacks are added; a key it holds with another value is a conflict (the
        target keeps it) unless ``force``; keys only the target has are kept.
        """
        for _ in range(self.settings.conflict_retries):
            current = self._read(m.STORE_META, m.META_NAME)
            held = {} if current is None else dict(current["spec"].get("values", {}))
            differ = sorted(k for k, v in values.items() if k in held and held[k] != v)
            if differ and not force:
                return "conflict", differ
            if all(held.get(k) == v for k, v in values.items()):
                return "unchanged", []
            outcome: ImportOutcome = "replaced" if differ else "created"
            if dry_run:
                return outcome, differ
            try:
                if current is None:
                    spec = {"values": values}
                    self._create(m.STORE_META, m.new_object(m.STORE_META, m.META_NAME, spec))
                else:
                    current["spec"]["values"] = {**held, **values}
                    self._replace(m.STORE_META, current)
            except _ConflictError:
                continue
            return outcome, differ
        return self._too_busy(m.STORE_META, m.META_NAME)

    def import_ca(
        self, data_dir: Path, *, force: bool = False, dry_run: bool = False
    ) -> ImportOutcome:
        """Store ``data_dir``'s CA as the Secret ``publish_ca`` makes (``tunnel-server migrate``).

        A Secret holding another CA is a conflict, replaced only with ``force``: every agent
        pins the CA, so overwriting one silently would cut off a fleet.
        """
        data = {n: base64.b64encode((data_dir / n).read_bytes()).decode() for n in CA_FILES}
        what = f"secret {CA_SECRET}"
        try:
            current = self._call(
                f"get {what}", lambda: self._client.get(Secret, CA_SECRET, namespace=self._ns)
            )
        except NotFoundError:
            current = None
        if current is not None and {n: (current.data or {}).get(n) for n in CA_FILES} == data:
            return "unchanged"
        if current is not None and not force:
            return "conflict"
        if dry_run:
            return "created" if current is None else "replaced"
        if current is None:
            self.publish_ca(data_dir)
            return "created"
        current.data = {**(current.data or {}), **data}
        self._call(f"replace {what}", lambda: self._client.replace(current))
        return "replaced"

    def pending_status(self) -> int:
        """Node status patches not written yet (waiting for the API, or being written)."""
        return len(self._status)

    def close(self) -> None:
        # The last heartbeats (sessions ended by the shutdown) are written first, bounded.
        deadline = time.monotonic() + self.settings.request_timeout
        while (
            len(self._status)
            and not self.reach.down
            and self._watcher.running
            and time.monotonic() < deadline
        ):
            self._watcher.wake_status()
            time.sleep(0.02)
        self._watcher.stop()
        self._client.close()


def same_content(held: Any, wanted: Any) -> bool:  # noqa: ANN401 - JSON values
    """Whether two specs hold the same values; a whole-number time may come back as an int."""
    if isinstance(held, dict) and isinstance(wanted, dict):
        return held.keys() == wanted.keys() and all(same_content(held[k], wanted[k]) for k in held)
    if isinstance(held, list) and isinstance(wanted, list):
        return len(held) == len(wanted) and all(map(same_content, held, wanted))
    numbers = (int, float)
    if (
        isinstance(held, numbers)
        and isinstance(wanted, numbers)
        and not isinstance(held, bool)
        and not isinstance(wanted, bool)
    ):
        return float(held) == float(wanted)
    return type(held) is type(wanted) and held == wanted


def _write_private(path: Path, content: bytes) -> None:
    # Written aside and renamed: a replica never reads half a key; 0600 from the start.
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    partial.replace(path)


class _StatusWrites:
    """Node status patches waiting to be written, one per node (the latest wins); thread-safe.

    ``touch_node`` adds on the event loop; the watch thread takes and writes them, and gives
    back what the API did not take (unreachable) unless a newer patch came meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, m.Obj] = {}
        self._busy = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + self._busy

    def merged(self, name: str, status: m.Obj) -> m.Obj:
        """``status`` as it will be once the node's waiting patch is written."""
        with self._lock:
            return {**status, **self._pending.get(name, {})}

    def add(self, name: str, patch: m.Obj) -> None:
        with self._lock:
            self._pending[name] = {**self._pending.get(name, {}), **patch}

    def take(self) -> tuple[str, m.Obj] | None:
        """The oldest waiting patch (then ``done`` or ``give_back``), None if none waits."""
        with self._lock:
            if not self._pending:
                return None
            name = next(iter(self._pending))
            self._busy += 1
            return name, self._pending.pop(name)

    def done(self) -> None:
        with self._lock:
            self._busy -= 1

    def give_back(self, name: str, patch: m.Obj) -> None:
        """Not written: wait again, under any newer patch of the node that came meanwhile."""
        with self._lock:
            self._busy -= 1
            self._pending[name] = {**patch, **self._pending.get(name, {})}


class _Watcher(WatchThread):
    """The watches of every kind, on a thread of their own with their own event loop.

    Also the writer of the nodes' status (heartbeats, ``_StatusWrites``) and the probe of an
    unreachable API (``WatchThread``).
    """

    def __init__(
        self,
        *,
        config: KubeConfig,
        settings: KubeStoreSettings,
        mirror: m.Mirror,
        reach: Reach,
        status: _StatusWrites,
    ) -> None:
        super().__init__(config=config, settings=settings, name="kubestore-watch", reach=reach)
        self._mirror = mirror
        self._listed = {kind.name: threading.Event() for kind in m.KINDS}
        self._status = status
        self._status_wanted = asyncio.Event()

    def start_and_wait(self) -> None:
        self._start(
            ((self._listed[kind.name], f"{kind.plural}.{m.GROUP}") for kind in m.KINDS),
            StoreError,
        )

    def wake_status(self) -> None:
        """A status patch waits (from any thread)."""
        self.call_soon(self._status_wanted.set)

    def _watches(self, client: AsyncClient) -> Iterator[tuple[str, Coroutine[Any, Any, None]]]:
        for kind in m.KINDS:
            yield f"kubestore-{kind.plural}", self._watch(client, kind)
        yield "kubestore-status", self._write_status(client)

    async def _probe(self, client: AsyncClient) -> None:
        await client.get(_res(m.STORE_META), m.META_NAME, namespace=self._settings.namespace)

    async def _write_status(self, client: AsyncClient) -> None:
        """Write the waiting status patches while the API answers; wait for more (or a probe)."""
        res = _res(m.NODE).Status
        while True:
            # Woken by touch_node; the timeout also retries once a probe found the API back.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.probe_interval):
                    await self._status_wanted.wait()
            self._status_wanted.clear()
            while not self.reach.down and (taken := self._status.take()) is not None:
                name, patch = taken
                try:
                    answer = await client.patch(
                        res,
                        name,
                        {"status": patch},
                        namespace=self._settings.namespace,
                        patch_type=PatchType.MERGE,
                    )
                except Exception as error:  # noqa: BLE001 - the writer must outlive any failure
                    if is_unreachable(error):
                        self.reach.failed(error)
                        self._status.give_back(name, patch)  # written once the API answers
                        continue
                    self._status.done()
                    if not (isinstance(error, ApiError) and error.status.code == 404):
                        log.warning("status of node %s not written (%s)", name, error)
                    continue  # 404: the node was deleted meanwhile, nothing to keep
                self._status.done()
                self.reach.answered()
                self._mirror.put(m.NODE, _as_obj(answer))

    async def _watch(self, client: AsyncClient, kind: m.Kind) -> None:
        res = _res(kind)
        ns = self._settings.namespace
        while True:
            try:
                listed = client.list(res, namespace=ns)
                objects = [_as_obj(o) async for o in listed]
                self._mirror.reset(kind, objects)
                self._listed_ok()
                self._listed[kind.name].set()
                version: str | None = listed.resourceVersion
                # The server ends the watch after watch_timeout; a connection that died without
                # a word (no FIN) would hang forever, so past that and a grace we list again.
                async with asyncio.timeout(self._settings.watch_timeout + WATCH_GRACE):
                    async for event, resource in client.watch(
                        res,
                        namespace=ns,
                        resource_version=version,
                        server_timeout=int(self._settings.watch_timeout),
                    ):
                        obj = _as_obj(resource)
                        if event == "DELETED":
                            self._mirror.delete(kind, obj)
                        elif event in ("ADDED", "MODIFIED"):
                            self._mirror.put(kind, obj)
            except TimeoutError:
                log.debug("watch of %s renewed: listing again", kind.plural)
            except Exception as error:  # noqa: BLE001 - a watch must outlive any one failure
                # 410 Gone, the API server restarting, a broken line: list again, then watch.
                level = self._watch_failed(error)
                log.log(level, "watch of %s failed (%s): listing again", kind.plural, error)
                await asyncio.sleep(self._settings.watch_retry)

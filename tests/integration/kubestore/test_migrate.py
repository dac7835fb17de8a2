"""``tunnel-server migrate --from sqlite:DIR --to kubernetes`` as a real process, end to end.

A single-machine data folder (``tunnel-server init``) is filled through ``SqliteStore``'s own
API, moved into a namespace of the session's real kube-apiserver, and every object read back
through ``KubeStore`` (and a few through the official ``kubernetes`` client) is compared with
the SQLite side. Then: a re-run changes nothing, a changed object is a conflict left alone
(``--force`` puts it back), and ``run --store kubernetes`` on the moved folder serves the same
CA, the same admin token and the same nodes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes

from tests.harness.daemons import BIN, REPO, Server, command
from tunnel_server.kubestore import _model as m
from tunnel_server.store import (
    CertificateRecord,
    JoinRequest,
    NodeRecord,
    SqliteStore,
    TokenRecord,
    UserRecord,
    UserTokenRecord,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.harness import kube
    from tunnel_server.kubestore.store import KubeStore

HOUR = 3600.0
MIGRATE_TIMEOUT = 120.0  # seconds; a cold import and ~30 API calls on two busy cores


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _token(token_id: str, name: str, now: float, *, kind: str = "node") -> TokenRecord:
    return TokenRecord(
        id=token_id,
        secret_hash=_hash(token_id),
        kind="cluster" if kind == "cluster" else "node",
        name=name,
        created_at=now - 10.25,
        expires_at=now + HOUR,
        require_approval=False,
    )


def _node(name: str, now: float, *, kind: str = "node", state: str = "approved") -> NodeRecord:
    return NodeRecord(
        name=name,
        kind="cluster" if kind == "cluster" else "node",
        state="pending" if state == "pending" else "approved",
        created_at=now - 5.5,
    )


def _cert(serial: str, name: str, now: float) -> CertificateRecord:
    return CertificateRecord(serial=serial, name=name, not_after=now + 30 * HOUR, issued_at=now)


def _populate(store: SqliteStore, now: float) -> dict[str, list[str]]:
    """Every kind of object, through the store's own API; the ids to compare by."""
    # The fresh and the revoked token's ids are no DNS labels: their objects get hashed names.
    for token_id, name in (("Fresh_Token.1", "edge-new"), ("Revoked_Token.2", "edge-never")):
        store.add_token(_token(token_id, name, now))
    store.revoke_token("Revoked_Token.2", now=now - 1.0)
    # edge-1: joined with a certificate, renewed once, seen by an agent.
    store.add_token(_token("tok-edge-1", "edge-1", now))
    store.redeem_token(
        "tok-edge-1",
        now=now - 3.0,
        node=_node("edge-1", now),
        certificate=_cert("0a1f", "edge-1", now - 2.0),
    )
    store.record_certificate(_cert("0b2e", "edge-1", now - 1.0))
    store.touch_node("edge-1", now=now - 0.75, agent_version="1.8.2")
    # cluster-1: a cluster, joined and approved.
    store.add_token(_token("tok-cluster-1", "cluster-1", now, kind="cluster"))
    store.redeem_token(
        "tok-cluster-1",
        now=now - 3.0,
        node=_node("cluster-1", now, kind="cluster"),
        certificate=_cert("0c3d", "cluster-1", now - 2.0),
    )
    # edge-pending: waiting for approval, its join request unissued.
    for name in ("edge-pending", "edge-issued"):
        store.add_token(_token(f"tok-{name}", name, now))
        request = JoinRequest(
            id=f"req-{name}",
            name=name,
            kind="node",
            csr_pem=f"-----BEGIN CERTIFICATE REQUEST-----\n{name}\n-----END ...-----\n",
            poll_hash=f"poll-hash-{name}",
            created_at=now - 4.0,
            expires_at=now + HOUR,
        )
        store.redeem_token(
            f"tok-{name}", now=now - 4.0, node=_node(name, now, state="pending"), request=request
        )
    # edge-issued: approved, its certificate issued to the waiting request.
    store.change_node_state("edge-issued", "approved", only_from=("pending",))
    store.issue_pending(
        "req-edge-issued",
        certificate=_cert("0d4c", "edge-issued", now - 1.5),
        certificate_pem="-----BEGIN CERTIFICATE-----\nissued\n-----END CERTIFICATE-----\n",
    )
    # edge-gone: joined, then revoked.
    store.add_token(_token("tok-edge-gone", "edge-gone", now))
    store.redeem_token(
        "tok-edge-gone",
        now=now - 3.0,
        node=_node("edge-gone", now),
        certificate=_cert("0e5b", "edge-gone", now - 2.0),
    )
    store.change_node_state("edge-gone", "revoked", only_from=("approved",))
    # Users: alice (scoped, two tokens), bob (every cluster, revoked, his token stays).
    users = {
        "alice": ("u-alice", ("cluster-1",), ["ut-alice-1", "ut-alice-2"]),
        "bob": ("u-bob", None, ["ut-bob-1"]),
    }
    for name, (user_id, clusters, token_ids) in users.items():
        store.add_user(
            UserRecord(
                id=user_id,
                name=name,
                role="operator" if clusters else "viewer",
                clusters=clusters,
                created_at=now - 100.125,
                expires_at=now + 24 * HOUR,
            )
        )
        for i, token_id in enumerate(token_ids):
            token = UserTokenRecord(
                id=token_id,
                user_id=user_id,
                secret_hash=_hash(token_id),
                created_at=now - 50.0 + i,
                expires_at=now + 12 * HOUR,
            )
            store.add_user_token(token, now=now, max_tokens=8)
    store.revoke_user("bob", now=now - 0.5)
    store.revoke_session("Sess/One", expires_at=now + HOUR, now=now)
    store.revoke_session("sess-two", expires_at=now + 2 * HOUR, now=now)
    return {
        "serials": ["0a1f", "0b2e", "0c3d", "0d4c", "0e5b"],
        "requests": ["req-edge-pending", "req-edge-issued"],
        "user_tokens": ["ut-alice-1", "ut-alice-2", "ut-bob-1"],
        "sessions": ["Sess/One", "sess-two"],
    }


def _migrate(
    data_dir: Path, plane: kube.ControlPlane, namespace: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "tunnel-server"),
            "migrate",
            "--from",
            f"sqlite:{data_dir}",
            "--to",
            "kubernetes",
            "--kubeconfig",
            str(plane.kubeconfig),
            "--namespace",
            namespace,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # the tree under test
    )


def _read(
    api: kubernetes.client.CustomObjectsApi, namespace: str, plural: str, name: str
) -> dict[str, Any]:
    obj = api.get_namespaced_custom_object(m.GROUP, m.VERSION, namespace, plural, name)
    assert isinstance(obj, dict), obj
    return obj


def _assert_same(
    data_dir: Path, kube_store: KubeStore, ids: dict[str, list[str]], now: float
) -> dict[str, str]:
    """Every object of the SQLite store as KubeStore reads it; the nodes' states."""
    sqlite = SqliteStore.open(data_dir)
    try:
        _compare(sqlite, kube_store, ids, now)
        return {n.name: n.state for n in sqlite.list_nodes()}
    finally:
        sqlite.close()


def _compare(
    sqlite: SqliteStore, kube_store: KubeStore, ids: dict[str, list[str]], now: float
) -> None:
    assert sorted(kube_store.list_tokens(), key=lambda t: t.id) == sorted(
        sqlite.list_tokens(), key=lambda t: t.id
    )
    assert len(sqlite.list_tokens()) == 7
    assert kube_store.list_nodes() == sqlite.list_nodes()
    assert {n.state for n in sqlite.list_nodes()} == {"approved", "pending", "revoked"}
    for serial in ids["serials"]:
        assert kube_store.get_certificate(serial) == sqlite.get_certificate(serial) is not None
    for request_id in ids["requests"]:
        assert kube_store.get_join_request(request_id) == sqlite.get_join_request(request_id)
        assert sqlite.get_join_request(request_id) is not None
    assert kube_store.list_users(now=now) == sqlite.list_users(now=now)
    for token_id in ids["user_tokens"]:
        assert kube_store.get_user_token(token_id) == sqlite.get_user_token(token_id) is not None
    for session_id in ids["sessions"]:
        assert kube_store.session_revoked(session_id)
    assert not kube_store.session_revoked("sess-never")
    admin_id = sqlite.get_meta("admin_token_id")
    assert admin_id is not None
    assert kube_store.get_meta("admin_token_id") == admin_id
    assert kube_store.get_api_token_hash(admin_id) == sqlite.get_api_token_hash(admin_id)
    assert kube_store.get_meta("public_url") == sqlite.get_meta("public_url")


def test_migrate_moves_every_object_exactly(  # noqa: PLR0915, PLR0917 - one story, in order
    kube_crds: kube.ControlPlane,
    namespace: str,
    open_store: Callable[[], KubeStore],
    custom_objects: kubernetes.client.CustomObjectsApi,
    dump: Callable[[], str],
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "machine"
    data_dir = workdir / "server"
    data_dir.mkdir(parents=True)
    command("tunnel-server", "init", "--data-dir", data_dir, "--public-name", "127.0.0.1")
    ca_hash = command("tunnel-server", "ca-hash", "--data-dir", data_dir).strip()
    now = time.time()
    sqlite = SqliteStore.open(data_dir)
    try:
        ids = _populate(sqlite, now)
        # A process holding the store open (as a running server does): refused, nothing written.
        busy = _migrate(data_dir, kube_crds, namespace)
        assert busy.returncode == 6, busy.stderr
        assert "stop the server" in busy.stderr
    finally:
        sqlite.close()
    empty = json.dumps({kind.plural: [] for kind in m.KINDS})
    assert dump() == empty

    dry = _migrate(data_dir, kube_crds, namespace, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "nodes/edge-1 would be created" in dry.stdout.splitlines()
    assert "secrets/edgefleet-ca would be created" in dry.stdout.splitlines()
    assert dump() == empty, "a dry run writes nothing"

    done = _migrate(data_dir, kube_crds, namespace)
    assert done.returncode == 0, done.stderr
    assert "migrate: nodes: 5 created, 0 replaced, 0 unchanged, 0 conflict" in done.stderr
    assert "migrate: bootstraptokens: 7 created" in done.stderr
    nodes_before = _assert_same(data_dir, open_store(), ids, now)
    # The official client, past KubeStore: the hashes and the CA as they are on disk.
    token = _read(custom_objects, namespace, "bootstraptokens", m.id_name("Revoked_Token.2"))
    assert token["spec"]["secretHash"] == _hash("Revoked_Token.2")
    assert token["spec"]["revokedAt"] == now - 1.0
    core = kubernetes.client.CoreV1Api(custom_objects.api_client)
    secret = core.read_namespaced_secret("edgefleet-ca", namespace)
    assert secret.data is not None
    for name in ("ca.crt", "ca.key"):
        assert base64.b64decode(secret.data[name]) == (data_dir / name).read_bytes()

    # Again: nothing to do, nothing written (every resourceVersion as it was).
    before = dump()
    again = _migrate(data_dir, kube_crds, namespace)
    assert again.returncode == 0, again.stderr
    assert "migrate: nodes: 0 created, 0 replaced, 5 unchanged, 0 conflict" in again.stderr
    assert dump() == before

    # A partly moved target (a node lost, as if the first run had stopped): completed.
    custom_objects.delete_namespaced_custom_object(m.GROUP, m.VERSION, namespace, "nodes", "edge-1")
    partial = _migrate(data_dir, kube_crds, namespace)
    assert partial.returncode == 0, partial.stderr
    assert "migrate: nodes: 1 created, 0 replaced, 4 unchanged, 0 conflict" in partial.stderr
    _assert_same(data_dir, open_store(), ids, now)

    # A target object with other content: reported, left alone; --force puts ours back.
    name = m.id_name("tok-edge-1")
    patch = {"spec": {"secretHash": _hash("someone else")}}
    custom_objects.patch_namespaced_custom_object(
        m.GROUP, m.VERSION, namespace, "bootstraptokens", name, patch
    )
    clash = _migrate(data_dir, kube_crds, namespace)
    assert clash.returncode == 6, clash.stderr
    assert f"conflict: bootstraptokens/{name} is in the target" in clash.stderr
    held = _read(custom_objects, namespace, "bootstraptokens", name)
    assert held["spec"]["secretHash"] == _hash("someone else")
    forced = _migrate(data_dir, kube_crds, namespace, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "migrate: bootstraptokens: 0 created, 1 replaced, 6 unchanged" in forced.stderr
    _assert_same(data_dir, open_store(), ids, now)

    # The moved folder served from the Kubernetes store: same CA, same admin token, same nodes.
    store_args = ("--store", "kubernetes", "--kubeconfig", str(kube_crds.kubeconfig))
    server = Server(workdir=workdir, extra_args=(*store_args, "--namespace", namespace))
    try:
        server.start()
        assert server.ca_hash == ca_hash
        assert command("tunnel-server", "ca-hash", "--data-dir", data_dir).strip() == ca_hash
        served = server.nodes()  # through the API, with the migrated admin token
        assert {name: node["state"] for name, node in served.items()} == nodes_before
    finally:
        server.stop()


def test_migrate_refuses_what_is_no_data_folder(
    kube_crds: kube.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    missing = _migrate(tmp_path / "nowhere", kube_crds, namespace)
    assert missing.returncode == 2, missing.stderr
    assert "is not a folder" in missing.stderr
    empty = _migrate(tmp_path, kube_crds, namespace)
    assert empty.returncode == 1, empty.stderr
    assert "holds no ca.crt, ca.key, store.db" in empty.stderr
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    command("tunnel-server", "init", "--data-dir", data_dir, "--public-name", "127.0.0.1")
    nowhere = _migrate(data_dir, kube_crds, f"{namespace}-absent")
    assert nowhere.returncode == 1, nowhere.stderr
    assert "kubectl create namespace" in nowhere.stderr

"""Several KubeStores on one namespace, as replicas of the server.

Each sees the others' writes through its watch, a bootstrap token is redeemed once across
them, concurrent writers lose nothing, and kubectl shows the objects usefully.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import pytest

from tests.harness.waiting import eventually
from tunnel_server.store import (
    CertificateRecord,
    NodeRecord,
    TokenRecord,
    TokenUsedError,
)

if TYPE_CHECKING:
    from tests.harness import kube
    from tunnel_server.kubestore.store import KubeStore

NOW = 1_800_000_000.0


def _token(token_id: str, name: str) -> TokenRecord:
    return TokenRecord(
        id=token_id,
        secret_hash="0" * 64,
        kind="node",
        name=name,
        created_at=NOW,
        expires_at=NOW + 600,
        require_approval=False,
    )


def _node(name: str) -> NodeRecord:
    return NodeRecord(name=name, kind="node", state="approved", created_at=NOW)


def _nodes_named(store: KubeStore, part: str) -> list[str]:
    return [n.name for n in store.list_nodes() if part in n.name]


def _has_certificates(store: KubeStore, serials: list[str]) -> bool:
    return all(store.get_certificate(serial) is not None for serial in serials)


def _metas(store: KubeStore, keys: list[str]) -> list[str | None]:
    return [store.get_meta(key) for key in keys]


def test_each_replica_sees_the_others_writes(open_store: Callable[[], KubeStore]) -> None:
    a, b = open_store(), open_store()
    a.add_token(_token("tok001", "edge-1"))
    eventually(lambda: b.get_token("tok001"), what="b sees a's token")
    before = a.revision()
    b.redeem_token("tok001", now=NOW, node=_node("edge-1"))
    node = eventually(lambda: a.get_node("edge-1"), what="a sees the node b created")
    assert node is not None
    assert node.state == "approved"
    token = a.get_token("tok001")
    assert token is not None
    assert token.used_at == NOW
    assert a.revision() > before
    b.revoke_session("nonce-1", expires_at=NOW + 3600, now=NOW)
    eventually(lambda: a.session_revoked("nonce-1"), what="a sign-out on b ends it on a")
    revoked = a.revision()
    b.set_node_state("edge-1", "revoked")
    eventually(lambda: a.revision() > revoked, what="a revocation on b moves a's revision")
    after = a.get_node("edge-1")
    assert after is not None
    assert after.state == "revoked"


def test_a_store_opened_later_lists_what_is_there(open_store: Callable[[], KubeStore]) -> None:
    a = open_store()
    a.add_token(_token("tok002", "edge-2"))
    a.redeem_token("tok002", now=NOW, node=_node("edge-2"))
    a.set_meta("public_url", "https://fleet.example:8443")
    late = open_store()  # a replica starting now: its first list has everything
    assert late.get_node("edge-2") == a.get_node("edge-2")
    assert late.get_meta("public_url") == "https://fleet.example:8443"
    assert late.list_tokens() == a.list_tokens()


def test_a_token_is_redeemed_once_across_replicas(open_store: Callable[[], KubeStore]) -> None:
    stores = [open_store(), open_store(), open_store()]
    rounds = 5
    for index in range(rounds):
        stores[0].add_token(_token(f"race{index:02}", "ignored"))
    last_token = f"race{rounds - 1:02}"
    for store in stores:
        eventually(partial(store.get_token, last_token), what="every replica sees the tokens")
    outcomes: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def redeem(replica: int, token_id: str, barrier: threading.Barrier) -> None:
        name = f"node-{token_id}-{replica}"
        barrier.wait()
        try:
            stores[replica].redeem_token(token_id, now=NOW, node=_node(name))
            result = "won"
        except TokenUsedError:
            result = "used"
        with lock:
            outcomes.append((replica, token_id, result))

    for index in range(rounds):
        token_id = f"race{index:02}"
        barrier = threading.Barrier(len(stores))
        threads = [
            threading.Thread(target=redeem, args=(r, token_id, barrier), name=f"redeem-{r}")
            for r in range(len(stores))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [o for o in outcomes if o[1] == token_id and o[2] == "won"]
        losers = [o for o in outcomes if o[1] == token_id and o[2] == "used"]
        assert len(winners) == 1, outcomes
        assert len(losers) == len(stores) - 1, outcomes
        winner = f"node-{token_id}-{winners[0][0]}"
        for store in stores:  # exactly one node exists for the token, on every replica
            made = eventually(
                partial(_nodes_named, store, token_id),
                partial(operator.eq, [winner]),
                what="one node per token everywhere",
            )
            assert made == [winner]


def test_concurrent_writers_lose_no_update(open_store: Callable[[], KubeStore]) -> None:
    """Two replicas add certificates to one node at once: 409s are retried, all land."""
    a, b = open_store(), open_store()
    a.add_token(_token("tok003", "edge-3"))
    a.redeem_token("tok003", now=NOW, node=_node("edge-3"))
    eventually(lambda: b.get_node("edge-3"), what="b sees the node")
    per_writer = 8
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(store: KubeStore, prefix: str) -> None:
        barrier.wait()
        try:
            for i in range(per_writer):
                store.record_certificate(
                    CertificateRecord(
                        serial=f"{prefix}{i:02x}",
                        name="edge-3",
                        not_after=NOW + 86400,
                        issued_at=NOW,
                    )
                )
                store.set_meta(f"writer_{prefix}", str(i))
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [
        threading.Thread(target=write, args=(a, "aa"), name="writer-a"),
        threading.Thread(target=write, args=(b, "bb"), name="writer-b"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    serials = [f"{p}{i:02x}" for p in ("aa", "bb") for i in range(per_writer)]
    last = str(per_writer - 1)
    for store in (a, b):
        eventually(
            partial(_has_certificates, store, serials),
            what="every certificate of both writers on each replica",
        )
        eventually(
            partial(_metas, store, ["writer_aa", "writer_bb"]),
            partial(operator.eq, [last, last]),
            what="both writers' last meta value on each replica",
        )


def test_kubectl_shows_the_objects(
    open_store: Callable[[], KubeStore], kube_crds: kube.ControlPlane, namespace: str
) -> None:
    store = open_store()
    store.add_token(_token("tok004", "edge-4"))
    store.redeem_token("tok004", now=NOW, node=_node("edge-4"))
    store.touch_node("edge-4", now=NOW + 1, agent_version="9.9.9")
    shown = kube_crds.kubectl("get", "nodes.edgefleet.io", "-n", namespace).stdout
    header, row = shown.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "KIND", "STATE", "AGENT", "LAST-SEEN"]
    assert row.split()[:4] == ["edge-4", "node", "approved", "9.9.9"]
    tokens = kube_crds.kubectl("get", "bootstraptokens.edgefleet.io", "-n", namespace).stdout
    assert "edge-4" in tokens
    assert "0" * 64 not in tokens, "the hash is not a column"


@pytest.mark.parametrize("plural", ["nodes", "bootstraptokens", "users"])
def test_the_schema_refuses_a_malformed_object(
    kube_crds: kube.ControlPlane, namespace: str, plural: str
) -> None:
    kind = {"nodes": "Node", "bootstraptokens": "BootstrapToken", "users": "User"}[plural]
    body = {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "bad"},
        "spec": {"kind": "toaster", "state": "maybe", "role": "root"},
    }
    status, answer = kube_crds.request(
        "POST", f"/apis/edgefleet.io/v1alpha1/namespaces/{namespace}/{plural}", body
    )
    assert status == 422, answer

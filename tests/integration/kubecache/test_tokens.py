# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Service-account tokens (TokenRequest): kept online, answered offline until they expire."""

from __future__ import annotations

import datetime as dt
import stat
from typing import Any

import aiohttp
import pytest

from edge_agent.kubecache import tokens
from edge_agent.kubecache.protowire import encode_bytes_field, encode_envelope, encode_varint_field
from edge_agent.kubecache.store import CacheStore
from edge_agent.kubecache.wire import PROTOBUF
from tests.integration.kubecache.conftest import KUBELET, Edge

pytestmark = pytest.mark.kube

API_AUDIENCE = "https://kubernetes.default.svc"
"""The harness's --service-account-issuer, so the API server accepts the token itself."""
KUBELET_PROTOBUF = {**KUBELET, "Content-Type": PROTOBUF, "Accept": f"{PROTOBUF},application/json"}


async def created(cloud: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with cloud.post(path, json=body) as response:
        assert response.status == 201, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


def json_request(audiences: list[str], pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audiences,
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            },
        },
    }


def protobuf_request(audiences: list[str], pod: dict[str, Any]) -> bytes:
    """The TokenRequest kubelet sends (authentication/v1 generated.proto field numbers)."""
    bound = b"".join(
        encode_bytes_field(number, value)
        for number, value in (
            (1, "Pod"),
            (2, "v1"),
            (3, pod["metadata"]["name"]),
            (4, pod["metadata"]["uid"]),
        )
    )
    spec = (
        b"".join(encode_bytes_field(1, a) for a in audiences)
        + encode_bytes_field(3, bound)
        + encode_varint_field(4, 3600)
    )
    raw = encode_bytes_field(1, b"") + encode_bytes_field(2, spec) + encode_bytes_field(3, b"")
    return encode_envelope("authentication.k8s.io/v1", "TokenRequest", raw)


async def test_tokens_are_answered_offline_until_they_expire(
    edge: Edge, cloud: aiohttp.ClientSession, namespace: str
) -> None:
    await created(
        cloud, f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "sa"}}
    )
    pod = await created(
        cloud,
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": "p"},
            "spec": {"serviceAccountName": "sa", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/sa/token"
    async with aiohttp.ClientSession(base_url=edge.url) as http:
        async with http.post(
            path, data=protobuf_request([API_AUDIENCE], pod), headers=KUBELET_PROTOBUF
        ) as online:
            assert online.status == 201, await online.text()
            assert online.headers["Content-Type"].startswith("application/json")
            issued = await online.json()
        async with http.post(path, json=json_request(["other"], pod), headers=KUBELET) as second:
            assert second.status == 201
            other = await second.json()
        # Another component asking the same is another entry.
        async with http.post(
            path, json=json_request([API_AUDIENCE], pod), headers={"User-Agent": "kube-proxy/v1"}
        ) as third:
            assert third.status == 201

        await edge.go_offline()
        for body, headers in (
            (protobuf_request([API_AUDIENCE], pod), KUBELET_PROTOBUF),
            (json_request([API_AUDIENCE], pod), KUBELET),  # the same spec in JSON: the same entry
        ):
            async with http.post(
                path,
                data=body if isinstance(body, bytes) else None,
                json=None if isinstance(body, bytes) else body,
                headers=headers,
            ) as offline:
                assert offline.status == 201, await offline.text()
                assert await offline.json() == issued
        async with http.post(path, json=json_request(["other"], pod), headers=KUBELET) as again:
            assert (await again.json())["status"]["token"] == other["status"]["token"]
        async with http.post(path, json=json_request(["never"], pod), headers=KUBELET) as unseen:
            assert unseen.status == 503
            assert "no unexpired token" in (await unseen.json())["message"]
        only_protobuf = {**KUBELET_PROTOBUF, "Accept": PROTOBUF}
        async with http.post(
            path, data=protobuf_request([API_AUDIENCE], pod), headers=only_protobuf
        ) as refused:
            assert refused.status == 503

        # Once the API server's expiry has passed, the token is no longer given out.
        key = f"{tokens.KEY_PREFIX}kubelet/{namespace}/sa/"
        kept = await edge.proxy.store.run(
            "keys",
            lambda s: [k for k in s.keys() if k.startswith(key)],  # noqa: SIM118 - not a dict
        )
        assert kept is not None
        assert len(kept) == 2
        past = dt.datetime.now(dt.UTC).timestamp() - 1

        def expire(store: CacheStore) -> None:
            for entry in kept:
                record = store.get_token(entry)
                assert isinstance(record, dict)
                store.put_token(entry, {**record, "expires": past}, now=0)

        await edge.proxy.store.run("expire", expire)
        async with http.post(
            path, json=json_request([API_AUDIENCE], pod), headers=KUBELET
        ) as expired:
            assert expired.status == 503

    # A secret on disk: the folder is 0700 and the database files 0600.
    cache_dir = edge.workdir / "cache"
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    files = [p for p in cache_dir.iterdir() if p.name.startswith("objects.db")]
    assert files
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}

    # The token given out offline is the API server's own: it authenticates there.
    await edge.go_online()
    bearer = {"Authorization": f"Bearer {issued['status']['token']}"}
    async with (
        aiohttp.ClientSession(base_url=edge.plane.url) as plain,
        plain.get("/api", headers=bearer, ssl=edge.plane.ssl_context()) as check,
    ):
        assert check.status == 200

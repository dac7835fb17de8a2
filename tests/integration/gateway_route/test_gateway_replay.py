"""Retries and mirrors of requests with a body, between two real clusters (``replay.py``).

The world is ``conftest.pair()`` with, in gw-a, ``web-e`` (backend ``e``, made to answer 500)
and, in gw-b, ``web-m`` (backend ``m``, the mirror target, logging every request to ``m.log``):

- ``replay`` (``replay.test``): gw-a ``web-e`` / gw-b ``web``, retry on 500;
- ``copied`` (``copied.test``): gw-a ``web`` alone, a 100 % mirror to gw-b ``web-m``.

A body of at most the gateway's ``replay_body_limit`` (64 KiB) is held once and sent again; a
bigger one streams once, as before: not retried once sent, not copied (counted).
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.waiting import eventually
from tests.integration.gateway_route.conftest import Answer, World, pair, ref
from tests.integration.gateway_server.backend_http import pattern

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

KIB = 1024
MIRROR = {"cluster": "gw-b", "namespace": "demo", "name": "web-m", "port": 80}
LAYOUT = {"gw-a": {"web-e": ("e", True)}, "gw-b": {"web-m": ("m", True)}}
ROUTES: dict[str, dict[str, Any]] = {
    "replay": {
        "hostnames": ["replay.test"],
        "rules": [
            {
                "retry": {"attempts": 1, "codes": [500]},
                "backendRefs": [ref("gw-a", "web-e", 50), ref("gw-b", "web", 50)],
            }
        ],
    },
    "copied": {
        "hostnames": ["copied.test"],
        "rules": [
            {
                "filters": [
                    {
                        "type": "RequestMirror",
                        "requestMirror": {"backendRef": MIRROR, "percent": 100},
                    }
                ],
                "backendRefs": [ref("gw-a", "web")],
            }
        ],
    },
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("gateway-replay")
    with pair(base, layout=LAYOUT, backends=("e", "m"), routes=ROUTES) as running:
        yield running


def send(
    client: http.client.HTTPConnection,
    method: str,
    host: str,
    path: str,
    body: bytes,
    *,
    rid: str,
    chunked: bool = False,
) -> Answer:
    """One request with ``body`` (``Content-Length``, or chunked in two chunks)."""
    headers = {"Host": host, "X-Request-Id": rid}
    if chunked:
        half = len(body) // 2
        parts = iter([body[:half], body[half:]])
        client.request(method, path, body=parts, headers=headers, encode_chunked=True)
    else:
        client.request(method, path, body=body, headers=headers)
    response = client.getresponse()
    text = response.read()
    kind = response.headers.get("Content-Type", "")
    return Answer(
        response.status,
        json.loads(text) if "json" in kind else text,
        {name.lower(): value for name, value in response.headers.items()},
    )


def test_puts_with_a_small_body_are_replayed_and_a_big_one_is_not(world: World) -> None:
    """Backend e answers 500, a retry code: only bodies within the limit are replayed.

    A PUT of 100 KiB that meets e gets e's 500 (streamed once); every PUT of 10 KiB, sized or
    chunked, is answered by gw-b, e having seen some of them first.
    """
    big, small = pattern(100 * KIB), pattern(10 * KIB)
    with world.failing("e"), world.client() as client:
        bigs = [
            send(client, "PUT", "replay.test", "/hangup", big, rid=f"big-{n}") for n in range(4)
        ]
        smalls = [
            send(client, "PUT", "replay.test", "/hangup", small, rid=f"put-{n}", chunked=n % 2 == 1)
            for n in range(20)
        ]
    seen = {(a.status, a.headers.get("x-backend")) for a in bigs}
    assert (500, "e") in seen, seen  # not replayed: the client got e's answer
    assert {(a.status, a.body["backend"]) for a in smalls} == {(200, "gw-b")}
    tried = (world.base / "e.log").read_text().splitlines()
    assert any(line.startswith("PUT /hangup put-") for line in tried), tried  # replayed ones


def test_a_small_body_is_copied_to_the_mirror_and_a_big_one_is_skipped(world: World) -> None:
    """A POST of 1 KiB reaches the mirror too; one of 100 KiB only its backend (counted)."""
    with world.client() as client:
        for rid, body in (("body-small", pattern(KIB)), ("body-big", pattern(100 * KIB))):
            answer = send(client, "POST", "copied.test", "/upload", body, rid=rid)
            assert answer.status == 200, answer
            assert answer.body["sha256"] == hashlib.sha256(body).hexdigest()
    eventually(
        (world.base / "m.log").read_text,
        lambda log: "POST /upload body-small" in log,
        what="the small body's copy at the mirror",
        within=15,
        ignore=(FileNotFoundError,),
    )
    skipped = (
        'tunnel_server_gateway_mirrors_total{backend="gw-b/demo/web-m:80",'
        'outcome="skipped_body"} 1.0'
    )
    assert skipped in world.server.get("/metrics")[1].decode()
    assert "body-big" not in (world.base / "m.log").read_text()

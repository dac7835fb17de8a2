"""The agent's request head handling: bounded parse, credentials swapped, bytes after it kept."""

from __future__ import annotations

import json

import h11
import pytest

from edge_agent.cluster.apiserver import RefusedError, encode_head, read_head, status_response


class _Chunks:
    """Stands in for a tunnel stream's read side (the only call ``read_head`` makes)."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def read(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


HEAD = (
    b"POST /api/v1/namespaces/x/configmaps?dryRun=All HTTP/1.1\r\nHost: kube-apiserver\r\n"
    b"Authorization: Bearer callers\r\nImpersonate-User: edgefleet:admin\r\n"
    b"Content-Length: 4\r\nConnection: close\r\n\r\n"
)


async def test_the_head_and_the_bytes_after_it() -> None:
    head, rest = await read_head(_Chunks(HEAD[:10], HEAD[10:] + b"bo", b"dy"), limit=4096)  # type: ignore[arg-type]
    assert head.method == b"POST"
    assert head.target == b"/api/v1/namespaces/x/configmaps?dryRun=All"
    assert rest == b"bo"
    sent = encode_head(head, host="10.0.0.1:6443", authorization="Bearer agents")
    assert sent.startswith(b"POST /api/v1/namespaces/x/configmaps?dryRun=All HTTP/1.1\r\n")
    assert b"Host: 10.0.0.1:6443\r\n" in sent
    assert b"Authorization: Bearer agents\r\n" in sent
    assert b"callers" not in sent
    assert b"kube-apiserver" not in sent
    assert b"Impersonate-User: edgefleet:admin\r\n" in sent
    assert sent.endswith(b"\r\n\r\n")
    parsed = h11.Connection(h11.SERVER)
    parsed.receive_data(sent)
    event = parsed.next_event()
    assert isinstance(event, h11.Request)
    assert [v for n, v in event.headers if n == b"authorization"] == [b"Bearer agents"]


async def test_a_client_certificate_sends_no_authorization() -> None:
    head, _ = await read_head(_Chunks(HEAD), limit=4096)  # type: ignore[arg-type]
    assert b"Authorization" not in encode_head(head, host="h", authorization=None)


async def test_a_head_over_the_limit_is_431() -> None:
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000
    with pytest.raises(RefusedError) as refused:
        await read_head(_Chunks(huge), limit=4096)  # type: ignore[arg-type]
    assert refused.value.code == 431


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n", b"NOT HTTP\r\n\r\n"])
async def test_no_head_is_400(data: bytes) -> None:
    with pytest.raises(RefusedError) as refused:
        await read_head(_Chunks(data), limit=4096)  # type: ignore[arg-type]
    assert refused.value.code == 400


def test_the_answer_is_a_kubernetes_status() -> None:
    raw = status_response(403, "no")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.receive_data(raw)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 403
    body = conn.next_event()
    assert isinstance(body, h11.Data)
    assert json.loads(body.data) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "no",
        "reason": "Forbidden",
        "code": 403,
    }

"""Bad join requests get a clear 4xx JSON error and consume nothing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from cryptography import x509

from tests.integration.join.conftest import run, spki_sha256

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.join.conftest import RunningServer


async def _post(server: RunningServer, data: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.url}/api/v1/join",
            data=data,
            headers={"Content-Type": "application/json"},
            ssl=server.trusting_context(),
        ) as answer,
    ):
        return answer.status, await answer.json()


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (b'{"token": "abcdef.0123456789abcdef"}', 400, "bad_request"),
        (b'{"token": 7, "csr": "x"}', 400, "bad_request"),
        (b'{"token": "nope", "csr": "x"}', 401, "invalid_token"),
        (json.dumps({"token": "a", "csr": "x" * 70_000}).encode(), 413, "body_too_large"),
    ],
)
async def test_bad_bodies(server: RunningServer, body: bytes, status: int, error: str) -> None:
    got_status, got = await _post(server, body)
    assert (got_status, got["reason"]) == (status, error)
    assert got["detail"]


async def test_chunked_oversized_body_is_refused(server: RunningServer) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b" " * 1024

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.url}/api/v1/join", data=chunks(), ssl=server.trusting_context()
        ) as answer,
    ):
        assert answer.status == 413


async def test_bad_csr_does_not_consume_the_token(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    token = await server.token(name)
    status, body = await _post(server, json.dumps({"token": token, "csr": "garbage"}).encode())
    assert (status, body["reason"]) == (400, "bad_csr")
    assert name not in await server.nodes()
    assert (await server.join(token=token, name=name, data_dir=tmp_path)).rc == 0


async def test_ca_endpoint_and_cli_agree(server: RunningServer) -> None:
    result = await server.cli("ca-hash")
    assert result.rc == 0
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/api/v1/ca", ssl=server.trusting_context()) as answer,
    ):
        pem = await answer.read()
    assert result.stdout.strip() == spki_sha256(x509.load_pem_x509_certificate(pem))


async def test_cli_without_a_data_dir_explains(tmp_path: Path) -> None:
    result = await run("tunnel-server", "nodes", "--data-dir", tmp_path / "nothing")
    assert result.rc == 2  # usage or configuration
    assert "has no CA: run `tunnel-server run" in result.stderr

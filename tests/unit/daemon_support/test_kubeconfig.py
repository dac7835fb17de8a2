"""The daemons' one kubeconfig loader: parsing, TLS against a real https server, token re-reads."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from daemon_support import kubeconfig
from daemon_support.kubeconfig import KubeconfigError
from daemon_support.kubeconfig_session import open_kube_session
from tests.harness.certs import TestCA


def _config(
    cluster: dict[str, object], user: dict[str, object], *, current: str | None = "c"
) -> bytes:
    config: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "m", "cluster": cluster},
            {"name": "other", "cluster": {"server": "https://other:6443"}},
        ],
        "users": [{"name": "u", "user": user}, {"name": "v", "user": {"token": "vee"}}],
        "contexts": [
            {"name": "c", "context": {"cluster": "m", "user": "u"}},
            {"name": "d", "context": {"cluster": "other", "user": "v"}},
        ],
    }
    if current is not None:
        config["current-context"] = current
    return yaml.safe_dump(config).encode()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_the_current_context_or_a_named_one(tmp_path: Path) -> None:
    data = _config({"server": "https://h:6443/", "certificate-authority": "ca.crt"}, {"token": "t"})
    entry = kubeconfig.parse_kubeconfig(data, base=tmp_path)
    assert entry.server == "https://h:6443"
    assert entry.certificate_authority == kubeconfig.Material(path=tmp_path / "ca.crt")
    assert entry.token == "t"
    other = kubeconfig.parse_kubeconfig(data, base=tmp_path, context="d")
    assert (other.server, other.token) == ("https://other:6443", "vee")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"clusters: [\n", "is not YAML"),
        (b"- a list\n", "not a mapping"),
        (_config({"server": "https://h"}, {}, current=None), "has no current-context"),
        (_config({"server": "ftp://h"}, {}), "must be an http(s):// URL"),
        (_config({"server": "https://h:99999"}, {}), "bad port"),
        (_config({}, {}), "has no server"),
        (_config({"server": "https://h", "certificate-authority-data": "%%"}, {}), "not base64"),
        (_config({"server": "https://h"}, {"token": ["a"]}), "token must be a string"),
        (b"x" * (kubeconfig.MAX_KUBECONFIG_BYTES + 1), "larger than"),
    ],
)
def test_unusable_kubeconfigs_say_why(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(KubeconfigError) as refused:
        kubeconfig.parse_kubeconfig(data, base=tmp_path, source="kubeconfig k")
    assert message in str(refused.value)


def test_an_unknown_context_is_named(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="has no context named 'nope'"):
        kubeconfig.parse_kubeconfig(
            _config({"server": "https://h"}, {}), base=tmp_path, context="nope"
        )


@pytest.mark.parametrize("plugin", ["exec", "auth-provider"])
def test_credential_plugins_are_refused(tmp_path: Path, plugin: str) -> None:
    data = _config({"server": "https://h"}, {plugin: {"command": "aws"}})
    entry = kubeconfig.parse_kubeconfig(data, base=tmp_path)
    with pytest.raises(KubeconfigError, match=rf"plugins \({plugin}\) are not supported"):
        kubeconfig.credentials(entry)


def test_insecure_skip_tls_verify_only_when_allowed(tmp_path: Path) -> None:
    data = _config({"server": "https://h", "insecure-skip-tls-verify": True}, {"token": "t"})
    entry = kubeconfig.parse_kubeconfig(data, base=tmp_path)
    with pytest.raises(KubeconfigError, match="insecure-skip-tls-verify is refused"):
        kubeconfig.credentials(entry)
    context = kubeconfig.credentials(entry, allow_insecure=True).ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE


def test_basic_auth_and_plain_http(tmp_path: Path) -> None:
    data = _config({"server": "http://h:8080"}, {"username": "ann", "password": "pw"})
    creds = kubeconfig.credentials(kubeconfig.parse_kubeconfig(data, base=tmp_path))
    assert creds.ssl_context is None
    assert creds.authorization() == "Basic " + base64.b64encode(b"ann:pw").decode()


def test_a_half_client_certificate_is_refused(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    data = _config(
        {"server": "https://h", "certificate-authority": str(ca.cert_path)},
        {"client-certificate": str(ca.cert_path)},
    )
    with pytest.raises(KubeconfigError, match="needs both client-certificate and client-key"):
        kubeconfig.credentials(kubeconfig.parse_kubeconfig(data, base=tmp_path))


def test_a_token_file_too_large_or_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"a" * (kubeconfig.MAX_TOKEN_BYTES + 1))
    (tmp_path / "empty").write_text("\n")
    for name, message in (("big", "larger than"), ("empty", "no usable token")):
        data = _config({"server": "http://h"}, {"tokenFile": name})
        entry = kubeconfig.parse_kubeconfig(data, base=tmp_path)
        with pytest.raises(KubeconfigError, match=message):
            kubeconfig.credentials(entry)


def test_in_cluster_entry_from_the_environment(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    entry = kubeconfig.in_cluster_entry(service_account_dir=tmp_path, environ=env)
    assert entry.server == "https://[fd00::1]:6443"
    assert entry.token_file == tmp_path / "token"
    assert entry.certificate_authority == kubeconfig.Material(path=tmp_path / "ca.crt")
    with pytest.raises(KubeconfigError, match="not running in a pod"):
        kubeconfig.in_cluster_entry(service_account_dir=tmp_path, environ={})


# ---- against a real loopback https server -------------------------------------------------


@pytest.fixture
async def https_server(tmp_path: Path) -> AsyncIterator[tuple[str, TestCA, list[str | None]]]:
    """An https server (cert for 127.0.0.1) that requires a client certificate of its CA."""
    ca = TestCA(tmp_path / "server-ca")
    pair = ca.issue("apiserver", server=True, hosts=("127.0.0.1",))
    seen: list[str | None] = []

    async def version(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"gitVersion": "v1.36.3"})

    app = web.Application()
    app.router.add_get("/version", version)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
    context.load_cert_chain(pair.cert_path, pair.key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", ca, seen
    finally:
        await runner.cleanup()


async def test_inline_ca_and_client_certificate_reach_a_verifying_server(
    tmp_path: Path, https_server: tuple[str, TestCA, list[str | None]]
) -> None:
    server, ca, seen = https_server
    client = ca.issue("edgefleet", server=False)
    path = tmp_path / "kc" / "config"
    path.parent.mkdir()
    path.write_bytes(
        _config(
            {"server": server, "certificate-authority-data": _b64(ca.cert_path)},
            {"client-certificate-data": _b64(client.cert_path), "client-key": str(client.key_path)},
        )
    )
    creds = kubeconfig.load_kubeconfig(path)
    async with (
        open_kube_session(creds, connect_timeout=10) as session,
        session.get(f"{creds.server}/version") as answer,
    ):
        assert (await answer.json())["gitVersion"] == "v1.36.3"
    assert seen == [None]  # a certificate, no token


async def test_a_server_of_another_ca_is_not_trusted(
    tmp_path: Path, https_server: tuple[str, TestCA, list[str | None]]
) -> None:
    server, ca, _ = https_server
    stranger = TestCA(tmp_path / "stranger")
    client = ca.issue("edgefleet", server=False)
    path = tmp_path / "config"
    path.write_bytes(
        _config(
            {"server": server, "certificate-authority": str(stranger.cert_path)},
            {"client-certificate": str(client.cert_path), "client-key": str(client.key_path)},
        )
    )
    creds = kubeconfig.load_kubeconfig(path)
    async with open_kube_session(creds, connect_timeout=10) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{creds.server}/version")


async def test_a_rotated_token_file_reaches_the_next_request_after_token_reload(
    tmp_path: Path, https_server: tuple[str, TestCA, list[str | None]]
) -> None:
    server, ca, seen = https_server
    client = ca.issue("edgefleet", server=False)
    (tmp_path / "token").write_text("first\n")
    path = tmp_path / "config"
    path.write_bytes(
        _config(
            {"server": server, "certificate-authority": str(ca.cert_path)},
            {
                "tokenFile": "token",  # relative to the kubeconfig's folder
                "client-certificate": str(client.cert_path),
                "client-key": str(client.key_path),
            },
        )
    )
    now = [0.0]
    entry = kubeconfig.read_kubeconfig(path)
    creds = kubeconfig.credentials(entry, token_reload=60.0, clock=lambda: now[0])
    async with open_kube_session(creds, connect_timeout=10) as session:
        url = f"{creds.server}/version"
        (await session.get(url)).release()
        (tmp_path / "token").write_text("second\n")
        now[0] = 59.0
        (await session.get(url)).release()
        now[0] = 60.0
        (await session.get(url)).release()
        (await session.get(url, headers={"Authorization": "Bearer own"})).release()
    assert seen == ["Bearer first", "Bearer first", "Bearer second", "Bearer own"]

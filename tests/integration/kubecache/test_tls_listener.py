"""The kube proxy can serve HTTPS for components that insist on an https:// server URL."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client

from edge_agent.kubecache import serve_kube_proxy
from edge_agent.kubecache.upstream import open_direct_upstream
from tests.harness import kube
from tests.harness.certs import TestCA
from tests.integration.kubecache.conftest import edge_settings

pytestmark = pytest.mark.kube


async def test_https_listener_with_the_official_client(
    kube_cluster: kube.ControlPlane, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "pki", name="edge-local-ca")
    serving = ca.issue("kube-proxy", server=True, hosts=("127.0.0.1",))
    settings = edge_settings(
        tmp_path, tls_cert_file=str(serving.cert_path), tls_key_file=str(serving.key_path)
    )
    async with (
        open_direct_upstream(kube_cluster.kubeconfig) as upstream,
        serve_kube_proxy(settings, upstream) as proxy,
    ):
        assert proxy.url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(ca.cert_path))
        async with (
            aiohttp.ClientSession() as http,
            http.get(proxy.url + "/version", ssl=trusting) as answer,
        ):
            assert answer.status == 200
            assert (await answer.json())["gitVersion"] == kube.KUBE_VERSION
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(proxy.url + "/version")  # the system store does not know it
        configuration = client.Configuration()
        configuration.host = proxy.url
        configuration.ssl_ca_cert = str(ca.cert_path)
        with client.ApiClient(configuration) as api:
            # The official client blocks: run it off the loop that serves the proxy.
            info = await asyncio.to_thread(client.VersionApi(api).get_code)
        assert info.git_version == kube.KUBE_VERSION

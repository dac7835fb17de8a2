"""The API server the ``kube`` service reaches: read from a kubeconfig, held as one session."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from kubernetes import client as kube_client
from kubernetes import config as kube_config

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class KubeUpstream:
    base_url: str
    session: aiohttp.ClientSession


def _ssl_context(configuration: kube_client.Configuration) -> ssl.SSLContext | bool:
    if not str(configuration.host).startswith("https://"):
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file and configuration.key_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def load_upstream(kubeconfig: Path) -> tuple[str, ssl.SSLContext | bool, dict[str, str]]:
    """Server URL, TLS and auth header from a kubeconfig, read by the official client."""
    configuration = kube_client.Configuration()
    kube_config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
    )
    headers: dict[str, str] = {}
    keys = {k.lower(): v for k, v in (configuration.api_key or {}).items()}
    # The official client files a kubeconfig token under "BearerToken" (older: "authorization").
    token = keys.get("bearertoken") or keys.get("authorization")
    if token:
        headers["Authorization"] = (
            token if token.lower().startswith("bearer ") else f"Bearer {token}"
        )
    return str(configuration.host).rstrip("/"), _ssl_context(configuration), headers

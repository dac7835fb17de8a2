"""The API server the ``kube`` service reaches: read from a kubeconfig, held as one session.

The kubeconfig is read by the daemons' one loader (:mod:`daemon_support.kubeconfig`): a token,
a ``tokenFile`` read again every ``token_reload`` seconds (a rotating service account token
keeps working), a client certificate, basic auth; the CA from a file or inline data;
``insecure-skip-tls-verify`` honoured (the operator's own hub). Credential plugins (``exec``,
``auth-provider``) are refused: the server would run a command named by a config file on the
request path each time a token expires (the official client, used before, ran it once and
then sent the expired token). A ``tokenFile`` that a timer keeps fresh does the same job.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from daemon_support.kubeconfig import KubeconfigError, load_kubeconfig
from daemon_support.kubeconfig_session import open_kube_session

__all__ = ["KubeUpstream", "KubeconfigError", "load_upstream", "open_upstream"]


@dataclass(frozen=True, kw_only=True)
class KubeUpstream:
    base_url: str
    session: aiohttp.ClientSession


def load_upstream(kubeconfig: Path) -> tuple[str, ssl.SSLContext | bool, dict[str, str]]:
    """Server URL, TLS and the auth header as of now; KubeconfigError says what is unusable.

    For checks before start; :func:`open_upstream` gives a session whose token follows its
    file.
    """
    creds = load_kubeconfig(kubeconfig, allow_insecure=True)
    authorization = creds.authorization()
    headers = {"Authorization": authorization} if authorization else {}
    context: ssl.SSLContext | bool = creds.ssl_context if creds.ssl_context is not None else False
    return creds.server, context, headers


def open_upstream(
    kubeconfig: Path,
    *,
    connect_timeout: float = 10.0,
    max_connections: int = 256,
    token_reload: float = 60.0,
) -> KubeUpstream:
    """The upstream of ``--kube-upstream``: a session authenticating each request afresh.

    The caller closes ``session``. Raises KubeconfigError (a ValueError) when unusable.
    """
    creds = load_kubeconfig(kubeconfig, token_reload=token_reload, allow_insecure=True)
    session = open_kube_session(
        creds, connect_timeout=connect_timeout, max_connections=max_connections
    )
    return KubeUpstream(base_url=creds.server, session=session)

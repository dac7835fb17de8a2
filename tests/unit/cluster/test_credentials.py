"""How the agent reaches its member: kubeconfig or service account, verified TLS, clear errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from edge_agent.cluster.credentials import CredentialsError, TokenSource, load
from edge_agent.cluster.settings import ClusterSettings
from tests.harness.certs import TestCA


def _kubeconfig(
    tmp_path: Path, user: dict[str, object], cluster: dict[str, object] | None = None
) -> Path:
    ca = TestCA(tmp_path / "ca")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "m",
                "cluster": cluster
                or {"server": "https://127.0.0.1:6443", "certificate-authority": str(ca.cert_path)},
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "m", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_token(tmp_path: Path) -> None:
    creds = load(ClusterSettings(kubeconfig=_kubeconfig(tmp_path, {"token": "abc"})))
    assert (creds.host, creds.port, creds.host_header) == ("127.0.0.1", 6443, "127.0.0.1:6443")
    assert creds.authorization() == "Bearer abc"


def test_a_token_file_is_read_again_after_token_reload(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one\n")
    now = [0.0]
    source = TokenSource(path=tmp_path / "token", reload=60.0, clock=lambda: now[0])
    assert source.value() == "one"
    (tmp_path / "token").write_text("two\n")
    now[0] = 59.0
    assert source.value() == "one"
    now[0] = 60.0
    assert source.value() == "two"


def test_a_client_certificate_rides_in_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "client-ca")
    pair = ca.issue("edgefleet-agent", server=False)
    user: dict[str, object] = {
        "client-certificate-data": base64.b64encode(pair.cert_path.read_bytes()).decode(),
        "client-key": str(pair.key_path),
    }
    creds = load(ClusterSettings(kubeconfig=_kubeconfig(tmp_path, user)))
    assert creds.authorization() is None


@pytest.mark.parametrize(
    ("user", "cluster", "message"),
    [
        ({"token": "t"}, {"server": "https://h", "insecure-skip-tls-verify": True}, "refused"),
        ({"token": "t"}, {"server": "http://h:8080"}, "must be an https:// URL"),
        ({"token": "t"}, {"server": "https://h/prefix"}, "with a path"),
        ({"exec": {"command": "aws"}}, None, "plugins (exec) are not supported"),
        ({}, None, "has no credential the agent can use"),
        ({"client-certificate": "c.pem"}, None, "needs both client-certificate and client-key"),
        ({"tokenFile": "missing"}, None, "cannot read the token file"),
    ],
)
def test_unusable_kubeconfigs_say_why(
    tmp_path: Path, user: dict[str, object], cluster: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(CredentialsError) as refused:
        load(ClusterSettings(kubeconfig=_kubeconfig(tmp_path, user, cluster)))
    assert message in str(refused.value)


def test_in_cluster_reads_the_service_account(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    (tmp_path / "sa").mkdir()
    (tmp_path / "sa" / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    (tmp_path / "sa" / "token").write_text("jwt\n")
    settings = ClusterSettings(in_cluster=True, service_account_dir=tmp_path / "sa")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = load(settings, environ=env)
    assert creds.server == "https://[fd00::1]:443"
    assert creds.host_header == "[fd00::1]"
    assert creds.authorization() == "Bearer jwt"


def test_in_cluster_outside_a_pod_says_so(tmp_path: Path) -> None:
    settings = ClusterSettings(in_cluster=True, service_account_dir=tmp_path)
    with pytest.raises(CredentialsError) as refused:
        load(settings, environ={})
    assert "not running in a pod" in str(refused.value)

"""The agent's ``kube-apiserver`` target against a real member API server, with no cloud.

The cloud always sends the scheme's impersonation, so what the agent itself refuses is tested
here: a tunnel pair on loopback, the agent's handler on one end, raw HTTP/1.1 written into
streams from the other, a real kube-apiserver behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import h11
import prometheus_client
import pytest
import yaml

from edge_agent.cluster import ApiServerMetrics, ApiServerTarget, credentials
from edge_agent.cluster.settings import ClusterSettings
from tests.harness import kube
from tests.harness.procs import free_port
from tests.integration.clusters.members import prepare_member, write_kubeconfig
from tests.integration.tunnel_aio.test_connection import tunnel_pair
from tunnel_aio import TunnelStream

pytestmark = pytest.mark.kube

REVIEW = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})


def _target(settings: ClusterSettings) -> ApiServerTarget:
    return ApiServerTarget(
        settings=settings,
        credentials=credentials.load(settings),
        metrics=ApiServerMetrics(prometheus_client.CollectorRegistry()),
    )


@pytest.fixture(scope="module")
def member_kubeconfig(
    kube_cluster: kube.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    token = prepare_member(kube_cluster)
    return write_kubeconfig(
        tmp_path_factory.mktemp("agent-target") / "kubeconfig",
        server=kube_cluster.url,
        token=token,
        ca=kube_cluster.ca_path,
    )


def _review(*headers: tuple[str, str]) -> bytes:
    lines = [
        "POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1",
        "Host: kube-apiserver",
        "Authorization: Bearer the-callers-own",
        "Content-Type: application/json",
        f"Content-Length: {len(REVIEW)}",
        "Connection: close",
        *(f"{n}: {v}" for n, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + REVIEW).encode()


async def _exchange(target: ApiServerTarget, request: bytes) -> tuple[int, dict[str, object]]:
    """Write ``request`` into a stream served by ``target``; the status and the JSON answer."""

    async def handler(stream: TunnelStream) -> None:
        await target.serve(stream)

    async with tunnel_pair(client_handler=handler) as pair:
        stream = await pair.server.open_stream("kube-apiserver")
        await stream.write(request)
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        body = b""
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.read())
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        stream.reset()
    return status, json.loads(body)


async def test_the_scheme_passes_with_the_agents_credential(member_kubeconfig: Path) -> None:
    target = _target(ClusterSettings(kubeconfig=member_kubeconfig))
    status, answer = await _exchange(
        target,
        _review(
            ("Impersonate-User", "edgefleet:operator"),
            ("Impersonate-Group", "edgefleet:operator"),
            ("Impersonate-Extra-user.edgefleet.io", "otto"),
        ),
    )
    assert status == 201, answer
    info = answer["status"]["userInfo"]  # type: ignore[index]
    assert info["username"] == "edgefleet:operator"
    assert info["extra"] == {"user.edgefleet.io": ["otto"]}
    assert target.counts == {"relayed": 1}


@pytest.mark.parametrize(
    "headers",
    [
        (),  # would run as the agent itself
        (("Impersonate-User", "system:admin"),),
        (("Impersonate-User", "edgefleet:admin"), ("Impersonate-Group", "system:masters")),
        (("Impersonate-User", "edgefleet:admin"), ("Impersonate-Uid", "0")),
    ],
)
async def test_other_impersonation_is_refused_by_the_agent(
    member_kubeconfig: Path, headers: tuple[tuple[str, str], ...]
) -> None:
    target = _target(ClusterSettings(kubeconfig=member_kubeconfig))
    status, answer = await _exchange(target, _review(*headers))
    assert status == 403
    assert answer["kind"] == "Status"
    assert answer["reason"] == "Forbidden"
    assert str(answer["message"]).startswith("the cluster agent refused this request")
    assert target.counts == {"refused_403": 1}


@pytest.fixture
def dead_kubeconfig(tmp_path: Path, member_kubeconfig: Path) -> Path:
    """The member's kubeconfig with a port nobody listens on."""
    config = yaml.safe_load(member_kubeconfig.read_text())
    return write_kubeconfig(
        tmp_path / "dead",
        server=f"https://127.0.0.1:{free_port()}",
        token=config["users"][0]["user"]["token"],
        ca=Path(config["clusters"][0]["cluster"]["certificate-authority"]),
    )


async def test_an_unreachable_member_is_a_503(dead_kubeconfig: Path) -> None:
    dead = dead_kubeconfig
    target = _target(ClusterSettings(kubeconfig=dead))
    status, answer = await _exchange(target, _review(("Impersonate-User", "edgefleet:admin")))
    assert status == 503
    assert answer["reason"] == "ServiceUnavailable"
    assert "cannot reach its API server" in str(answer["message"])
    assert target.last_error is not None


async def test_a_silent_stream_is_a_408(member_kubeconfig: Path) -> None:
    target = _target(ClusterSettings(kubeconfig=member_kubeconfig, head_timeout=0.2))
    status, answer = await _exchange(target, b"GET /version HTTP/1.1\r\n")  # never finished
    assert status == 408
    assert answer["reason"] == "Timeout"


def _get(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: kube-apiserver\r\nConnection: close\r\n"
        "Impersonate-User: edgefleet:admin\r\nImpersonate-Group: edgefleet:admin\r\n\r\n"
    ).encode()


async def test_bodiless_gets_reuse_a_kept_connection(member_kubeconfig: Path) -> None:
    target = _target(ClusterSettings(kubeconfig=member_kubeconfig))
    for path in ("/version", "/api/v1/namespaces", "/version"):
        status, answer = await _exchange(target, _get(path))
        assert status == 200, answer
    assert target.counts == {"relayed_kept": 3}
    assert target.pool.reused == 2
    assert len(target.pool) == 1
    target.close()
    assert len(target.pool) == 0

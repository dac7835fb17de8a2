"""Local member clusters for ``EDGEFLEET_CLUSTERS=N scripts/quickstart``.

    .venv/bin/python scripts/quickstart_clusters.py --count N --dir DIR

Starts N member clusters on loopback with the test harness (tests/harness/member.py: kine +
kube-apiserver + kube-controller-manager + kube-scheduler + kwok with fake nodes; binaries from
scripts/kube-build's cache), gives each a small demo Deployment so ``kubectl get pods -A`` shows
running pods (their nodes labelled ``site: local``, and kwok playing every node annotated
``kwok.x-k8s.io/node: fake``, so the nodes an elastic NodePool's kwok provider adds come up
Ready too: docs/elastic.md), writes ``DIR/clusters.json`` (name, API server URL, CA file and
admin kubeconfig of each) once all are ready, and runs until SIGTERM or SIGINT, then stops them
all. For the gateway demo (docs/gateway.md) each cluster also gets a Service ``gateway-demo/hello``
whose EndpointSlice points at a small HTTP server this process runs for that cluster (answering
``hello from cluster-N``), on one of the machine's own non-loopback addresses: the API server
refuses loopback in an EndpointSlice. A machine without one gets no gateway demo (``"backend":
null`` in clusters.json, and the quickstart says why). Each start is fresh (the clusters are
scratch; DIR/member* is wiped first). Exits 1 with one line saying why if they cannot start.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import kube  # noqa: E402 - after the repository root is on the path
from tests.harness.addresses import local_address  # noqa: E402
from tests.harness.procs import ServiceError  # noqa: E402

DEMO = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "hello", "namespace": "default", "labels": {"app": "hello"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "hello"}},
        "template": {
            "metadata": {"labels": {"app": "hello"}},
            "spec": {"containers": [{"name": "hello", "image": "registry.k8s.io/pause:3.10"}]},
        },
    },
}
NODES = 2
SITE = {"site": "local"}
"""The label of the clusters' own nodes: the quickstart's ResourcePolicy fills them first."""
KWOK = (
    # kwok's own deployment flags: every node with its annotation (the harness's nodes and a
    # NodePool's kwok nodes alike), in place of the harness's test label.
    "--manage-all-nodes=false",
    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
)


GATEWAY_NAMESPACE = "gateway-demo"
GATEWAY_SERVICE = "hello"


class _Hello(http.server.BaseHTTPRequestHandler):
    """``hello from cluster-N``: which cluster's backend the gateway chose, plainly."""

    protocol_version = "HTTP/1.1"
    cluster = "?"

    def do_GET(self) -> None:
        body = f"hello from {self.cluster} (path {self.path})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Quiet: the gateway's own logs say what was forwarded."""


@contextlib.contextmanager
def hello_servers(names: list[str], host: str) -> Iterator[list[int]]:
    """One threaded HTTP server per cluster name on ``host``; yields their ports."""
    servers = []
    try:
        for name in names:
            handler = type(f"Hello_{name}", (_Hello,), {"cluster": name})
            server = http.server.ThreadingHTTPServer((host, 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"hello-{name}", daemon=True).start()
            servers.append(server)
        yield [server.server_address[1] for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def gateway_objects(host: str, port: int) -> list[tuple[str, dict[str, Any]]]:
    """The demo Service (no selector) and its hand-written EndpointSlice, with their paths."""
    ns = GATEWAY_NAMESPACE
    return [
        ("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        (
            f"/api/v1/namespaces/{ns}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": GATEWAY_SERVICE, "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]},
            },
        ),
        (
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{GATEWAY_SERVICE}-quickstart",
                    "namespace": ns,
                    "labels": {
                        "kubernetes.io/service-name": GATEWAY_SERVICE,
                        # Not the EndpointSlice controller's: no controller rewrites it.
                        "endpointslice.kubernetes.io/managed-by": "quickstart.edgefleet.io",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            },
        ),
    ]


def serve(count: int, base: Path, stop: threading.Event, serving: threading.Event) -> None:
    """Start the clusters, announce them in ``base/clusters.json``, wait for ``stop``."""
    from tests.harness import member  # noqa: PLC0415 - checked by main()

    ready = base / "clusters.json"
    ready.unlink(missing_ok=True)
    for old in base.glob("member*"):
        shutil.rmtree(old, ignore_errors=True)
    try:
        # Named member0.. inside (their nodes: member0-node-0, ...); registered as cluster-1..
        names = [f"cluster-{index}" for index in range(1, count + 1)]
        host = local_address(socket.AF_INET)
        with (
            member.member_clusters(
                count, base, nodes=NODES, node_labels=SITE, kwok_manage="all", kwok_args=KWOK
            ) as started,
            hello_servers(names if host else [], host or "") as ports,
        ):
            for cluster in started:
                cluster.api("POST", "/apis/apps/v1/namespaces/default/deployments", DEMO)
            for cluster, port in zip(started, ports, strict=True) if host else ():
                for path, body in gateway_objects(host, port):
                    cluster.api("POST", path, body)
            listing = [
                {
                    "name": name,
                    "url": c.url,
                    "ca": str(c.plane.ca_path),
                    "kubeconfig": str(c.kubeconfig),
                    "backend": f"{host}:{port}" if host else None,
                }
                for name, c, port in zip(names, started, ports or [0] * count, strict=True)
            ]
            ready.write_text(json.dumps(listing, indent=2) + "\n")
            serving.set()
            stop.wait()
    finally:
        ready.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, required=True, help="how many clusters (1-8)")
    parser.add_argument("--dir", type=Path, required=True, help="folder for their data")
    args = parser.parse_args()
    if not 1 <= args.count <= 8:
        parser.error("--count: 1 to 8 (each cluster is five processes)")
    os.environ.setdefault("EDGEFLEET_KUBE_BIN", str(kube.DEFAULT_BIN))
    try:
        from tests.harness import member  # noqa: F401, PLC0415 - landed with issue 12
    except ImportError as exc:
        print(f"quickstart: no member-cluster harness ({exc})", file=sys.stderr)
        return 1
    stop = threading.Event()
    serving = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        if not serving.is_set():
            raise KeyboardInterrupt  # still starting: stop at once, not once all are ready

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    base = args.dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    try:
        serve(args.count, base, stop, serving)
    except KeyboardInterrupt:
        return 130
    except (ServiceError, OSError) as exc:
        print(f"quickstart: member clusters did not start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

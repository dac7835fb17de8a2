"""Local member clusters for ``EDGEFLEET_CLUSTERS=N scripts/quickstart``.

    .venv/bin/python scripts/quickstart_clusters.py --count N --dir DIR

Starts N member clusters on loopback with the test harness (tests/harness/member.py: kine +
kube-apiserver + kube-controller-manager + kube-scheduler + kwok with fake nodes; binaries from
scripts/kube-build's cache), gives each a small demo Deployment so ``kubectl get pods -A`` shows
running pods (their nodes labelled ``site: local``, and kwok playing every node annotated
``kwok.x-k8s.io/node: fake``, so the nodes an elastic NodePool's kwok provider adds come up
Ready too: docs/elastic.md), writes ``DIR/clusters.json`` (name, API server URL, CA file and
admin kubeconfig of each) once all are ready, and runs until SIGTERM or SIGINT, then stops them
all. Each start is fresh (the clusters are scratch; DIR/member* is wiped first). Exits 1 with
one line saying why if they cannot start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import kube  # noqa: E402 - after the repository root is on the path
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


def serve(count: int, base: Path, stop: threading.Event, serving: threading.Event) -> None:
    """Start the clusters, announce them in ``base/clusters.json``, wait for ``stop``."""
    from tests.harness import member  # noqa: PLC0415 - checked by main()

    ready = base / "clusters.json"
    ready.unlink(missing_ok=True)
    for old in base.glob("member*"):
        shutil.rmtree(old, ignore_errors=True)
    try:
        # Named member0.. inside (their nodes: member0-node-0, ...); registered as cluster-1..
        with member.member_clusters(
            count, base, nodes=NODES, node_labels=SITE, kwok_manage="all", kwok_args=KWOK
        ) as started:
            for cluster in started:
                cluster.api("POST", "/apis/apps/v1/namespaces/default/deployments", DEMO)
            listing = [
                {
                    "name": f"cluster-{index}",
                    "url": c.url,
                    "ca": str(c.plane.ca_path),
                    "kubeconfig": str(c.kubeconfig),
                }
                for index, c in enumerate(started, start=1)
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

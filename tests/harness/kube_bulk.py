# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Many pods in a real API server, fast: concurrent creates over one aiohttp session.

No kubelet runs, so the pods never start; ``spec.nodeName`` is set as the scheduler would,
which is what a node's kubelet lists (``fieldSelector=spec.nodeName=<node>``). Shared by the
5,000-pod test and ``scripts/bench/kubecache``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp

NODES = 10
APPS = 5
TIERS = ("web", "db", "cache")


def pod(index: int) -> dict[str, Any]:
    """A pod the size of a small real one (about 1.5 KB of JSON once stored)."""
    app = f"app-{index % APPS}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{index:05}",
            "labels": {"app": app, "tier": TIERS[index % len(TIERS)], "index": str(index)},
            "annotations": {"edgefleet.io/note": "bulk test pod"},
        },
        "spec": {
            "nodeName": f"node-{index % NODES}",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "args": ["--listen", ":8080"],
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "APP", "value": app}, {"name": "INDEX", "value": str(index)}],
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                        "limits": {"cpu": "100m", "memory": "64Mi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                }
            ],
            "tolerations": [
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                }
            ],
        },
    }


async def create_pods(
    *,
    url: str,
    token: str,
    ssl_context: ssl.SSLContext,
    namespace: str,
    count: int,
    concurrency: int = 48,
) -> None:
    """Create ``pod(0) .. pod(count-1)`` in ``namespace``; raises on the first refusal."""
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(ssl=ssl_context, limit=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    target = f"{url}/api/v1/namespaces/{namespace}/pods"
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one(index: int) -> None:
            async with gate, http.post(target, json=pod(index)) as response:
                if response.status != 201:
                    raise RuntimeError(
                        f"pod {index}: HTTP {response.status} {await response.text()}"
                    )

        async with asyncio.TaskGroup() as group:
            for index in range(count):
                group.create_task(one(index), name=f"bulk.pod.{index}")

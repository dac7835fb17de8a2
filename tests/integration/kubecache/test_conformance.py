# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Kubernetes' own conformance specs pass through the kube proxy as they pass direct.

Kubernetes' e2e suite is the reference for what a client may rely on. A real ``edge-agent``
caches every component (``cache_agents = ["*"]``) in front of the shared real API server, and
``e2e.test`` runs a chosen set of API-only specs with a kubeconfig pointing at the proxy.
The control plane has no nodes, so only specs that need no pod running are chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from kubernetes import client

from tests.harness import e2e, kube
from tests.harness.kube_agent import KubeAgent
from tests.integration.kubecache.conftest import Edge
from tests.integration.kubecache.test_custom_resources import GROUP, VERSION, established

pytestmark = pytest.mark.kube

SPECS = [
    # Watchers: every spec of the group. The concurrent one holds 100 watches open at once.
    "[sig-api-machinery] Watchers should observe add, update, and delete watch notifications",
    "[sig-api-machinery] Watchers should be able to start watching from a specific resource",
    "[sig-api-machinery] Watchers should be able to restart watching from the last resource",
    "[sig-api-machinery] Watchers should observe an object deletion if it stops meeting",
    "[sig-api-machinery] Watchers should receive events on concurrent watches in same order",
    # Plain object lifecycles, CRDs and discovery: reads and writes a node's cache sees.
    "[sig-node] ConfigMap should run through a ConfigMap lifecycle",
    "[sig-node] ConfigMap should update ConfigMap successfully",
    "[sig-node] Secrets should patch a secret",
    "Simple CustomResourceDefinition creating/deleting custom resource definition objects works",
    "Simple CustomResourceDefinition listing custom resource definition objects works",
    "[sig-api-machinery] Discovery should validate PreferredVersion for each APIGroup",
    "[sig-api-machinery] Discovery should locate the groupVersion and a resource within each",
    "[sig-api-machinery] AggregatedDiscovery should support aggregated discovery interface [",
    "[sig-api-machinery] AggregatedDiscovery should support raw aggregated discovery endpoint",
    "[sig-api-machinery] server version should find the server version",
    "[sig-api-machinery] Servers with support for Table transformation should return a 406",
    # Paged LISTs (continue tokens) written through the cache page by page.
    "[sig-api-machinery] Servers with support for API chunking should return chunks of results",
    # More CRD traffic, field validation, server-side apply and policy APIs.
    "Simple CustomResourceDefinition getting/updating/patching custom resource definition status",
    "custom resource defaulting for requests and from storage works",
    "should include custom resource definition resources in discovery documents",
    "[sig-api-machinery] FieldValidation should detect unknown and duplicate fields of a typed",
    "[sig-api-machinery] FieldValidation should detect unknown metadata fields of a typed object",
    "[sig-api-machinery] FieldValidation should create/apply an invalid CR with extra properties",
    "[sig-api-machinery] API priority and fairness should support FlowSchema API operations",
    "[sig-api-machinery] API priority and fairness should support PriorityLevelConfiguration",
    "should support ValidatingAdmissionPolicy API operations",
    "should support ValidatingAdmissionPolicyBinding API operations",
    "should support MutatingAdmissionPolicy API operations",
    "should support MutatingAdmissionPolicyBinding API operations",
]
"""Substrings of the specs' full text; each selects exactly one [Conformance] spec. All pass
direct against the harness's node-less control plane."""

E2E_AGENT = "e2e.test"
"""The User-Agent component of Kubernetes' e2e client (cached: ``cache_agents = ["*"]``)."""

AGENT_HEALTH = {"interval": 5.0, "timeout": 2.0, "failure_threshold": 3, "success_threshold": 2}
"""The agent's default health settings: the e2e run loads the machine, and the test is about
what a client sees through a proxy that stays online, not about fast failover."""


def proxy_kubeconfig(url: str, folder: Path) -> Path:
    """A kubeconfig with the proxy as the server and no credentials (the proxy adds its own)."""
    path = folder / "proxy-kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "edge", "cluster": {"server": url}}],
        "users": [{"name": "node", "user": {}}],
        "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "node"}}],
        "current-context": "edge",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(e2e.RUN_TIMEOUT + 120)
def test_conformance_specs_pass_through_the_proxy(
    kube_cluster: kube.ControlPlane, tmp_path: Path, test_output_dir: Path
) -> None:
    e2e.e2e_binary()  # fail loudly before starting anything if it is missing
    out = test_output_dir / f"e2e-{uuid.uuid4().hex[:8]}"  # the suite's and the agent's logs
    agent = KubeAgent(
        workdir=out / "agent", kubeconfig=kube_cluster.kubeconfig, health=AGENT_HEALTH
    )
    agent.start()
    try:
        agent.wait_state("online")
        result = e2e.run_specs(
            kubeconfig=proxy_kubeconfig(agent.url, tmp_path),
            specs=SPECS,
            workdir=out,
        )
        transitions = {
            state: agent.metric(f'edge_agent_kubecache_health_transitions_total{{to="{state}"}}')
            for state in ("online", "offline")
        }
    finally:
        agent.stop()
    assert not result.failed(), result.summary()
    for spec in SPECS:  # each chosen spec ran, exactly once: a focus typo cannot pass
        assert [s.status for s in result.ran() if spec in s.name] == ["passed"], spec
    assert len(result.ran()) == len(SPECS), result.summary()
    # Online once at start, never offline: with the API server up, the proxy must stay online.
    assert transitions == {"online": 1.0, "offline": None}, transitions


async def test_more_concurrent_watches_than_upstream_connections(
    edge: Edge, namespace: str
) -> None:
    """What the concurrent-watches spec does: 100 watches open at once, each from a past RV.

    Every watch holds one upstream connection for its lifetime; the upstream's connection
    pool must not make the 65th watch (or the health probe, or a write) wait for one.
    """
    count = 100
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    headers = {"User-Agent": f"{E2E_AGENT}/v1.36.3 (linux/amd64) kubernetes/test"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        async with http.get(url) as listed:
            rv = (await listed.json())["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        streams = []
        try:
            # A guard, not a timed assertion: on failure the streams never answer at all.
            async with asyncio.timeout(60):
                for _ in range(count):
                    streams.append(await http.get(url, params=params))  # noqa: PERF401
                async with http.post(url, json={"metadata": {"name": "after"}}) as created:
                    assert created.status == 201, await created.text()
                names = await asyncio.gather(*(first_change(s) for s in streams))
        finally:
            for stream in streams:
                stream.close()
    assert names == [("ADDED", "after")] * count
    offline = edge.registry.get_sample_value(
        "edge_agent_kubecache_health_transitions_total", {"to": "offline"}
    )
    assert not offline, f"the proxy went offline {offline} times with the API server up"


async def first_change(stream: aiohttp.ClientResponse) -> tuple[str, str]:
    assert stream.status == 200, await stream.text()
    while line := await stream.content.readline():
        event = json.loads(line)
        if event["type"] != "BOOKMARK":
            return event["type"], event["object"]["metadata"]["name"]
    return "ENDED", ""


@pytest.fixture
def doomed_crd(direct: client.ApiClient) -> Iterator[str]:
    """A namespaced CRD the test deletes itself (its plural); removed here if it did not."""
    plural = f"gadgets{uuid.uuid4().hex[:8]}"
    schema = client.V1JSONSchemaProps(type="object", x_kubernetes_preserve_unknown_fields=True)
    body = client.V1CustomResourceDefinition(
        metadata=client.V1ObjectMeta(name=f"{plural}.{GROUP}"),
        spec=client.V1CustomResourceDefinitionSpec(
            group=GROUP,
            scope="Namespaced",
            names=client.V1CustomResourceDefinitionNames(plural=plural, kind=f"G{plural[1:]}"),
            versions=[
                client.V1CustomResourceDefinitionVersion(
                    name=VERSION,
                    served=True,
                    storage=True,
                    schema=client.V1CustomResourceValidation(open_apiv3_schema=schema),
                )
            ],
        ),
    )
    extensions = client.ApiextensionsV1Api(direct)
    extensions.create_custom_resource_definition(body)
    yield plural
    with contextlib.suppress(client.ApiException):
        extensions.delete_custom_resource_definition(f"{plural}.{GROUP}")


async def test_watch_of_custom_resources_ends_when_their_crd_is_deleted(
    edge: Edge, direct: client.ApiClient, namespace: str, doomed_crd: str
) -> None:
    """The API server ends such a watch and answers 404 after; the node must stay online.

    Seen in the conformance run: a cached watch re-watched, got 404, counted it as an upstream
    failure every second and took the node offline, so discovery came from the cache and
    still listed the deleted CRD.
    """
    crd = doomed_crd
    await asyncio.to_thread(established, direct, crd, namespace)
    url = f"{edge.url}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{crd}"
    headers = {"User-Agent": f"{E2E_AGENT}/v1.36.3 (linux/amd64) kubernetes/test"}
    extensions = client.ApiextensionsV1Api(direct)
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(url) as listed:
            rv = (await listed.json())["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        async with http.get(url, params=params) as stream:
            assert stream.status == 200, await stream.text()
            await asyncio.to_thread(extensions.delete_custom_resource_definition, f"{crd}.{GROUP}")
            # A guard, not a timed assertion: on failure the stream never ends.
            async with asyncio.timeout(60):
                while await stream.content.readline():
                    pass
        async with http.get(url, params=params) as again:
            assert again.status == 404, await again.text()
    offline = edge.registry.get_sample_value(
        "edge_agent_kubecache_health_transitions_total", {"to": "offline"}
    )
    assert not offline, f"the proxy went offline {offline} times with the API server up"

"""The ResourcePolicy admission webhook against a real member cluster.

The member runs kube-apiserver, kube-scheduler, kube-controller-manager and kwok; the elastic
CRDs are applied with the real kubectl. ``AdmissionWebhook.run`` makes its certificates,
listens on 127.0.0.1 (port 0) and registers a MutatingWebhookConfiguration with
``url: https://127.0.0.1:<bound port>/mutate-pods``, so the API server calls it for real, over
TLS verified with the caBundle. Pods come from Deployments (the ReplicaSet controller creates
them with ``generateName``), so the path is the one a user's pods take.

Every call that makes the API server call the webhook goes through a thread: the webhook
answers on this test's own event loop, which must not be blocked meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import os
import secrets
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.elastic.webhook import (
    ANNOTATION_ADMISSION,
    MAX_BODY_BYTES,
    AdmissionWebhook,
    WebhookTiming,
)
from edge_agent.cluster.elastic.webhook_config import COLLECTION
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.member_watch import Informer, InformerSettings
from fleet_model.elastic.units import ANNOTATION_POLICY, ANNOTATION_UNIT, WAITING_GATE
from tests.harness import member
from tests.harness.waiting import eventually, eventually_async

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "packaging" / "kubernetes" / "elastic" / "40-elastic-crds.yaml"
GROUP = "elastic.edgefleet.io"
POLICIES = f"/apis/{GROUP}/v1alpha1/resourcepolicies"
AGENT_NAMESPACE = "edgefleet-test-agent"
WITHIN = 120.0
"""Seconds: a safety net for two busy cores (pods go through three controllers)."""
FAST = InformerSettings(backoff_initial=0.05, backoff_max=0.5)
SETTINGS = ElasticSettings(
    enabled=True,
    webhook_listen="127.0.0.1:0",
    webhook_url="https://127.0.0.1:0/mutate-pods",  # port 0: the port the listener bound
    webhook_name="edgefleet-elastic-test",
    webhook_timeout=3,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[member.MemberCluster]:
    spec = member.MemberSpec(nodes=2)
    with member.running_member("hook", tmp_path_factory.mktemp("member-hook"), spec) as m:
        m.kubectl("apply", "-f", str(CRDS))
        for plural in ("nodepools", "resourcepolicies"):
            m.kubectl(
                "wait", "--for=condition=Established", f"crd/{plural}.{GROUP}", "--timeout=120s"
            )
        eventually(
            lambda: m.kubectl("get", "resourcepolicies", "-A", check=False),
            lambda done: done.returncode == 0,
            what="the elastic kinds in discovery",
            within=60.0,
            every=0.5,
        )
        yield m


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state folder for the module: the CA stays, as across restarts of an agent."""
    return tmp_path_factory.mktemp("webhook-state")


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def call(cluster: member.MemberCluster, method: str, path: str, body: object = None) -> Any:
    """One admin request from a thread; the decoded answer (ServiceError if not 2xx)."""
    return await asyncio.to_thread(cluster.api, method, path, body)


async def new_namespace(cluster: member.MemberCluster) -> str:
    name = unique("hook")
    await call(cluster, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    # Pods need the namespace's default service account (the ServiceAccount admission plugin).
    await eventually_async(
        lambda: asyncio.to_thread(
            cluster.plane.request, "GET", f"/api/v1/namespaces/{name}/serviceaccounts/default"
        ),
        lambda answer: answer[0] == 200,
        what=f"the default service account of {name}",
        within=WITHIN,
        every=0.2,
    )
    return name


def policy(namespace: str, name: str, app: str, units: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ResourcePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": app}}, "units": units},
    }


UNITS = [
    {"name": "local", "nodeSelector": {"edgefleet.io/site": "dc1"}},
    {"name": "cloud", "nodeSelector": {"tier": "burst"}},
]


async def create_policy(cluster: member.MemberCluster, body: Mapping[str, Any]) -> None:
    namespace = body["metadata"]["namespace"]
    await call(
        cluster, "POST", f"/apis/{GROUP}/v1alpha1/namespaces/{namespace}/resourcepolicies", body
    )


def pod_body(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": "example/app:1"}]},
    }


def deployment(name: str, app: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "main", "image": "example/app:1"}]},
            },
        },
    }


async def create_deployment(
    cluster: member.MemberCluster, namespace: str, name: str, app: str, replicas: int
) -> None:
    body = deployment(name, app, replicas)
    await call(cluster, "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body)


async def pods_of(cluster: member.MemberCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    listing = await call(
        cluster, "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3D{app}"
    )
    return list(listing["items"])


def gated(pod: Mapping[str, Any]) -> bool:
    gates = pod["spec"].get("schedulingGates") or []
    return bool({"name": WAITING_GATE} in gates)


def condition(pod: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for item in pod.get("status", {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return None


def running(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("status", {}).get("phase") == "Running")


async def dry_run(cluster: member.MemberCluster, namespace: str, app: str) -> dict[str, Any]:
    """The pod the API server would store for a create (``dryRun=All``: the webhook is called)."""
    path = f"/api/v1/namespaces/{namespace}/pods?dryRun=All"
    answer: dict[str, Any] = await call(cluster, "POST", path, pod_body(unique("probe"), app))
    return answer


async def until_effective(cluster: member.MemberCluster, namespace: str, app: str) -> None:
    """Wait until the API server calls this webhook (it loads configurations asynchronously)."""
    await eventually_async(
        lambda: dry_run(cluster, namespace, app),
        gated,
        what="a dry-run pod held at the gate (the API server calling our webhook)",
        within=WITHIN,
        every=0.2,
    )


@contextlib.asynccontextmanager
async def serving(
    api: MemberApi,
    state_dir: Path,
    *,
    settings: ElasticSettings = SETTINGS,
    pods: Informer | None = None,
    prepare: Any = None,
    registry: prometheus_client.CollectorRegistry | None = None,
) -> AsyncIterator[AdmissionWebhook]:
    """The policies informer and the webhook running for the block, which starts when ready."""
    policies = Informer(api, POLICIES, settings=FAST)
    webhook = AdmissionWebhook(
        api=api,
        policies=policies,
        settings=settings,
        state_dir=state_dir,
        pods=pods,
        namespace=AGENT_NAMESPACE,
        registry=registry,
    )
    if prepare is not None:
        prepare(webhook)
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(policies.run(), name="elastic.test.policies"),
            group.create_task(webhook.run(), name="elastic.test.webhook"),
        ]
        if pods is not None:
            tasks.append(group.create_task(pods.run(), name="elastic.test.pods"))
        try:
            async with asyncio.timeout(WITHIN):
                await webhook.ready.wait()
                await policies.synced.wait()
            yield webhook
        finally:
            for task in tasks:
                task.cancel()


async def stored_configuration(cluster: member.MemberCluster) -> dict[str, Any]:
    answer: dict[str, Any] = await call(cluster, "GET", f"{COLLECTION}/{SETTINGS.webhook_name}")
    return answer


async def served_certificate(port: int) -> x509.Certificate:
    """The certificate the listener serves now (no verification: we look at it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        transport_ssl = writer.get_extra_info("ssl_object")
        der = transport_ssl.getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def bundle_of(configuration: Mapping[str, Any]) -> bytes:
    return base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"])


# ---------------------------------------------------------------- hold mode


async def test_deployment_pods_matching_a_policy_wait_at_the_gate(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    namespace = await new_namespace(cluster)
    await create_policy(cluster, policy(namespace, "web", "web", UNITS))
    async with serving(api, state_dir):
        await until_effective(cluster, namespace, "web")
        await create_deployment(cluster, namespace, "web", "web", 3)
        await create_deployment(cluster, namespace, "other", "other", 1)
        # The other Deployment's pod runs: the scheduler is at work; ours stay gated.
        (other,) = await eventually_async(
            lambda: pods_of(cluster, namespace, "other"),
            lambda found: len(found) == 1 and running(found[0]),
            what="the unmatched pod Running",
            within=WITHIN,
            every=0.2,
        )
        assert not other["spec"].get("schedulingGates")
        assert ANNOTATION_POLICY not in (other["metadata"].get("annotations") or {})
        held = await eventually_async(
            lambda: pods_of(cluster, namespace, "web"),
            lambda found: (
                len(found) == 3
                and all(
                    (condition(p, "PodScheduled") or {}).get("reason") == "SchedulingGated"
                    for p in found
                )
            ),
            what="three pods of the Deployment, SchedulingGated",
            within=WITHIN,
            every=0.2,
        )
        for pod in held:
            assert pod["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]
            assert pod["metadata"]["annotations"][ANNOTATION_POLICY] == "web"
            assert "nodeName" not in pod["spec"]
            assert pod["status"]["phase"] == "Pending"


async def test_pods_of_another_namespace_are_untouched(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    governed, elsewhere = await new_namespace(cluster), await new_namespace(cluster)
    await create_policy(cluster, policy(governed, "web", "web", UNITS))
    async with serving(api, state_dir):
        await until_effective(cluster, governed, "web")
        await create_deployment(cluster, elsewhere, "web", "web", 2)
        found = await eventually_async(
            lambda: pods_of(cluster, elsewhere, "web"),
            lambda pods: len(pods) == 2 and all(running(p) for p in pods),
            what="the other namespace's pods Running",
            within=WITHIN,
            every=0.2,
        )
        for pod in found:
            assert not pod["spec"].get("schedulingGates")
            assert not pod["metadata"].get("annotations")


async def test_the_configuration_and_its_ca_bundle(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    async with serving(api, state_dir) as webhook:
        configuration = await stored_configuration(cluster)
        (hook,) = configuration["webhooks"]
        assert hook["clientConfig"]["url"] == f"https://127.0.0.1:{webhook.port}/mutate-pods"
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == SETTINGS.webhook_timeout
        assert hook["sideEffects"] == "None"
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["reinvocationPolicy"] == "Never"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["rules"][0]["operations"] == ["CREATE"]
        assert hook["rules"][0]["resources"] == ["pods"]
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [
            "kube-system",
            "kube-node-lease",
            AGENT_NAMESPACE,
        ]
        # The bundle verifies the served certificate for the URL's host, over TLS 1.2+.
        client = ssl.create_default_context(cadata=bundle_of(configuration).decode())
        _, writer = await asyncio.open_connection("127.0.0.1", webhook.port, ssl=client)
        try:
            tls = writer.get_extra_info("ssl_object")
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            writer.close()
            await writer.wait_closed()
    # A restart with the same state keeps the CA: the stored bundle does not move.
    async with serving(api, state_dir):
        assert bundle_of(await stored_configuration(cluster)) == bundle_of(configuration)


async def test_bad_http_input_is_refused_and_the_webhook_keeps_serving(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    namespace = await new_namespace(cluster)
    await create_policy(cluster, policy(namespace, "web", "web", UNITS))
    async with serving(api, state_dir) as webhook:
        bundle = bundle_of(await stored_configuration(cluster)).decode()
        context = ssl.create_default_context(cadata=bundle)
        url = f"https://127.0.0.1:{webhook.port}"
        json_type = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            for method, path, body, headers, status in [
                ("POST", "/mutate-pods", b"not json", json_type, 400),
                ("POST", "/mutate-pods", b'{"kind": "AdmissionReview"}', json_type, 400),
                (
                    "POST",
                    "/mutate-pods",
                    json.dumps(
                        {
                            "apiVersion": "admission.k8s.io/v1",
                            "kind": "AdmissionReview",
                            "request": {"operation": "CREATE"},
                        }
                    ).encode(),
                    json_type,
                    400,
                ),
                ("POST", "/mutate-pods", io.BytesIO(b"x" * (MAX_BODY_BYTES + 1)), json_type, 413),
                ("POST", "/mutate-pods", b"{}", {"Content-Type": "text/plain"}, 415),
                ("GET", "/mutate-pods", None, {}, 405),
                ("PUT", "/mutate-pods", b"{}", json_type, 405),
                ("POST", "/", b"{}", json_type, 404),
            ]:
                async with http.request(method, url + path, data=body, headers=headers) as answer:
                    await answer.read()
                    assert answer.status == status, (method, path, status)
        # Still serving the API server, and right.
        await until_effective(cluster, namespace, "web")


async def test_a_stopped_webhook_lets_pods_through_unchanged(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    namespace = await new_namespace(cluster)
    await create_policy(cluster, policy(namespace, "web", "web", UNITS))
    async with serving(api, state_dir) as webhook:
        await until_effective(cluster, namespace, "web")
        port = webhook.port
    # run() was cancelled: the listener is closed and ready cleared.
    assert not webhook.ready.is_set()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    configuration = await stored_configuration(cluster)
    assert configuration["webhooks"][0]["clientConfig"]["url"].endswith(f":{port}/mutate-pods")
    started = time.monotonic()
    created = await call(
        cluster, "POST", f"/api/v1/namespaces/{namespace}/pods", pod_body("alone", "web")
    )
    elapsed = time.monotonic() - started
    assert elapsed < SETTINGS.webhook_timeout, elapsed
    assert not created["spec"].get("schedulingGates")
    assert not created["metadata"].get("annotations")
    # And a Deployment's pods run as if there were no policy.
    await create_deployment(cluster, namespace, "web", "web", 2)
    await eventually_async(
        lambda: pods_of(cluster, namespace, "web"),
        lambda pods: len(pods) == 3 and all(running(p) for p in pods),
        what="every pod Running with the webhook down",
        within=WITHIN,
        every=0.2,
    )


def held_answers(registry: prometheus_client.CollectorRegistry) -> float:
    value = registry.get_sample_value(
        "edge_agent_elastic_webhook_admissions_total", {"outcome": "held"}
    )
    return value or 0.0


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_killed_listener_process_is_started_again(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    """Hold mode serves from a child process: killed, it is replaced on the same port.

    The readiness flag is down meanwhile, and its answers still count on the agent's metrics.
    """
    namespace = await new_namespace(cluster)
    await create_policy(cluster, policy(namespace, "web", "web", UNITS))
    registry = prometheus_client.CollectorRegistry()
    async with serving(api, state_dir, registry=registry) as webhook:
        await until_effective(cluster, namespace, "web")
        first, port = webhook.listener_pid, webhook.port
        assert first is not None
        assert first != os.getpid()
        await eventually_async(
            lambda: asyncio.sleep(0, held_answers(registry)),
            lambda held: held >= 1,
            what="the child's answers on the agent's metrics",
            within=WITHIN,
            every=0.2,
        )
        os.kill(first, signal.SIGKILL)
        # Not ready while no child listens (the restart waits retry_initial, 1 s).
        await eventually_async(
            lambda: asyncio.sleep(0, webhook.ready.is_set()),
            lambda ready: not ready,
            what="the readiness flag down",
            within=WITHIN,
            every=0.02,
        )
        await eventually_async(
            lambda: asyncio.sleep(0, (webhook.listener_pid, webhook.ready.is_set())),
            lambda state: state[0] not in (None, first) and state[1],
            what="another listener process, ready",
            within=WITHIN,
            every=0.1,
        )
        assert gone(first)
        assert webhook.port == port  # the registered URL stays right
        before = held_answers(registry)
        await until_effective(cluster, namespace, "web")
        await eventually_async(
            lambda: asyncio.sleep(0, held_answers(registry)),
            lambda held: held > before,
            what="the new child's answers on the agent's metrics",
            within=WITHIN,
            every=0.2,
        )
        second = webhook.listener_pid
    assert second is not None
    assert webhook.listener_pid is None
    assert gone(second)  # stopped with run()


async def test_a_policy_change_reaches_the_listener_process(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    namespace = await new_namespace(cluster)
    await create_policy(cluster, policy(namespace, "web", "web", UNITS))
    async with serving(api, state_dir):
        await until_effective(cluster, namespace, "web")
        path = f"/apis/{GROUP}/v1alpha1/namespaces/{namespace}/resourcepolicies/web"
        stored = await call(cluster, "GET", path)
        stored["spec"]["selector"] = {"matchLabels": {"app": "db"}}
        await call(cluster, "PUT", path, stored)
        # A pod created after the update is governed by the new policy, and only by it.
        await until_effective(cluster, namespace, "db")
        assert not gated(await dry_run(cluster, namespace, "web"))


PROPAGATION = 8.0
"""Seconds the renewal test's webhook waits between publishing the bundle and serving the new
certificate: long enough to see the order, on two busy cores, with polls every 0.1 s."""


class ShiftedClock:
    """The wall clock moved back by ``shift``; moving it forward is the test's time travel."""

    def __init__(self, shift: timedelta) -> None:
        self.shift = shift

    def __call__(self) -> datetime:
        return datetime.now(UTC) - self.shift


async def test_a_renewed_ca_is_published_before_its_certificate_is_served(
    cluster: member.MemberCluster, api: MemberApi, tmp_path: Path
) -> None:
    namespace = await new_namespace(cluster)
    await create_policy(cluster, policy(namespace, "web", "web", UNITS))
    # Certificates made "340 days ago" for 365 days, renewed 30 days before expiry: due 5 days
    # ago on the real clock, yet valid now, so the API server accepts both old and new.
    clock = ShiftedClock(timedelta(days=340))

    def prepare(webhook: AdmissionWebhook) -> None:
        webhook.now = clock
        webhook.timing = WebhookTiming(recheck=1.0, ca_propagation=PROPAGATION)

    async with serving(api, tmp_path / "state", prepare=prepare) as webhook:
        await until_effective(cluster, namespace, "web")
        before = await served_certificate(webhook.port)
        (first_ca,) = x509.load_pem_x509_certificates(
            bundle_of(await stored_configuration(cluster))
        )
        clock.shift = timedelta(0)
        # First the configuration trusts both CAs, then the listener serves the new certificate.
        configuration = await eventually_async(
            lambda: stored_configuration(cluster),
            lambda stored: len(x509.load_pem_x509_certificates(bundle_of(stored))) == 2,
            what="the renewed CA bundle (new CA, then the old one) in the configuration",
            within=WITHIN,
            every=0.1,
        )
        new_ca, old_ca = x509.load_pem_x509_certificates(bundle_of(configuration))
        assert old_ca == first_ca
        assert new_ca != first_ca
        # Seen within a poll of its writing: the listener still serves the old certificate
        # (it waits PROPAGATION seconds), which the bundle's old CA keeps trusted.
        assert await served_certificate(webhook.port) == before
        after = await eventually_async(
            lambda: served_certificate(webhook.port),
            lambda served: served != before,
            what="the listener serving the renewed certificate",
            within=WITHIN,
            every=0.1,
        )
        after.verify_directly_issued_by(new_ca)
        assert after.fingerprint(hashes.SHA256()) != before.fingerprint(hashes.SHA256())
        # Only the new certificate is served now: a pod held proves the API server takes it.
        await until_effective(cluster, namespace, "web")


# ---------------------------------------------------------------- without hold


async def test_without_hold_units_fill_in_order_up_to_their_max(
    cluster: member.MemberCluster, api: MemberApi, state_dir: Path
) -> None:
    local, cloud = cluster.nodes
    namespace = await new_namespace(cluster)
    site = unique("site")
    units: list[dict[str, Any]] = [
        {"name": "local", "nodeSelector": {"edgefleet.io/site": site}, "max": 2},
        {"name": "cloud", "nodeSelector": {"edgefleet.io/tier": site}},
    ]
    await asyncio.to_thread(cluster.label_node, local, {"edgefleet.io/site": site})
    await asyncio.to_thread(cluster.label_node, cloud, {"edgefleet.io/tier": site})
    try:
        await create_policy(cluster, policy(namespace, "web", "web", units))
        pods = Informer(api, "/api/v1/pods", settings=FAST)
        counting = dataclasses.replace(SETTINGS, hold=False)
        async with serving(api, state_dir, settings=counting, pods=pods) as webhook:
            assert webhook._nodes is not None
            async with asyncio.timeout(WITHIN):
                await pods.synced.wait()
                await webhook._nodes.synced.wait()
            await eventually_async(
                lambda: dry_run(cluster, namespace, "web"),
                lambda probe: (
                    probe["metadata"].get("annotations", {}).get(ANNOTATION_UNIT) == "local"
                ),
                what="a dry-run pod placed in the local unit",
                within=WITHIN,
                every=0.2,
            )
            await create_deployment(cluster, namespace, "web", "web", 6)
            placed = await eventually_async(
                lambda: pods_of(cluster, namespace, "web"),
                lambda found: len(found) == 6 and all(running(p) for p in found),
                what="six pods Running",
                within=WITHIN,
                every=0.2,
            )
        # The first pod goes to local (preferred, nothing else there yet); local never gets
        # more than its max, whatever the scheduler's spreading does with the others.
        on_local = [p for p in placed if p["spec"]["nodeName"] == local]
        assert 1 <= len(on_local) <= 2, [p["spec"]["nodeName"] for p in placed]
        for pod in placed:
            annotations = pod["metadata"]["annotations"]
            assert annotations[ANNOTATION_POLICY] == "web"
            assert ANNOTATION_ADMISSION in annotations
            assert not gated(pod)
            if annotations[ANNOTATION_UNIT] == "cloud":
                assert pod["spec"]["nodeName"] == cloud
    finally:
        await asyncio.to_thread(cluster.label_node, local, {"edgefleet.io/site": None})
        await asyncio.to_thread(cluster.label_node, cloud, {"edgefleet.io/tier": None})

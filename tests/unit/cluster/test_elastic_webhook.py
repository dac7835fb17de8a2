"""The admission handler in-process: AdmissionReviews in, JSON patches (or none) out.

The aiohttp application of ``AdmissionWebhook`` runs on a loopback test server; its informers
are real ``Informer`` objects whose caches the test fills (as a LIST would), so the handler
reads exactly what it reads in the agent. The patches are applied with ``jsonpatch`` to the
pod sent, so an assertion is about the pod the API server would store. The real API server,
TLS and registration are in tests/integration/elastic/test_webhook.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import io
import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import prometheus_client
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edge_agent.cluster.credentials import MemberCredentials, TokenSource
from edge_agent.cluster.elastic import webhook as webhook_module
from edge_agent.cluster.elastic import webhook_tls
from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.elastic.webhook import (
    ANNOTATION_ADMISSION,
    MAX_BODY_BYTES,
    AdmissionWebhook,
    WebhookTiming,
)
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.member_watch import Informer, InformerSettings
from edge_agent.cluster.settings import ClusterSettings
from fleet_model.elastic.policy import parse_resource_policy
from fleet_model.elastic.units import ANNOTATION_POLICY, ANNOTATION_UNIT, WAITING_GATE

Client = TestClient[web.Request, web.Application]
GROUP = "elastic.edgefleet.io"


class CachedInformer(Informer):
    """An informer whose cache the test sets; ``run`` is never called."""

    def put(self, *objects: dict[str, Any]) -> None:
        for obj in objects:
            metadata = obj["metadata"]
            self._items[(metadata.get("namespace", ""), metadata["name"])] = obj
        self._bump()
        self.synced.set()


def never_opened_api() -> MemberApi:
    credentials = MemberCredentials(
        server="https://127.0.0.1:1",
        host="127.0.0.1",
        port=1,
        ssl_context=ssl.create_default_context(),
        token=TokenSource(),
    )
    return MemberApi(credentials=credentials, settings=ClusterSettings())


def informer(path: str) -> CachedInformer:
    return CachedInformer(never_opened_api(), path, settings=InformerSettings())


def policy(
    name: str,
    *,
    namespace: str = "shop",
    app: str = "web",
    created: str = "2030-01-01T00:00:00Z",
    units: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ResourcePolicy",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "units": units
            if units is not None
            else [
                {"name": "local", "nodeSelector": {"site": "dc1"}},
                {"name": "cloud", "nodeSelector": {"tier": "burst"}},
            ],
            **spec,
        },
    }


def pod(
    name: str = "web-1", *, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels or {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": "example/app:1"}], **spec},
    }


def review(
    obj: object, *, uid: str = "uid-1", namespace: str = "shop", **request: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": obj,
            "dryRun": False,
            **request,
        },
    }


async def post(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post("/mutate-pods", json=body)
    assert answer.status == 200, await answer.text()
    decoded = await answer.json()
    assert decoded["apiVersion"] == "admission.k8s.io/v1"
    assert decoded["kind"] == "AdmissionReview"
    response: dict[str, Any] = decoded["response"]
    assert response["uid"] == body["request"]["uid"]
    assert response["allowed"] is True
    return response


def patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with the response's patch applied (unchanged when there is none)."""
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(obj, operations)
    return result


def outcomes(registry: prometheus_client.CollectorRegistry) -> dict[str, float]:
    found: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == "edge_agent_elastic_webhook_admissions":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["outcome"]] = sample.value
    return found


class Setup:
    def __init__(self, tmp_path: Path, *, hold: bool = True, with_pods: bool = False) -> None:
        self.policies = informer(f"/apis/{GROUP}/v1alpha1/resourcepolicies")
        self.pods = informer("/api/v1/pods") if with_pods else None
        self.nodes = informer("/api/v1/nodes")
        self.registry = prometheus_client.CollectorRegistry()
        self.webhook = AdmissionWebhook(
            api=never_opened_api(),
            policies=self.policies,
            settings=ElasticSettings(hold=hold),
            state_dir=tmp_path,
            pods=self.pods,
            registry=self.registry,
        )
        if self.webhook._nodes is not None:
            self.webhook._nodes = self.nodes


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest_asyncio.fixture
async def client(setup: Setup) -> AsyncIterator[Client]:
    async with TestClient(TestServer(setup.webhook.application())) as test_client:
        yield test_client


async def test_a_governed_pod_is_held_at_the_gate(setup: Setup, client: Client) -> None:
    setup.policies.put(policy("web"))
    sent = pod()
    response = await post(client, review(sent, uid="9f1c-abc"))
    stored = patched(sent, response)
    assert stored["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]
    assert stored["metadata"]["annotations"] == {ANNOTATION_POLICY: "web"}
    # Held: no affinity yet (the controller sets it at release), the rest untouched.
    assert "affinity" not in stored["spec"]
    assert stored["spec"]["containers"] == sent["spec"]["containers"]
    assert outcomes(setup.registry) == {"held": 1.0}


async def test_a_held_pod_keeps_its_own_gates_and_annotations(setup: Setup, client: Client) -> None:
    setup.policies.put(policy("web"))
    sent = pod(schedulingGates=[{"name": "example.com/other"}])
    sent["metadata"]["annotations"] = {"team": "a"}
    del sent["metadata"]["name"]
    sent["metadata"]["generateName"] = "web-"  # as a ReplicaSet sends it: no name yet
    stored = patched(sent, await post(client, review(sent)))
    assert stored["spec"]["schedulingGates"] == [
        {"name": "example.com/other"},
        {"name": WAITING_GATE},
    ]
    assert stored["metadata"]["annotations"] == {"team": "a", ANNOTATION_POLICY: "web"}


async def test_the_oldest_matching_policy_governs(setup: Setup, client: Client) -> None:
    setup.policies.put(
        policy("young", created="2031-01-01T00:00:00Z"),
        policy("old", created="2029-01-01T00:00:00Z"),
    )
    stored = patched(pod(), await post(client, review(pod())))
    assert stored["metadata"]["annotations"] == {ANNOTATION_POLICY: "old"}


async def test_pods_no_policy_governs_are_admitted_unchanged(setup: Setup, client: Client) -> None:
    setup.policies.put(policy("web"), policy("elsewhere", namespace="other"))
    # Labels no policy selects; the right labels in a namespace without a policy of its own.
    assert "patch" not in await post(client, review(pod(labels={"app": "db"})))
    moved = pod()
    moved["metadata"]["namespace"] = "third"
    assert "patch" not in await post(client, review(moved, namespace="third"))
    # The namespace of the request counts when the object does not say it.
    del moved["metadata"]["namespace"]
    assert "patch" not in await post(client, review(moved, namespace="third"))
    assert outcomes(setup.registry) == {"no_policy": 3.0}


async def test_an_annotated_pod_is_not_patched_again(setup: Setup, client: Client) -> None:
    setup.policies.put(policy("web"))
    sent = pod()
    sent["metadata"]["annotations"] = {ANNOTATION_POLICY: "manual"}
    assert "patch" not in await post(client, review(sent))
    assert outcomes(setup.registry) == {"unchanged": 1.0}


async def test_before_the_policies_are_listed_pods_pass_unchanged(
    setup: Setup, client: Client
) -> None:
    assert not setup.policies.synced.is_set()
    assert "patch" not in await post(client, review(pod()))
    assert outcomes(setup.registry) == {"not_synced": 1.0}


async def test_invalid_policies_are_skipped(setup: Setup, client: Client) -> None:
    broken = policy("broken", created="2020-01-01T00:00:00Z", units=[])
    setup.policies.put(broken)
    assert "patch" not in await post(client, review(pod()))
    # A valid one beside it governs, though the broken one is older.
    setup.policies.put(policy("web"))
    stored = patched(pod(), await post(client, review(pod())))
    assert stored["metadata"]["annotations"] == {ANNOTATION_POLICY: "web"}


async def test_policies_are_parsed_once_per_revision(
    setup: Setup, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    real = parse_resource_policy

    def counting(doc: object) -> Any:
        assert isinstance(doc, dict)
        parsed.append(doc["metadata"]["name"])
        return real(doc)

    monkeypatch.setattr(webhook_module, "parse_resource_policy", counting)
    setup.policies.put(policy("web"), policy("db", app="db"))
    for uid in ("a", "b", "c"):
        await post(client, review(pod(), uid=uid))
    assert sorted(parsed) == ["db", "web"]
    setup.policies.put(policy("web", units=[{"name": "only", "nodeSelector": {"site": "x"}}]))
    await post(client, review(pod(), uid="d"))
    assert sorted(parsed) == ["db", "db", "web", "web"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"operation": "UPDATE"}, "not a create"),
        ({"subResource": "binding"}, "a subresource"),
        ({"kind": {"group": "", "version": "v1", "kind": "Binding"}}, "not a pod"),
        ({"resource": {"group": "apps", "version": "v1", "resource": "pods"}}, "other group"),
        ({"object": ["not", "a", "pod"]}, "object not a map"),
        ({"object": {"metadata": {"labels": {"app": "web"}}}}, "no spec"),
        ({"object": None}, "no object"),
        ({"namespace": ""}, "no namespace"),
        ({"object": {**pod(), "metadata": "garbage", "spec": {}}}, "metadata not a map"),
    ],
)
async def test_odd_requests_are_allowed_unchanged(
    setup: Setup, client: Client, change: dict[str, Any], why: str
) -> None:
    setup.policies.put(policy("web", app="web"))
    body = review(pod())
    body["request"].update(change)
    response = await post(client, body)
    assert "patch" not in response, why
    assert sum(outcomes(setup.registry).values()) == 1


async def test_an_error_in_the_decision_admits_unchanged(
    setup: Setup, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhook_module, "admit", broken)
    setup.policies.put(policy("web"))
    assert "patch" not in await post(client, review(pod()))
    assert outcomes(setup.registry) == {"error": 1.0}


async def test_bad_http_input_is_refused_and_serving_goes_on(setup: Setup, client: Client) -> None:
    setup.policies.put(policy("web"))
    not_json = await client.post(
        "/mutate-pods", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert (not_json.status, await not_json.text()) == (400, "the body is not JSON\n")
    deep = await client.post(
        "/mutate-pods", data=b"[" * 200_000, headers={"Content-Type": "application/json"}
    )
    assert deep.status == 400
    text = await client.post("/mutate-pods", data=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status == 415
    big = await client.post(
        "/mutate-pods",
        data=io.BytesIO(b" " * (MAX_BODY_BYTES + 1)),
        headers={"Content-Type": "application/json"},
    )
    assert big.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (MAX_BODY_BYTES // 2)

    chunked = await client.post(
        "/mutate-pods", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status == 413  # no Content-Length: the limit holds while reading
    assert (await client.get("/mutate-pods")).status == 405
    assert (await client.post("/validate", json=review(pod()))).status == 404
    for body, message in [
        ([], "not an AdmissionReview"),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}, "only"),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}, "no request"),
        ({**review(pod()), "request": {"object": pod()}}, "request.uid"),
        ({**review(pod()), "request": {"uid": 7}}, "request.uid"),
        ({**review(pod()), "request": {"uid": "u" * 129}}, "request.uid"),
    ]:
        answer = await client.post("/mutate-pods", json=body)
        assert answer.status == 400, body
        assert message in await answer.text()
    assert outcomes(setup.registry) == {"bad_request": 11.0}  # 404 and 405 are aiohttp's
    # Still serving, and still right.
    stored = patched(pod(), await post(client, review(pod(), uid="after")))
    assert stored["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]


# ---------------------------------------------------------------- without hold


@pytest.fixture
def counting(tmp_path: Path) -> Setup:
    counting_setup = Setup(tmp_path, hold=False, with_pods=True)
    assert counting_setup.pods is not None
    counting_setup.nodes.put(
        {"metadata": {"name": "dc1-a", "labels": {"site": "dc1"}}},
        {"metadata": {"name": "cloud-a", "labels": {"tier": "burst"}}},
    )
    counting_setup.pods.put()  # listed: no pods yet
    return counting_setup


def bound(name: str, node: str, *, uid: str = "before") -> dict[str, Any]:
    placed = pod(name, nodeName=node)
    placed["metadata"]["annotations"] = {
        ANNOTATION_POLICY: "web",
        ANNOTATION_UNIT: "local",
        ANNOTATION_ADMISSION: uid,
    }
    return placed


def preferred_units(stored: dict[str, Any]) -> list[list[dict[str, Any]]]:
    terms = stored["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    return [term["preference"]["matchExpressions"] for term in terms]


async def test_without_hold_units_at_max_are_left_out(counting: Setup) -> None:
    units: list[dict[str, Any]] = [
        {"name": "local", "nodeSelector": {"site": "dc1"}, "max": 2},
        {"name": "cloud", "nodeSelector": {"tier": "burst"}},
    ]
    counting.policies.put(policy("web", units=units))
    assert counting.pods is not None
    counting.pods.put(bound("web-a", "dc1-a"))
    async with TestClient(TestServer(counting.webhook.application())) as client:
        # One pod in local: both units allowed, local first.
        sent = pod()
        del sent["metadata"]["name"]
        sent["metadata"]["generateName"] = "web-"  # as a ReplicaSet sends it: no name yet
        first = patched(sent, await post(client, review(sent, uid="1")))
        assert first["metadata"]["annotations"] == {
            ANNOTATION_POLICY: "web",
            ANNOTATION_UNIT: "local",
            ANNOTATION_ADMISSION: "1",
        }
        assert [e[0]["key"] for e in preferred_units(first)] == ["site", "tier"]
        # The first is not in the cache yet, but counts: local is full now.
        second = patched(pod("web-c"), await post(client, review(pod("web-c"), uid="2")))
        assert second["metadata"]["annotations"][ANNOTATION_UNIT] == "cloud"
        required = second["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert [e["key"] for e in required[0]["matchExpressions"]] == ["tier", "site"]
        # Once the cache shows the first bound elsewhere, local has room again (the cache's
        # pod and the admission are one pod, matched by the annotation).
        counting.pods.put(bound("web-b", "cloud-a", uid="1"))
        third = patched(pod("web-d"), await post(client, review(pod("web-d"), uid="3")))
        assert third["metadata"]["annotations"][ANNOTATION_UNIT] == "local"
    assert outcomes(counting.registry) == {"placed": 3.0}


async def test_without_hold_an_admission_the_cache_never_shows_stops_counting(
    counting: Setup,
) -> None:
    units: list[dict[str, Any]] = [
        {"name": "local", "nodeSelector": {"site": "dc1"}, "max": 1},
        {"name": "cloud", "nodeSelector": {"tier": "burst"}},
    ]
    counting.policies.put(policy("web", units=units))
    async with TestClient(TestServer(counting.webhook.application())) as client:
        first = patched(pod("web-a"), await post(client, review(pod("web-a"), uid="1")))
        assert first["metadata"]["annotations"][ANNOTATION_UNIT] == "local"
        full = patched(pod("web-b"), await post(client, review(pod("web-b"), uid="2")))
        assert full["metadata"]["annotations"][ANNOTATION_UNIT] == "cloud"
        # A dry run (kubectl --dry-run=server) is answered alike but creates nothing to count.
        dry = patched(pod("web-x"), await post(client, review(pod("web-x"), uid="x", dryRun=True)))
        assert dry["metadata"]["annotations"][ANNOTATION_UNIT] == "cloud"
        assert len(counting.webhook._in_flight) == 2
        # web-a was refused after us (it never shows up): past in_flight it no longer counts.
        counting.webhook.timing = WebhookTiming(in_flight=0.0)
        again = patched(pod("web-c"), await post(client, review(pod("web-c"), uid="3")))
        assert again["metadata"]["annotations"][ANNOTATION_UNIT] == "local"


async def test_without_hold_every_unit_full_waits_at_the_gate(counting: Setup) -> None:
    units: list[dict[str, Any]] = [{"name": "local", "nodeSelector": {"site": "dc1"}, "max": 1}]
    counting.policies.put(policy("web", units=units))
    assert counting.pods is not None
    counting.pods.put(bound("web-a", "dc1-a"))
    async with TestClient(TestServer(counting.webhook.application())) as client:
        stored = patched(pod("web-b"), await post(client, review(pod("web-b"))))
    assert stored["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]
    assert outcomes(counting.registry) == {"waiting": 1.0}


async def test_without_hold_pods_are_held_until_the_caches_are_listed(tmp_path: Path) -> None:
    early = Setup(tmp_path, hold=False, with_pods=True)
    early.policies.put(policy("web"))
    async with TestClient(TestServer(early.webhook.application())) as client:
        stored = patched(pod(), await post(client, review(pod())))
    assert stored["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]
    assert outcomes(early.registry) == {"held": 1.0}


async def test_without_hold_and_without_pods_the_webhook_holds(tmp_path: Path) -> None:
    alone = Setup(tmp_path, hold=False, with_pods=False)
    alone.policies.put(policy("web"))
    assert alone.webhook._nodes is None  # no nodes watched for nothing
    async with TestClient(TestServer(alone.webhook.application())) as client:
        stored = patched(pod(), await post(client, review(pod())))
    assert stored["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("webhook_listen", "9443"),
        ("webhook_listen", "0.0.0.0:70000"),
        ("webhook_url", "http://hook.example/mutate-pods"),
        ("webhook_url", "https://user@hook.example/mutate-pods"),
        ("webhook_url", "https://hook.example/mutate-pods?x=1"),
        ("webhook_url", "https://hook.example:99999/mutate-pods"),
        ("webhook_service", "no-slash"),
        ("webhook_service", "ns/Bad_Name"),
    ],
)
def test_bad_settings_are_refused_at_construction(tmp_path: Path, field: str, value: str) -> None:
    changes: dict[str, Any] = {field: value}
    settings = dataclasses.replace(ElasticSettings(), **changes)
    with pytest.raises(ValueError, match=field):
        AdmissionWebhook(
            api=never_opened_api(),
            policies=informer(f"/apis/{GROUP}/v1alpha1/resourcepolicies"),
            settings=settings,
            state_dir=tmp_path,
        )


# ------------------------------------------------------------ the listener thread


def listener_for(setup: Setup, tmp_path: Path) -> tuple[Any, ssl.SSLContext]:
    """The application on a listener thread (as ``run`` serves it); a client context."""
    tls, _ = webhook_tls.ensure_certificates(
        tmp_path / "tls",
        names=["127.0.0.1"],
        lifetime=timedelta(days=2),
        renew_before=timedelta(days=1),
        now=datetime.now(UTC),
    )
    listener = webhook_module._ListenerThread(
        setup.webhook.application(listener_thread=True),
        "127.0.0.1",
        0,
        webhook_tls.server_context(tls),
    )
    client = ssl.create_default_context(cadata=tls.ca_bundle.decode())
    client.check_hostname = False  # the certificate names the service; the CA is what counts
    return listener, client


def post_blocking(port: int, context: ssl.SSLContext, body: dict[str, Any]) -> dict[str, Any]:
    """POST a review with a blocking client: the calling loop does nothing meanwhile."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request(
            "POST", "/mutate-pods", json.dumps(body), {"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        assert answer.status == 200
        response: dict[str, Any] = json.loads(answer.read())["response"]
    finally:
        connection.close()
    assert response["uid"] == body["request"]["uid"]
    return response


async def test_the_listener_thread_answers_while_the_agents_loop_is_busy(
    setup: Setup, tmp_path: Path
) -> None:
    """Hold mode decides on the listener thread from the published snapshot alone.

    A review is answered while the agent's loop is blocked (here: by the blocking client).
    """
    setup.webhook._main_loop = asyncio.get_running_loop()
    listener, context = listener_for(setup, tmp_path)
    listener.start()
    try:
        port = await asyncio.wrap_future(listener.started)
        setup.policies.put(policy("web"))
        # Nothing published yet: the listener does not read the informer (another thread's).
        assert post_blocking(port, context, review(pod(), uid="1")) == {"uid": "1", "allowed": True}
        assert setup.webhook._publish_policies() == setup.policies.revision
        stored = patched(pod(), post_blocking(port, context, review(pod(), uid="2")))
        assert stored["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]
        assert outcomes(setup.registry) == {"not_synced": 1.0, "held": 1.0}
    finally:
        listener.stop()
        await listener.join()
    assert not listener._thread.is_alive()


async def test_without_hold_the_listener_thread_decides_on_the_agents_loop(
    counting: Setup, tmp_path: Path
) -> None:
    """The count's state is the agent loop's: the listener hands such reviews over to it."""
    units: list[dict[str, Any]] = [
        {"name": "local", "nodeSelector": {"site": "dc1"}, "max": 1},
        {"name": "cloud", "nodeSelector": {"tier": "burst"}},
    ]
    counting.policies.put(policy("web", units=units))
    counting.webhook._main_loop = asyncio.get_running_loop()
    listener, context = listener_for(counting, tmp_path)
    listener.start()
    try:
        port = await asyncio.wrap_future(listener.started)
        # Blocking calls would deadlock here: post from a worker thread, the loop stays free.
        first = await asyncio.to_thread(post_blocking, port, context, review(pod(), uid="1"))
        second = await asyncio.to_thread(post_blocking, port, context, review(pod(), uid="2"))
    finally:
        listener.stop()
        await listener.join()
    assert patched(pod(), first)["metadata"]["annotations"][ANNOTATION_UNIT] == "local"
    assert patched(pod(), second)["metadata"]["annotations"][ANNOTATION_UNIT] == "cloud"


async def test_a_listener_that_cannot_listen_raises_its_error(setup: Setup, tmp_path: Path) -> None:
    first, _ = listener_for(setup, tmp_path)
    first.start()
    try:
        port = await asyncio.wrap_future(first.started)
        taken = webhook_module._ListenerThread(
            setup.webhook.application(listener_thread=True), "127.0.0.1", port, first.context
        )
        taken.start()
        with pytest.raises(OSError, match="address already in use"):
            await asyncio.wrap_future(taken.started)
        with pytest.raises(OSError, match="address already in use"):
            await asyncio.wrap_future(taken.finished)
        await taken.join()
    finally:
        first.stop()
        await first.join()


async def test_a_listener_stopped_before_it_listens_ends(setup: Setup, tmp_path: Path) -> None:
    listener, _ = listener_for(setup, tmp_path)
    listener.stop()  # before start: the thread must not wait for ever
    listener.start()
    async with asyncio.timeout(10):
        await listener.join()
    assert listener.finished.result() is None

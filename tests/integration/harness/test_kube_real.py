"""The Kubernetes API server the tests run against is real: clients nobody here wrote agree."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator

import psutil
import pytest
from kubernetes import client, config, watch

from tests.harness import kube

pytestmark = pytest.mark.kube


@pytest.fixture
def api(kube_cluster: kube.ControlPlane) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kube_cluster.kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def test_server_reports_the_pinned_version(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == kube.KUBE_VERSION
    assert (info.major, info.minor) == ("1", "36")


def test_create_and_watch_a_configmap(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    listed = core.list_namespaced_config_map(namespace)
    assert listed.metadata is not None
    start_rv = listed.metadata.resource_version
    assert start_rv is not None
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="greeting"), data={"hello": "1"})
    created = core.create_namespaced_config_map(namespace, body)
    core.patch_namespaced_config_map("greeting", namespace, {"data": {"hello": "2"}})

    seen: list[tuple[str, str]] = []
    stream = watch.Watch().stream(
        core.list_namespaced_config_map,
        namespace,
        resource_version=start_rv,
        timeout_seconds=10,
    )
    for event in stream:
        obj = event["object"]
        seen.append((event["type"], obj.data["hello"]))
        if len(seen) == 2:
            break
    assert seen == [("ADDED", "1"), ("MODIFIED", "2")]
    assert created.metadata is not None
    assert created.metadata.uid
    assert int(created.metadata.resource_version or 0) > int(start_rv)


def test_rbac_is_enforced(kube_cluster: kube.ControlPlane) -> None:
    (nobody_token,) = kube_cluster.extra_tokens
    configuration = client.Configuration()
    configuration.host = kube_cluster.url
    configuration.ssl_ca_cert = str(kube_cluster.ca_path)
    configuration.api_key = {"authorization": f"Bearer {nobody_token}"}
    with (
        client.ApiClient(configuration) as api_client,
        pytest.raises(client.ApiException) as caught,
    ):
        client.CoreV1Api(api_client).list_namespace()
    assert caught.value.status == 403
    assert "nobody" in str(caught.value.body)


def test_kubectl_get(
    kube_cluster: kube.ControlPlane, namespace: str, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="for-kubectl"))
    )
    kubectl = str(kube.kube_bin_dir() / "kubectl")
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig), "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(
        [kubectl, "get", "configmaps", "-n", namespace, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    names = [item["metadata"]["name"] for item in json.loads(listed.stdout)["items"]]
    assert "for-kubectl" in names
    version = subprocess.run(
        [kubectl, "version", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    both = json.loads(version.stdout)
    assert both["clientVersion"]["gitVersion"] == kube.KUBE_VERSION
    assert both["serverVersion"]["gitVersion"] == kube.KUBE_VERSION


def test_three_control_planes_are_independent(
    kube_factory: Callable[[int], list[kube.ControlPlane]],
) -> None:
    planes = kube_factory(3)
    assert len({p.port for p in planes}) == 3
    assert len({p.kine_port for p in planes}) == 3
    clients = [config.new_client_from_config(config_file=str(p.kubeconfig)) for p in planes]
    try:
        cores = [client.CoreV1Api(c) for c in clients]
        uids = {uid_of(core.read_namespace("default").metadata) for core in cores}
        assert len(uids) == 3, "each control plane has its own storage"
        cores[0].create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="only-in-zero"))
        )
        for index, core in enumerate(cores):
            items = core.list_namespaced_config_map("default").items
            names = [c.metadata.name for c in items if c.metadata is not None]
            assert ("only-in-zero" in names) == (index == 0)
    finally:
        for api_client in clients:
            api_client.close()
    pids = [pid for p in planes for pid in p.pids]
    for plane in planes:
        plane.stop()
    assert not [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]


def uid_of(meta: client.V1ObjectMeta | None) -> str:
    assert meta is not None
    assert meta.uid is not None
    return meta.uid

"""Uploaded device models on both stores: the data dir's SQLite file and the Kubernetes API.

The ``UploadStore`` contract (what ``ModelCatalogue`` relies on) runs on both: read your
writes, an atomic update that a refusing change leaves untouched, the bounds, and a second
store on the same state (a restart, or another replica) seeing the same versions. Then what
only replicas have: another replica's upload reaches ``on_change`` and the mirror through the
watch; a replica whose mirror lags still refuses a version that is not higher (a 409 makes the
rule run again on what the API has); the objects as the official client and kubectl read them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from device_models import DeviceModel, ModelRegistry, builtin_model, builtin_models
from tests.harness import kube
from tests.harness.waiting import eventually
from tunnel_server.kubestore.settings import KubeStoreSettings
from tunnel_server.twins.model_store import (
    LimitError,
    ModelCatalogue,
    ModelStore,
    ModelVersion,
    NotNewerError,
    UploadStore,
)
from tunnel_server.twins.model_store_kube import GROUP, PLURAL, VERSION, KubeModelStore

Opener = Callable[..., UploadStore]


@pytest.fixture(scope="session")
def model_crd(kube_crds: kube.ControlPlane) -> kube.ControlPlane:
    """The plane with ``devicemodels.edgefleet.io`` (applied with the store's CRDs) established."""
    kube_crds.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}"
    )
    return kube_crds


@pytest.fixture
def open_kube(model_crd: kube.ControlPlane, namespace: str) -> Iterator[Opener]:
    """Open a KubeModelStore on the test's namespace (each one a replica); all closed after."""
    opened: list[KubeModelStore] = []

    def make(**options: Any) -> KubeModelStore:
        settings = KubeStoreSettings(
            namespace=namespace, kubeconfig=model_crd.kubeconfig, watch_retry=0.2
        )
        opened.append(KubeModelStore.open(settings, **options))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture(params=["sqlite", "kubernetes"])
def open_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    if request.param == "kubernetes":
        yield request.getfixturevalue("open_kube")
        return
    opened: list[ModelStore] = []

    def make() -> UploadStore:
        if opened:
            opened[-1].close()  # one server per data dir: the restart
        opened.append(ModelStore(tmp_path / "models.sqlite3"))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def custom_objects(model_crd: kube.ControlPlane) -> Iterator[kubernetes.client.CustomObjectsApi]:
    api = kubernetes.config.new_client_from_config(config_file=str(model_crd.kubeconfig))
    yield kubernetes.client.CustomObjectsApi(api)
    api.close()


def pump(version: str, maximum: int = 10, *, name: str = "pump") -> DeviceModel:
    return DeviceModel.from_dict(
        {
            "apiVersion": "edgefleet.io/v1",
            "kind": "DeviceModel",
            "name": name,
            "version": version,
            "properties": [{"name": "rpm", "type": "int", "min": 0, "max": maximum}],
        }
    )


def catalogue(store: UploadStore, **bounds: int) -> ModelCatalogue:
    return ModelCatalogue(store=store, registry=ModelRegistry(builtin_models()), **bounds)


def versions(store: UploadStore, name: str) -> list[str]:
    return [e.version for e in store.uploads().get(name, ())]


# ---------------------------------------------------------------------- both stores


def test_uploads_are_kept_in_order_and_read_back_at_once(open_any: Opener) -> None:
    store = open_any()
    cat = catalogue(store)
    cat.add(pump("1.0.0"), now=1.0, by="ops")
    cat.add(pump("1.10.0", maximum=20), now=2.0, by="ops")
    assert versions(store, "pump") == ["1.0.0", "1.10.0"]  # read your write, version order
    with pytest.raises(NotNewerError) as refused:
        cat.add(pump("1.9.0"), now=3.0, by="ops")
    assert refused.value.current == "1.10.0"
    assert versions(store, "pump") == ["1.0.0", "1.10.0"]  # the refused change wrote nothing
    again = open_any()
    (first, latest) = again.uploads()["pump"]
    assert (latest.version, latest.source, latest.created, latest.created_by) == (
        "1.10.0",
        "uploaded",
        2.0,
        "ops",
    )
    assert latest.model == pump("1.10.0", maximum=20)
    assert first.model == pump("1.0.0")
    fresh = catalogue(again)
    held = fresh.registry.get("pump")
    assert held is not None
    assert held.version == "1.10.0"  # the registry follows the latest upload at start


def test_a_builtin_gets_a_new_version_and_keeps_its_own(open_any: Opener) -> None:
    cat = catalogue(open_any())
    data = builtin_model("thermostat").to_dict()
    with pytest.raises(NotNewerError):
        cat.add(DeviceModel.from_dict({**data, "version": "1.0.0"}), now=1.0, by="ops")
    cat.add(DeviceModel.from_dict({**data, "version": "1.1.0"}), now=1.0, by="ops")
    assert [(v.version, v.source) for v in cat.versions("thermostat")] == [
        ("1.0.0", "builtin"),
        ("1.1.0", "uploaded"),
    ]


def test_bounds_on_names_and_versions(open_any: Opener) -> None:
    cat = catalogue(open_any(), max_names=1, max_versions=2)
    for minor in range(4):
        cat.add(pump(f"1.{minor}"), now=float(minor), by="ops")
    assert [v.version for v in cat.versions("pump")] == ["1.2", "1.3"]  # the oldest dropped
    with pytest.raises(LimitError) as refused:
        cat.add(pump("1", name="valve"), now=9.0, by="ops")
    assert refused.value.reason == "too_many_models"
    assert versions(open_any(), "pump") == ["1.2", "1.3"]


def test_the_latest_upload_reaches_the_listeners_once(open_any: Opener) -> None:
    cat = catalogue(open_any())
    heard: list[str] = []
    cat.listen(lambda model: heard.append(f"{model.name} {model.version}"))
    cat.add(pump("1.0"), now=1.0, by="ops")
    cat.changed("pump")  # nothing newer: not heard again
    cat.refresh()
    assert heard == ["pump 1.0"]


# ---------------------------------------------------------------------- Kubernetes only


def test_another_replicas_upload_arrives_through_the_watch(open_kube: Opener) -> None:
    one, two = open_kube(), open_kube()
    assert isinstance(two, KubeModelStore)
    woken: list[str] = []
    two.on_change = woken.append
    cat_two = catalogue(two)
    catalogue(one).add(pump("2.0", maximum=50), now=5.0, by="alice")
    eventually(lambda: list(woken), lambda found: found == ["pump"], what="the watch wakes two")
    assert versions(two, "pump") == ["2.0"]
    cat_two.changed("pump")  # what models_api hands to the loop
    held = cat_two.registry.get("pump")
    assert held is not None
    assert held.version == "2.0"
    (entry,) = two.uploads()["pump"]
    assert (entry.created, entry.created_by) == (5.0, "alice")


def test_a_lagging_replica_still_refuses_a_version_that_is_not_higher(open_kube: Opener) -> None:
    one, two = open_kube(), open_kube()
    assert isinstance(two, KubeModelStore)
    two._watcher.stop()  # the one way to make a mirror lag on purpose
    cat_two = catalogue(two)
    catalogue(one).add(pump("1.0"), now=1.0, by="one")
    assert versions(two, "pump") == []  # it has not seen the upload
    with pytest.raises(NotNewerError) as refused:
        cat_two.add(pump("1.0", maximum=99), now=2.0, by="two")  # 409, read, the rule again
    assert refused.value.current == "1.0"
    assert versions(two, "pump") == ["1.0"]  # the read filled its mirror
    cat_two.add(pump("1.1"), now=3.0, by="two")
    eventually(
        lambda: versions(one, "pump"), lambda found: found == ["1.0", "1.1"], what="one sees it"
    )


def test_racing_uploads_of_one_version_store_exactly_one(open_kube: Opener) -> None:
    stores = [open_kube() for _ in range(3)]
    cats = [catalogue(store) for store in stores]
    outcomes: list[str] = []
    start = threading.Barrier(len(cats))

    def upload(index: int) -> None:
        start.wait()
        try:
            cats[index].add(pump("3.0", maximum=index + 1), now=float(index), by=f"r{index}")
            outcomes.append(f"stored by r{index}")
        except NotNewerError:
            outcomes.append("refused")

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(cats))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes)[:2] == ["refused", "refused"], outcomes
    winner = int(next(o for o in outcomes if o.startswith("stored"))[-1])
    for store in stores:
        found = eventually(
            _uploads_of(store, "pump"),
            lambda held: len(held) == 1,
            what="every replica holds the one stored version",
        )
        assert found[0].created_by == f"r{winner}"


def _uploads_of(store: UploadStore, name: str) -> Callable[[], Sequence[ModelVersion]]:
    return lambda: store.uploads().get(name, ())


def test_an_object_stays_within_its_byte_bound(open_kube: Opener) -> None:
    store = open_kube(max_bytes=600)
    cat = catalogue(store)
    for minor in range(5):
        cat.add(pump(f"1.{minor}"), now=float(minor), by="ops")
    kept = versions(store, "pump")
    assert kept[-1] == "1.4"
    assert 1 <= len(kept) < 5  # the oldest dropped to fit; the latest always kept


def test_the_objects_as_kubectl_and_the_official_client_read_them(
    open_kube: Opener,
    custom_objects: kubernetes.client.CustomObjectsApi,
    model_crd: kube.ControlPlane,
    namespace: str,
) -> None:
    store = open_kube()
    cat = catalogue(store)
    cat.add(pump("1.0"), now=1.0, by="ops")
    cat.add(pump("1.1", maximum=30), now=2.0, by="ops")
    obj = custom_objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "pump")
    assert isinstance(obj, dict)
    assert obj["spec"]["latest"] == "1.1"
    assert [v["version"] for v in obj["spec"]["versions"]] == ["1.0", "1.1"]
    assert obj["spec"]["versions"][1]["model"] == pump("1.1", maximum=30).to_dict()
    lines = model_crd.kubectl("get", f"{PLURAL}.{GROUP}", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "LATEST", "AGE"]
    assert lines[1].split()[:2] == ["pump", "1.1"]
    every = model_crd.kubectl("get", "edgefleet", "-n", namespace, "-o", "name").stdout
    assert f"devicemodel.{GROUP}/pump" in every

    bad: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DeviceModel",
        "metadata": {"name": "valve"},
        "spec": {"latest": "1", "versions": [{"version": "1", "createdAt": 1, "model": {}}]},
    }
    with pytest.raises(kubernetes.client.ApiException) as refused:
        custom_objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bad)
    assert refused.value.status == 422  # the schema: a model needs apiVersion, kind, ...


def test_a_version_written_past_the_server_that_does_not_parse_is_skipped(
    open_kube: Opener,
    custom_objects: kubernetes.client.CustomObjectsApi,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = open_kube()
    good = pump("1.0").to_dict()
    broken = {**pump("1.1").to_dict(), "properties": [{"name": "rpm", "type": "complex"}]}
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DeviceModel",
        "metadata": {"name": "pump"},
        "spec": {
            "latest": "1.1",
            "versions": [
                {"version": "1.0", "createdAt": 1, "model": good},
                {"version": "1.1", "createdAt": 2, "model": broken},
            ],
        },
    }
    custom_objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    found = eventually(
        lambda: store.uploads().get("pump", ()),
        lambda held: len(held) == 1,
        what="the watch brings the object",
    )
    assert isinstance(found[0], ModelVersion)
    assert found[0].version == "1.0"
    assert "stored model pump 1.1 does not parse; skipped" in caplog.text

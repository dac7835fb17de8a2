# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Custom resources work like built-in ones: same answers online and offline.

The CRD is created with the official client; custom objects are listed and read through the
proxy with the official client's CustomObjectsApi (the path CRD clients such as kubevirt take,
which OpenYurt leaves uncached unless configured, its #1400).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.harness.waiting import eventually
from tests.integration.kubecache.conftest import Edge

pytestmark = pytest.mark.kube

GROUP = "edge.edgefleet.io"
VERSION = "v1alpha1"


@pytest.fixture
def crd(direct: client.ApiClient) -> Iterator[str]:
    """A namespaced CRD with a unique plural; deleted afterwards."""
    plural = f"widgets{uuid.uuid4().hex[:8]}"
    schema = client.V1JSONSchemaProps(
        type="object",
        properties={
            "spec": client.V1JSONSchemaProps(
                type="object",
                properties={
                    "size": client.V1JSONSchemaProps(type="integer"),
                    "color": client.V1JSONSchemaProps(type="string"),
                },
            )
        },
    )
    body = client.V1CustomResourceDefinition(
        metadata=client.V1ObjectMeta(name=f"{plural}.{GROUP}"),
        spec=client.V1CustomResourceDefinitionSpec(
            group=GROUP,
            scope="Namespaced",
            names=client.V1CustomResourceDefinitionNames(
                plural=plural, singular=plural[:-1], kind=f"W{plural[1:-1]}"
            ),
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
    try:
        yield plural
    finally:
        extensions.delete_custom_resource_definition(f"{plural}.{GROUP}")


def established(direct: client.ApiClient, plural: str, namespace: str) -> None:
    """Wait until the API server serves the new resource (it takes a moment after create)."""
    objects = client.CustomObjectsApi(direct)

    def served() -> bool:
        try:
            objects.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        except client.ApiException as error:
            if error.status != 404:
                raise
            return False
        return True

    eventually(served, what=f"the API server serving {plural}")


def create_widgets(direct: client.ApiClient, plural: str, namespace: str, kind: str) -> None:
    objects = client.CustomObjectsApi(direct)
    for index in range(6):
        objects.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            plural,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "metadata": {
                    "name": f"w-{index}",
                    "labels": {"color": ["red", "blue"][index % 2]},
                },
                "spec": {"size": index, "color": ["red", "blue"][index % 2]},
            },
        )


def reads(api: client.ApiClient, plural: str, namespace: str) -> dict[str, Any]:
    objects = client.CustomObjectsApi(api)

    def listed(**options: Any) -> dict[str, Any]:
        body: dict[str, Any] = objects.list_namespaced_custom_object(  # type: ignore[assignment] # untyped client
            GROUP, VERSION, namespace, plural, **options
        )
        return body

    whole = listed()
    first = listed(limit=4)
    rest = listed(limit=4, _continue=first["metadata"]["continue"])
    return {
        "kind": whole["kind"],
        "items": whole["items"],
        "red": listed(label_selector="color=red")["items"],
        "not-w1": listed(field_selector="metadata.name!=w-1")["items"],
        "paged": first["items"] + rest["items"],
        "one": objects.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, "w-3"),
    }


async def test_custom_resources_answer_the_same_online_and_offline(
    edge: Edge, direct: client.ApiClient, namespace: str, crd: str
) -> None:
    kind = f"W{crd[1:-1]}"
    await asyncio.to_thread(established, direct, crd, namespace)
    await asyncio.to_thread(create_widgets, direct, crd, namespace, kind)
    straight = await asyncio.to_thread(reads, direct, crd, namespace)
    with edge.api() as via:
        online = await asyncio.to_thread(reads, via, crd, namespace)
        await edge.go_offline()
        offline = await asyncio.to_thread(reads, via, crd, namespace)
    assert online == straight
    assert offline == online
    assert [w["metadata"]["name"] for w in offline["red"]] == ["w-0", "w-2", "w-4"]
    assert offline["items"][0]["kind"] == kind  # custom resource items keep kind/apiVersion
    assert offline["one"]["spec"] == {"size": 3, "color": "blue"}

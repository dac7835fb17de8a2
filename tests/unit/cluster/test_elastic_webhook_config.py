"""The MutatingWebhookConfiguration: its shape, and create-or-update against a scripted server.

The real API server (which stores, defaults and calls it) is in
tests/integration/elastic/test_webhook.py. Here the server is a script, to show what a real one
will not do on demand: a 409 on every write, or a write that races our GET.
"""

from __future__ import annotations

import base64
import copy
import ssl
from typing import Any

import pytest

from edge_agent.cluster.credentials import MemberCredentials, TokenSource
from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.elastic.webhook_config import (
    COLLECTION,
    MAX_ATTEMPTS,
    WebhookConfigError,
    covers,
    desired_configuration,
    register,
)
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.settings import ClusterSettings

SETTINGS = ElasticSettings(webhook_name="elastic-test", webhook_timeout=3)
BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PATH = f"{COLLECTION}/elastic-test"


def desired(**options: Any) -> dict[str, Any]:
    return desired_configuration(
        settings=options.pop("settings", SETTINGS),
        ca_bundle=options.pop("ca_bundle", BUNDLE),
        url=options.pop("url", None),
        service=options.pop("service", ("edgefleet-system", "hook")),
        **options,
    )


def test_the_service_form() -> None:
    body = desired(excluded_namespaces=("edgefleet-system", "agent-ns"))
    assert body["metadata"]["name"] == "elastic-test"
    (webhook,) = body["webhooks"]
    assert webhook["clientConfig"] == {
        "service": {
            "namespace": "edgefleet-system",
            "name": "hook",
            "port": 443,
            "path": "/mutate-pods",
        },
        "caBundle": base64.b64encode(BUNDLE).decode(),
    }
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["timeoutSeconds"] == 3
    assert webhook["sideEffects"] == "None"
    assert webhook["matchPolicy"] == "Equivalent"
    assert webhook["reinvocationPolicy"] == "Never"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    (expression,) = webhook["namespaceSelector"]["matchExpressions"]
    assert expression == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "kube-node-lease", "edgefleet-system", "agent-ns"],
    }


def test_the_url_form_and_timeout_bounds() -> None:
    body = desired(url="https://10.0.0.5:9443/mutate-pods", service=None)
    client = body["webhooks"][0]["clientConfig"]
    assert set(client) == {"url", "caBundle"}
    assert client["url"] == "https://10.0.0.5:9443/mutate-pods"
    for asked, stored in ((0, 1), (31, 30), (10, 10)):
        timeout = desired(settings=ElasticSettings(webhook_timeout=asked))["webhooks"][0]
        assert timeout["timeoutSeconds"] == stored
    with pytest.raises(ValueError, match="URL or a Service"):
        desired(service=None)


def test_covers_ignores_defaults_but_not_changes() -> None:
    ours = desired()
    stored = copy.deepcopy(ours)
    stored["metadata"]["uid"] = "x"
    stored["webhooks"][0]["objectSelector"] = {}  # a default the API server adds
    stored["webhooks"][0]["rules"][0]["extra"] = "default"
    assert covers(stored, ours)
    changed = copy.deepcopy(stored)
    changed["webhooks"][0]["clientConfig"]["caBundle"] = "b3RoZXI="
    assert not covers(changed, ours)
    fewer = copy.deepcopy(stored)
    fewer["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"].pop()
    assert not covers(fewer, ours)
    more = copy.deepcopy(stored)
    more["webhooks"].append(more["webhooks"][0])
    assert not covers(more, ours)


class ScriptedApi(MemberApi):
    """Answers each request with the next scripted (status, body); records what was sent."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        credentials = MemberCredentials(
            server="https://127.0.0.1:1",
            host="127.0.0.1",
            port=1,
            ssl_context=ssl.create_default_context(),
            token=TokenSource(),
        )
        super().__init__(credentials=credentials, settings=ClusterSettings())
        self.answers = answers
        self.sent: list[tuple[str, str, Any]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",  # noqa: ARG002 - always JSON here
        headers: Any = None,  # noqa: ARG002 - none sent here
    ) -> tuple[int, Any]:
        self.sent.append((method, path, body))
        return self.answers.pop(0)


def stored_form(body: dict[str, Any], rv: str, **labels: str) -> dict[str, Any]:
    stored = copy.deepcopy(body)
    stored["metadata"].update(
        resourceVersion=rv, uid="u1", managedFields=[{"manager": "x"}], labels=labels
    )
    return stored


async def test_created_when_missing() -> None:
    api = ScriptedApi([(404, {"kind": "Status"}), (201, desired())])
    assert await register(api, desired()) == "created"
    assert [(m, p) for m, p, _ in api.sent] == [("GET", PATH), ("POST", COLLECTION)]
    assert api.sent[1][2] == desired()


async def test_unchanged_is_left_alone() -> None:
    stored = stored_form(desired(), "5", **{"app.kubernetes.io/managed-by": "edgefleet-agent"})
    api = ScriptedApi([(200, stored)])
    assert await register(api, desired()) == "unchanged"
    assert len(api.sent) == 1


async def test_an_update_keeps_other_labels_and_is_guarded_by_the_version() -> None:
    old = desired(ca_bundle=b"old")
    api = ScriptedApi([(200, stored_form(old, "7", team="infra")), (200, {})])
    assert await register(api, desired()) == "updated"
    method, path, body = api.sent[1]
    assert (method, path) == ("PUT", PATH)
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["metadata"]["labels"] == {
        "team": "infra",
        "app.kubernetes.io/managed-by": "edgefleet-agent",
    }
    assert "managedFields" not in body["metadata"]
    assert body["webhooks"] == desired()["webhooks"]


async def test_a_conflict_is_retried_with_a_fresh_read() -> None:
    old = desired(ca_bundle=b"old")
    api = ScriptedApi(
        [
            (200, stored_form(old, "7")),
            (409, {"kind": "Status", "reason": "Conflict"}),
            (200, stored_form(old, "8")),
            (200, {}),
        ]
    )
    assert await register(api, desired()) == "updated"
    puts = [body["metadata"]["resourceVersion"] for m, _, body in api.sent if m == "PUT"]
    assert puts == ["7", "8"]


async def test_a_create_race_reads_the_winner() -> None:
    theirs = stored_form(desired(ca_bundle=b"theirs"), "3")
    api = ScriptedApi([(404, None), (409, None), (200, theirs), (200, {})])
    assert await register(api, desired()) == "updated"
    assert [m for m, _, _ in api.sent] == ["GET", "POST", "GET", "PUT"]


async def test_endless_conflicts_give_up() -> None:
    old = stored_form(desired(ca_bundle=b"old"), "1")
    api = ScriptedApi([(200, old), (409, None)] * MAX_ATTEMPTS)
    with pytest.raises(WebhookConfigError, match="kept changing"):
        await register(api, desired())
    assert len(api.sent) == 2 * MAX_ATTEMPTS


async def test_a_refusal_says_why() -> None:
    api = ScriptedApi([(404, None), (422, {"message": "webhooks[0].name: Invalid value"})])
    with pytest.raises(WebhookConfigError, match=r"HTTP 422: webhooks\[0\].name"):
        await register(api, desired())
    forbidden = ScriptedApi([(403, {"message": "forbidden: cannot get"})])
    with pytest.raises(WebhookConfigError, match="HTTP 403: forbidden"):
        await register(forbidden, desired())

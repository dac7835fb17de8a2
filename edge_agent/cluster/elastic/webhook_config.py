"""The MutatingWebhookConfiguration that sends pod creations to the agent's webhook.

Rules:

* One configuration, named ``ElasticSettings.webhook_name``, with one webhook
  ``pods.elastic.edgefleet.io``: pods, CREATE, core v1 (``matchPolicy: Equivalent``, so a pod
  created through another version is sent too), ``failurePolicy: Ignore`` and
  ``timeoutSeconds: webhook_timeout`` (a pod create never waits long on the agent, and never
  fails because of it), ``sideEffects: None`` (dry runs are sent too), ``reinvocationPolicy:
  Never``, ``admissionReviewVersions: [v1]``.
* ``clientConfig``: ``url`` when the agent is reached by URL, else ``service`` (namespace,
  name, port, path ``/mutate-pods``); ``caBundle`` is the agent's own CA bundle
  (``webhook_tls``).
* ``namespaceSelector`` leaves out kube-system, kube-node-lease and the agent's own namespaces
  (where it runs, and the Service's): a pod the agent needs to run itself must never wait at a
  gate only the agent can open.
* ``register`` creates the configuration, or updates it when what is stored differs from what
  it should be (fields the API server adds with defaults do not count as differences, so an
  unchanged configuration is read and left alone). The update is a PUT guarded by the
  resourceVersion read; a 409 (someone wrote in between, or created it after our 404) is
  retried with a fresh GET, at most ``MAX_ATTEMPTS`` times. Other labels and annotations on
  the object are kept.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any, Literal

from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.member_api import MemberApi

__all__ = [
    "COLLECTION",
    "MANAGED_BY",
    "MAX_ATTEMPTS",
    "SYSTEM_NAMESPACES",
    "WEBHOOK",
    "WEBHOOK_PATH",
    "WebhookConfigError",
    "covers",
    "desired_configuration",
    "register",
]

log = logging.getLogger("edge_agent.cluster.elastic.webhook")

COLLECTION = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
WEBHOOK = "pods.elastic.edgefleet.io"
"""The webhook's name inside the configuration (Kubernetes wants a qualified name)."""
WEBHOOK_PATH = "/mutate-pods"
SYSTEM_NAMESPACES = ("kube-system", "kube-node-lease")
MANAGED_BY = {"app.kubernetes.io/managed-by": "edgefleet-agent"}
MAX_ATTEMPTS = 5
"""GET-then-write rounds one ``register`` tries when others keep writing in between."""
_NAMESPACE_LABEL = "kubernetes.io/metadata.name"
"""The label the API server sets on every namespace to its name (since 1.21)."""
_MIN_TIMEOUT, _MAX_TIMEOUT = 1, 30
"""``timeoutSeconds`` bounds of the admissionregistration API."""


class WebhookConfigError(Exception):
    """The API server refused the configuration (or others kept changing it)."""


def desired_configuration(
    *,
    settings: ElasticSettings,
    ca_bundle: bytes,
    url: str | None,
    service: tuple[str, str] | None,
    excluded_namespaces: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The configuration as it should be stored (see the rules on top).

    ``url``: the URL the API server calls, or None to use ``service`` (namespace, name) on
    ``settings.webhook_service_port``. ``excluded_namespaces``: the agent's own, added to
    ``SYSTEM_NAMESPACES``.
    """
    client: dict[str, Any]
    if url is not None:
        client = {"url": url}
    elif service is not None:
        namespace, name = service
        client = {
            "service": {
                "namespace": namespace,
                "name": name,
                "port": settings.webhook_service_port,
                "path": WEBHOOK_PATH,
            }
        }
    else:
        raise ValueError("the webhook needs a URL or a Service")
    client["caBundle"] = base64.b64encode(ca_bundle).decode()
    excluded = list(dict.fromkeys((*SYSTEM_NAMESPACES, *excluded_namespaces)))
    timeout = min(max(settings.webhook_timeout, _MIN_TIMEOUT), _MAX_TIMEOUT)
    webhook = {
        "name": WEBHOOK,
        "clientConfig": client,
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "namespaceSelector": {
            "matchExpressions": [{"key": _NAMESPACE_LABEL, "operator": "NotIn", "values": excluded}]
        },
        "sideEffects": "None",
        "timeoutSeconds": timeout,
        "admissionReviewVersions": ["v1"],
        "reinvocationPolicy": "Never",
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": settings.webhook_name, "labels": dict(MANAGED_BY)},
        "webhooks": [webhook],
    }


def covers(stored: object, desired: object) -> bool:
    """``stored`` holds everything ``desired`` says (maps may have more keys: defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(stored, Mapping) and all(
            key in stored and covers(stored[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(desired)
            and all(covers(a, b) for a, b in zip(stored, desired, strict=True))
        )
    return bool(stored == desired)


def _message(answer: object) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])[:500]
    return "no Status message"


def _update(stored: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body: ours, with the stored metadata (its resourceVersion guards the write)."""
    metadata = stored.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    labels = metadata.get("labels")
    metadata["labels"] = {**(labels if isinstance(labels, dict) else {}), **MANAGED_BY}
    metadata.pop("managedFields", None)  # left out: the API server keeps them as they are
    return {**desired, "metadata": metadata}


async def register(
    api: MemberApi, desired: Mapping[str, Any]
) -> Literal["created", "updated", "unchanged"]:
    """Create or update the configuration (rules on top); MemberApiError if no answer."""
    name = desired["metadata"]["name"]
    path = f"{COLLECTION}/{name}"
    for _ in range(MAX_ATTEMPTS):
        status, stored = await api.request("GET", path)
        if status == 404:
            status, answer = await api.request("POST", COLLECTION, body=desired)
            if status in (200, 201):
                log.info("elastic webhook: created MutatingWebhookConfiguration %s", name)
                return "created"
            if status == 409:
                continue  # created by someone else meanwhile: read it
            raise WebhookConfigError(
                f"creating MutatingWebhookConfiguration {name}: HTTP {status}: {_message(answer)}"
            )
        if status != 200 or not isinstance(stored, dict):
            raise WebhookConfigError(
                f"reading MutatingWebhookConfiguration {name}: HTTP {status}: {_message(stored)}"
            )
        if covers(stored.get("webhooks"), desired["webhooks"]) and covers(
            stored.get("metadata"), {"labels": MANAGED_BY}
        ):
            return "unchanged"
        status, answer = await api.request("PUT", path, body=_update(stored, desired))
        if status == 200:
            log.info("elastic webhook: updated MutatingWebhookConfiguration %s", name)
            return "updated"
        if status in (404, 409):
            continue  # changed or deleted since our GET: read it again
        raise WebhookConfigError(
            f"updating MutatingWebhookConfiguration {name}: HTTP {status}: {_message(answer)}"
        )
    raise WebhookConfigError(
        f"MutatingWebhookConfiguration {name} kept changing under us ({MAX_ATTEMPTS} attempts)"
    )

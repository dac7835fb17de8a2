"""Applying one manifest to the member API server with its update strategy.

* ``ServerSideApply``: ``PATCH`` with ``application/apply-patch+yaml`` (a JSON body is YAML),
  ``fieldManager`` and ``force``. A 409 names the managers that own the conflicting fields.
  When every one of them only ever *updated* the object (``kubectl edit``/``scale``/``patch``,
  managedFields operation ``Update``), the change was a hand edit: it is put back by applying
  again with force. When one of them *applied* it (another work, a GitOps tool: operation
  ``Apply``), two declarative owners disagree: reported as ``Conflict`` with the API server's
  message, unless the work says ``force: true``.
* ``Update``: ``GET``; absent -> ``POST``; present -> ``PUT`` of the manifest with the live
  ``resourceVersion`` (what the work does not set is reset: a replace, like ``kubectl replace``).
* ``CreateOnly``: ``GET``; absent -> ``POST``; present -> left alone.
* ``ReadOnly``: ``GET`` only (existence and feedback).

Every outcome carries the live object as the API server returned it (for feedback and health)
or the API server's reason and message. No answer at all raises the client's error: the caller
keeps the last status instead of reporting a cluster it cannot see.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from edge_agent.cluster.works.kube import KubeRequests, Resource
from edge_agent.cluster.works.manifests import Manifest, Strategy

__all__ = ["Outcome", "apply_manifest", "server_message"]

MAX_MESSAGE = 1024
"""Characters of an API server message kept in a condition."""
_MANAGER_IN_CONFLICT = re.compile(r'conflict with "([^"]{1,128})"')


@dataclass(frozen=True)
class Outcome:
    """What applying one manifest did: ``live`` is the object now (None: absent)."""

    ok: bool
    reason: str
    message: str
    live: dict[str, Any] | None = None
    http_status: int = 0
    """The API server's status of a refusal (0 otherwise)."""


def server_message(status: int, answer: object) -> str:
    """The API server's message of a refusal (its ``Status``), bounded."""
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])[:MAX_MESSAGE]
    return f"HTTP {status}"


def _refused(status: int, answer: object) -> Outcome:
    reason = "Conflict" if status == 409 else "Refused"
    return Outcome(
        ok=False, reason=reason, message=server_message(status, answer), http_status=status
    )


def _body(manifest: Manifest, resource: Resource, namespace: str) -> dict[str, Any]:
    body = copy.deepcopy(manifest.body)
    metadata = body.setdefault("metadata", {})
    if resource.namespaced:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    return body


async def apply_manifest(
    api: KubeRequests, manifest: Manifest, resource: Resource, strategy: Strategy
) -> Outcome:
    """Apply ``manifest`` (of ``resource``) with ``strategy``; see the module's rules."""
    namespace = manifest.namespace or "default"
    path = resource.path(namespace, manifest.name)
    body = _body(manifest, resource, namespace)
    if strategy.type == "ServerSideApply":
        return await _server_side_apply(api, path, body, strategy)
    return await _read_first(api, resource.collection(namespace), path, body, strategy)


async def _read_first(
    api: KubeRequests, collection: str, path: str, body: dict[str, Any], strategy: Strategy
) -> Outcome:
    """Update, CreateOnly and ReadOnly: they all start from what the cluster has."""
    status, live = await api.request("GET", path)
    if status == 404:
        if strategy.type == "ReadOnly":
            return Outcome(ok=True, reason="ReadOnly", message="not found in the cluster")
        return await _create(api, collection, body)
    if not 200 <= status < 300 or not isinstance(live, dict):
        return _refused(status, live)
    if strategy.type != "Update":
        message = "read only" if strategy.type == "ReadOnly" else "exists; left as it is"
        return Outcome(ok=True, reason=strategy.type, message=message, live=live)
    body["metadata"]["resourceVersion"] = live.get("metadata", {}).get("resourceVersion")
    status, answer = await api.request("PUT", path, body=body)
    if 200 <= status < 300 and isinstance(answer, dict):
        return Outcome(ok=True, reason="AppliedManifestComplete", message="updated", live=answer)
    return _refused(status, answer)


async def _create(api: KubeRequests, collection: str, body: dict[str, Any]) -> Outcome:
    status, answer = await api.request("POST", collection, body=body)
    if 200 <= status < 300 and isinstance(answer, dict):
        return Outcome(ok=True, reason="AppliedManifestComplete", message="created", live=answer)
    return _refused(status, answer)


async def _server_side_apply(
    api: KubeRequests, path: str, body: dict[str, Any], strategy: Strategy
) -> Outcome:
    outcome, answer = await _patch(api, path, body, strategy.field_manager, force=strategy.force)
    if outcome.ok or outcome.reason != "Conflict":
        return outcome
    managers = set(_MANAGER_IN_CONFLICT.findall(outcome.message))
    causes = answer.get("details", {}).get("causes") if isinstance(answer, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict):
            managers.update(_MANAGER_IN_CONFLICT.findall(str(cause.get("message", ""))))
    if not managers or not await _only_hand_edits(api, path, managers):
        return outcome
    forced, _ = await _patch(api, path, body, strategy.field_manager, force=True)
    if forced.ok:
        edited = ", ".join(sorted(managers))
        return Outcome(
            ok=True,
            reason="AppliedManifestComplete",
            message=f"applied; a hand edit by {edited} was put back",
            live=forced.live,
        )
    return forced


async def _patch(
    api: KubeRequests, path: str, body: dict[str, Any], manager: str, *, force: bool
) -> tuple[Outcome, Any]:
    query = urlencode({"fieldManager": manager, "force": "true" if force else "false"})
    status, answer = await api.request(
        "PATCH", f"{path}?{query}", body=body, content_type="application/apply-patch+yaml"
    )
    if 200 <= status < 300 and isinstance(answer, dict):
        return Outcome(
            ok=True, reason="AppliedManifestComplete", message="applied", live=answer
        ), answer
    return _refused(status, answer), answer


async def _only_hand_edits(api: KubeRequests, path: str, managers: set[str]) -> bool:
    """True when no manager in ``managers`` applied (server-side) the live object."""
    status, live = await api.request("GET", path)
    if not 200 <= status < 300 or not isinstance(live, dict):
        return False
    entries = live.get("metadata", {}).get("managedFields")
    for entry in entries if isinstance(entries, list) else []:
        if (
            isinstance(entry, dict)
            and entry.get("manager") in managers
            and entry.get("operation") == "Apply"
        ):
            return False
    return True

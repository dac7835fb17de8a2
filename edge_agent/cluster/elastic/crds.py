"""Install the elastic CRDs (NodePool, ResourcePolicy) in the member cluster.

Rules:

* The definitions ship with the agent (``crds.yaml`` beside this module; the same file is
  ``packaging/kubernetes/elastic/40-elastic-crds.yaml``), so an agent always installs the
  schema its own code reads.
* Each is server-side applied with the field manager ``edgefleet-agent`` and ``force``: the
  agent owns these objects; a hand edit of a field it sets is put back at the next start.
* ``install_crds`` returns when every definition is ``Established`` (the API server serves the
  kind), or raises ``CrdInstallError`` saying which one and why (RBAC, a conflict, a timeout):
  the caller logs it and tries again after a back-off; the webhook and controllers do not start
  before it succeeded, since their informers would only get 404s.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

import yaml

from edge_agent.cluster.member_api import MemberApi, MemberApiError

__all__ = ["CRD_NAMES", "CrdInstallError", "definitions", "install_crds"]

log = logging.getLogger("edge_agent.cluster.elastic")

FIELD_MANAGER = "edgefleet-agent"
CRD_NAMES = ("nodepools.elastic.edgefleet.io", "resourcepolicies.elastic.edgefleet.io")
_BASE = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
_ESTABLISH_POLL = 0.2
"""Seconds between two reads of a definition's conditions while waiting for Established."""


class CrdInstallError(Exception):
    """A definition could not be applied or did not become Established in time."""


def definitions() -> list[dict[str, Any]]:
    """The CustomResourceDefinitions the agent installs, as dicts, in file order."""
    text = resources.files(__package__).joinpath("crds.yaml").read_text(encoding="utf-8")
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    names = tuple(doc["metadata"]["name"] for doc in docs)
    if names != CRD_NAMES:  # the shipped file and this module moved apart: a packaging bug
        raise CrdInstallError(f"crds.yaml defines {names}, expected {CRD_NAMES}")
    return docs


def _established(doc: object) -> bool:
    if not isinstance(doc, dict):
        return False
    conditions = (doc.get("status") or {}).get("conditions") or ()
    return any(
        isinstance(c, dict) and c.get("type") == "Established" and c.get("status") == "True"
        for c in conditions
    )


def _message(answer: object) -> str:
    message = answer.get("message") if isinstance(answer, dict) else None
    return message[:300] if isinstance(message, str) else "no message"


async def install_crds(api: MemberApi, *, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - one bounded install, the caller retries
    """Apply every definition and wait until each is Established (see the module's rules)."""
    for doc in definitions():
        name = doc["metadata"]["name"]
        path = f"{_BASE}/{name}?fieldManager={FIELD_MANAGER}&force=true"
        try:
            status, answer = await api.request(
                "PATCH", path, body=doc, content_type="application/apply-patch+yaml"
            )
        except MemberApiError as error:
            raise CrdInstallError(f"applying CRD {name}: {error}") from None
        if not 200 <= status < 300:
            hint = (
                " (the agent's ClusterRole needs customresourcedefinitions get/create/patch: "
                "packaging/kubernetes/elastic/10-elastic-rbac.yaml)"
                if status == 403
                else ""
            )
            raise CrdInstallError(
                f"applying CRD {name}: HTTP {status}: {_message(answer)}{hint}"
            ) from None
        log.info("CRD %s applied", name)
    try:
        async with asyncio.timeout(timeout):
            for name in CRD_NAMES:
                while True:
                    try:
                        current = await api.get_json(f"{_BASE}/{name}")
                    except MemberApiError as error:
                        log.debug("reading CRD %s: %s", name, error)
                        current = None
                    if _established(current):
                        break
                    await asyncio.sleep(_ESTABLISH_POLL)
    except TimeoutError:
        raise CrdInstallError(
            f"the CRDs were applied but not Established within {timeout:g} s"
        ) from None

"""The cluster agent's install manifest, filled in for one cluster (``token create --manifest``).

The YAML files live in ``packaging/kubernetes/cluster-agent/`` (readable, commented, reviewed
as they are); the wheel carries them as ``tunnel_server/fleet/cluster-agent/`` (pyproject's
``force-include``). Filling in is text substitution of quoted placeholders (``"@TOKEN@"``) by
JSON strings, which YAML reads as the same double-quoted scalars, so the comments stay for
whoever reads what they apply; every value is validated first and the result is parsed back
to prove each value landed where it belongs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from tunnel_server import __version__

PACKAGED = "cluster-agent"
"""Folder of the YAML files inside ``tunnel_server.fleet`` in a wheel (see pyproject.toml)."""
SOURCE = Path(__file__).resolve().parents[2] / "packaging" / "kubernetes" / "cluster-agent"
"""The same files in a source tree (an editable install carries no forced includes)."""
NAMESPACE = "edgefleet-system"
JOIN_SECRET = "cluster-agent-join"  # noqa: S105 - the Secret object's name, not a secret
DEFAULT_IMAGE = f"localhost/edgefleet:{__version__}"
"""What packaging/image/build tags; push it where the member cluster can pull it (--image)."""
MAX_IMAGE = 255
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/:@-]*")
_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
_URL_RE = re.compile(r"https://[A-Za-z0-9.:\[\]-]+")


class ManifestError(ValueError):
    """A value cannot go into the manifest, or the shipped files are broken; says which."""


@dataclass(frozen=True, kw_only=True)
class ClusterJoin:
    name: str
    """The cluster's name, as the token was made for (already validated by the caller)."""
    server: str
    """``https://HOST[:PORT]`` the agent dials from inside the member cluster."""
    ca_hash: str
    """``sha256:<hex>`` of the server CA's public key, which the agent pins."""
    token: str
    """The single-use bootstrap token."""
    image: str = DEFAULT_IMAGE
    """The EdgeFleet image (packaging/image) as the member cluster's nodes pull it."""


def manifest_files() -> list[Traversable]:
    """The shipped YAML files in apply order (their names sort that way)."""
    folder: Traversable = resources.files("tunnel_server.fleet") / PACKAGED
    if not folder.is_dir():
        folder = SOURCE
    if not folder.is_dir():
        raise ManifestError(
            f"the cluster agent's manifests are missing ({SOURCE}, or {PACKAGED}/ beside"
            " tunnel_server/fleet in an installed package): reinstall tunnel-server"
        )
    return sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


def check(*, server: str, ca_hash: str, image: str) -> None:
    """Raise ManifestError unless the values can go into the manifest (before a token is made)."""
    if not _HASH_RE.fullmatch(ca_hash):
        raise ManifestError(f"CA hash {ca_hash!r} is not sha256:<64 hex digits>")
    if not _URL_RE.fullmatch(server):
        raise ManifestError(f"server {server!r} is not https://HOST[:PORT]")
    if len(image) > MAX_IMAGE or not _IMAGE_RE.fullmatch(image):
        raise ManifestError(
            f"image {image!r} is not an image reference such as"
            " registry.example.com/edgefleet:0.1.0 (lower-case, at most 255 characters)"
        )
    manifest_files()


def render(join: ClusterJoin) -> str:
    """All the files as one YAML stream, ready for ``kubectl apply -f -``."""
    check(server=join.server, ca_hash=join.ca_hash, image=join.image)
    values = {
        "NAME": join.name,
        "SERVER": join.server,
        "CA_HASH": join.ca_hash,
        "TOKEN": join.token,
        "IMAGE": join.image,
    }
    parts = []
    for file in manifest_files():
        text = file.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(f'"@{key}@"', json.dumps(value))
        parts.append(text.strip("\n") + "\n")
    stream = "---\n".join(parts)
    _verify(stream, join)
    return stream


def _verify(stream: str, join: ClusterJoin) -> None:
    """Parse the result back: every placeholder filled, each value where it belongs."""
    leftover = sorted(set(re.findall(r'"@[A-Z_]+@"', stream)))
    if leftover:
        raise ManifestError(f"the shipped manifest has placeholders left: {', '.join(leftover)}")
    try:
        documents = [d for d in yaml.safe_load_all(stream) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"the shipped manifest is not valid YAML: {exc}") from None
    secret = _find(documents, "Secret", JOIN_SECRET)
    expected = {
        "name": join.name,
        "server": join.server,
        "ca-hash": join.ca_hash,
        "token": join.token,
    }
    if secret.get("stringData") != expected:
        raise ManifestError(f"the shipped manifest's Secret {JOIN_SECRET} lost a value")
    deployment = _find(documents, "Deployment", "cluster-agent")
    pod = deployment["spec"]["template"]["spec"]
    images = {c["image"] for c in [*pod.get("initContainers", []), *pod["containers"]]}
    if images != {join.image}:
        raise ManifestError("the shipped manifest's Deployment does not use the image given")


def _find(documents: list[Any], kind: str, name: str) -> dict[str, Any]:
    for document in documents:
        if document.get("kind") == kind and document.get("metadata", {}).get("name") == name:
            found: dict[str, Any] = document
            return found
    raise ManifestError(f"the shipped manifest has no {kind} {name}")

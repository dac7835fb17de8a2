"""The SSO configuration file (``tunnel-server run --sso-config FILE``) and group mapping.

The file is YAML (docs/sso.md has every field and its default)::

    issuer: https://idp.example.com/            # the OpenID provider's issuer URL
    clientId: edgefleet
    clientSecretFile: /etc/edgefleet/sso-secret  # or clientSecret: ...
    caFile: /etc/edgefleet/idp-ca.pem            # optional: CA bundle that signs the issuer
    redirectUrl: https://fleet.example.com:8443/api/v1/sso/callback
    groups:                                      # first match wins, in this order
      - group: fleet-admins
        role: admin
      - group: fleet-site-a
        role: viewer
        clusters: [site-a]

An ``https`` issuer is always verified (the CA file, else the system trust store); plain
``http`` is accepted for a loopback issuer only (an IdP on the same machine, as in tests), so
a token endpoint answer never crosses a network in the clear. ``load`` raises
``SsoConfigError`` naming the field and what to write instead; ``run`` exits 2 with it.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tunnel_server.identity import users

MAX_FILE_BYTES = 64 * 1024
"""Largest configuration file read: a mapping of a few hundred groups fits in a few KiB."""
MAX_GROUP_RULES = 256
"""Most ``groups`` entries: a longer list is a mistake, not a mapping."""
DEFAULT_SCOPES = ("openid", "profile", "email", "groups")
_KNOWN = {
    "issuer",
    "clientId",
    "clientSecret",
    "clientSecretFile",
    "caFile",
    "redirectUrl",
    "providerName",
    "scopes",
    "groupsClaim",
    "usernameClaim",
    "groups",
}


class SsoConfigError(ValueError):
    """The SSO configuration file is unusable; the message names the field and the fix."""


@dataclass(frozen=True, kw_only=True)
class GroupRule:
    """Members of ``group`` get ``role``, limited to ``clusters`` (None: every cluster)."""

    group: str
    role: users.Role
    clusters: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Grant:
    """What a signed-in person may do: the first rule whose group they are in."""

    role: users.Role
    clusters: tuple[str, ...] | None
    group: str


@dataclass(frozen=True, kw_only=True)
class SsoConfig:
    issuer: str
    """The provider's issuer URL, exactly as its discovery document and ID tokens say it."""
    client_id: str
    client_secret: str
    redirect_url: str
    """Where the provider sends the browser back: this server's ``/api/v1/sso/callback``."""
    ca_file: Path | None = None
    """CA bundle trusted for an ``https`` issuer; None: the system trust store."""
    provider_name: str = "SSO"
    """Shown on the console's sign-in button."""
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    groups_claim: str = "groups"
    """The ID token claim that lists the person's groups (a list of strings)."""
    username_claim: str = "preferred_username"
    """The claim a readable user name is made from (``email`` and ``sub`` are tried after it)."""
    rules: tuple[GroupRule, ...] = ()

    def grant(self, groups: list[str]) -> Grant | None:
        """The first rule, in file order, whose group ``groups`` contains; None if none."""
        member = set(groups)
        for rule in self.rules:
            if rule.group in member:
                return Grant(role=rule.role, clusters=rule.clusters, group=rule.group)
        return None


def load(path: Path) -> SsoConfig:
    """Read and check ``path``; SsoConfigError says what is wrong and what to write."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SsoConfigError(f"cannot read the SSO config {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SsoConfigError(f"SSO config {path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise SsoConfigError(f"SSO config {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise SsoConfigError(f"SSO config {path} must be a YAML mapping (issuer:, clientId:, …)")
    return parse(doc, base=path.parent)


def parse(doc: dict[str, Any], *, base: Path) -> SsoConfig:
    """Check a decoded configuration; relative file paths are taken from ``base``."""
    unknown = sorted(str(key) for key in doc if key not in _KNOWN)
    if unknown:
        raise SsoConfigError(
            f"unknown field(s) {', '.join(unknown)} in the SSO config: known are "
            f"{', '.join(sorted(_KNOWN))}"
        )
    issuer = _text(doc, "issuer")
    _check_url("issuer", issuer)
    redirect = _text(doc, "redirectUrl")
    if urlsplit(redirect).scheme != "https" or not redirect.endswith("/api/v1/sso/callback"):
        raise SsoConfigError(
            "redirectUrl must be this server's https URL ending in /api/v1/sso/callback, such as"
            " https://fleet.example.com:8443/api/v1/sso/callback"
        )
    ca_file = None
    if doc.get("caFile") is not None:
        ca_file = _path(base, _text(doc, "caFile"))
        if not ca_file.is_file():
            raise SsoConfigError(f"caFile {ca_file} does not exist: give the PEM CA bundle")
    return SsoConfig(
        issuer=issuer,
        client_id=_text(doc, "clientId"),
        client_secret=_secret(doc, base),
        redirect_url=redirect,
        ca_file=ca_file,
        provider_name=_text(doc, "providerName", default="SSO")[:64],
        scopes=_scopes(doc),
        groups_claim=_text(doc, "groupsClaim", default="groups"),
        username_claim=_text(doc, "usernameClaim", default="preferred_username"),
        rules=_rules(doc.get("groups")),
    )


def _text(doc: dict[str, Any], key: str, *, default: str | None = None) -> str:
    value = doc.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value.strip() or len(value) > 2048:
        raise SsoConfigError(f"{key} must be a non-empty string in the SSO config")
    return value.strip()


def _path(base: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else base / path


def _check_url(key: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return
    raise SsoConfigError(
        f"{key} must be an https URL (plain http only for an IdP on this machine's loopback, "
        f"such as http://127.0.0.1:5556/dex), got {url[:200]!r}"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(doc: dict[str, Any], base: Path) -> str:
    if ("clientSecret" in doc) == ("clientSecretFile" in doc):
        raise SsoConfigError(
            "give exactly one of clientSecret or clientSecretFile (a file readable by the server"
            " only, holding the secret) in the SSO config"
        )
    if "clientSecret" in doc:
        return _text(doc, "clientSecret")
    path = _path(base, _text(doc, "clientSecretFile"))
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SsoConfigError(f"cannot read clientSecretFile {path}: {exc}") from None
    if not secret or len(secret) > 2048:
        raise SsoConfigError(f"clientSecretFile {path} is empty or too long")
    return secret


def _scopes(doc: dict[str, Any]) -> tuple[str, ...]:
    scopes = doc.get("scopes", list(DEFAULT_SCOPES))
    if (
        not isinstance(scopes, list)
        or not all(isinstance(s, str) and s.isprintable() and " " not in s for s in scopes)
        or "openid" not in scopes
        or len(scopes) > 32
    ):
        raise SsoConfigError("scopes must be a list of scope names that includes openid")
    return tuple(scopes)


def _rules(raw: object) -> tuple[GroupRule, ...]:
    if not isinstance(raw, list) or not raw:
        raise SsoConfigError(
            "groups must list at least one mapping such as '- {group: fleet-admins, role: admin}'"
        )
    if len(raw) > MAX_GROUP_RULES:
        raise SsoConfigError(f"groups may have at most {MAX_GROUP_RULES} entries")
    return tuple(_rule(f"groups[{index}]", entry) for index, entry in enumerate(raw))


def _rule(where: str, entry: object) -> GroupRule:
    if not isinstance(entry, dict) or set(entry) - {"group", "role", "clusters"}:
        raise SsoConfigError(f"{where} must be a mapping of group, role and clusters only")
    group = entry.get("group")
    if not isinstance(group, str) or not group or len(group) > 256:
        raise SsoConfigError(f"{where}.group must be the group's name as the IdP sends it")
    try:
        role = users.parse_role(str(entry.get("role")))
    except users.UserError as exc:
        raise SsoConfigError(f"{where}.role: {exc}") from None
    clusters = entry.get("clusters")
    if clusters is None:
        return GroupRule(group=group, role=role)
    if not isinstance(clusters, list) or not all(isinstance(c, str) for c in clusters):
        raise SsoConfigError(f"{where}.clusters must be a list of cluster names")
    if role == "admin":
        raise SsoConfigError(
            f"{where}: an admin has no cluster scope; give a scoped group role operator or viewer"
        )
    try:
        scope = users.parse_clusters(",".join(clusters))
    except users.UserError as exc:
        raise SsoConfigError(f"{where}.clusters: {exc}") from None
    return GroupRule(group=group, role=role, clusters=scope)


def sso_config_file(text: str) -> Path:
    """``run --sso-config FILE``: the path, once the file checks out (argparse exits 2 else)."""
    path = Path(text)
    try:
        load(path)
    except SsoConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path

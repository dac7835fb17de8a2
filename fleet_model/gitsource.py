"""GitSource: fleet objects kept in step with a folder of a git repository (issue 14 item 7).

Pure: no I/O. The hub's syncer (``tunnel_server.fleet.hub.gitsource``) runs the git CLI with
what ``parse_spec`` returns, so every value that reaches a command line is checked here first:

* ``repository``: an absolute local path, ``file://``, ``https://``, ``ssh://`` or the scp-like
  ``user@host:path``. Nothing that git would read as an option (a leading ``-``), no remote
  helper (``ext::``), no plain ``http://`` or ``git://`` (unauthenticated, unencrypted), no
  credentials in the URL (the spec is readable by every viewer: credentials belong to the
  server's own git configuration or ssh keys).
* ``ref``: exactly one of ``branch`` or ``tag``, a name git's ``check-ref-format`` would take
  (and not starting with ``-``).
* ``path``: a folder inside the repository, relative, no ``..``; empty or ``.`` is the root.
* ``intervalSeconds``: 5..86400, default 60. ``prune``: default true.

Unknown fields are refused (a typo such as ``interval`` would otherwise be silently ignored).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fleet_model.problems import SpecError

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "GITSOURCE_LABEL",
    "MAX_INTERVAL_SECONDS",
    "MAX_PATH_CHARS",
    "MAX_REF_CHARS",
    "MAX_REPOSITORY_CHARS",
    "MIN_INTERVAL_SECONDS",
    "GitRef",
    "GitSourceSpec",
    "Transport",
    "is_manifest_file",
    "parse_spec",
    "ref_problem",
]

GITSOURCE_LABEL = "fleet.edgefleet.io/gitsource"
"""Every object a GitSource applies carries this label with the source's name (prune by it)."""

DEFAULT_INTERVAL_SECONDS = 60
MIN_INTERVAL_SECONDS = 5
"""Faster than this is polling a remote for nothing (and a load on shared git servers)."""
MAX_INTERVAL_SECONDS = 86_400
"""A day: a source checked less often than that is a source nobody relies on."""
MAX_REPOSITORY_CHARS = 2048
"""Browsers' practical URL bound; longer is a mistake or an attack."""
MAX_REF_CHARS = 255
"""Git's own refs live as files: a component longer than a file name cannot be stored."""
MAX_PATH_CHARS = 1024

Transport = Literal["local", "file", "https", "ssh"]
"""How git reaches the repository (the syncer allows exactly that protocol for the fetch)."""

_FIELDS = {"repository", "ref", "path", "intervalSeconds", "prune"}
_REF_FIELDS = {"branch", "tag"}
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$|^\[[0-9A-Fa-f:.]+\]$")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>.+)$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_REPOSITORY_RULE = (
    "must be an absolute local path, or a file://, https://, ssh:// or user@host:path URL"
)


@dataclass(frozen=True, kw_only=True)
class GitRef:
    """Exactly one of ``branch`` and ``tag`` is set."""

    branch: str | None = None
    tag: str | None = None

    @property
    def full_name(self) -> str:
        """The ref on the remote: ``refs/heads/<branch>`` or ``refs/tags/<tag>``."""
        if self.branch is not None:
            return f"refs/heads/{self.branch}"
        return f"refs/tags/{self.tag}"

    def __str__(self) -> str:
        return f"branch {self.branch}" if self.branch is not None else f"tag {self.tag}"


@dataclass(frozen=True, kw_only=True)
class GitSourceSpec:
    repository: str
    transport: Transport
    ref: GitRef
    path: str
    """The folder, normalised: ``""`` is the repository's root, else ``a/b`` (no ``./``, no
    trailing ``/``)."""
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS
    prune: bool = True


def _has_control(text: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def _url_problem(text: str, transport: Transport) -> str | None:  # noqa: PLR0911 - one rule each
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL: {error}"
    if " " in text:
        return "a URL may not contain spaces (write them as %20)"
    if parts.query or parts.fragment:
        return "a repository URL has no query (?) or fragment (#)"
    if transport == "file":
        if parts.netloc not in ("", "localhost"):
            return "a file:// URL names no host: file:///absolute/path"
        return None if parts.path.startswith("/") else "a file:// URL needs an absolute path"
    host = parts.hostname
    if not host or not _HOST.match(host if ":" not in host else f"[{host}]"):
        return "names no valid host"
    if parts.password is not None or (transport == "https" and parts.username is not None):
        return (
            "credentials do not belong in the spec (every viewer reads it): give the "
            "server's git a credential helper or an ssh key instead"
        )
    if port == 0:
        return "port 0 is not a port"
    if not parts.path or parts.path == "/":
        return "names no repository path"
    return None


_SCHEMES: dict[str, Transport] = {"file://": "file", "https://": "https", "ssh://": "ssh"}


def _scp_like_problem(value: str) -> str | None:
    """``user@host:path`` (git's ssh shorthand), or why ``value`` is none of the forms."""
    match = _SCP_LIKE.match(value) if "::" not in value else None
    if match is None or not _HOST.match(match["host"]) or match["host"].startswith("-"):
        return _REPOSITORY_RULE
    if match["path"].startswith("-"):
        return "the path after ':' may not start with '-'"
    return None


def _classify(value: str) -> tuple[Transport | None, str | None]:  # noqa: PLR0911 - one rule each
    """The transport of ``value`` and the problem with it (one of the two is None)."""
    if len(value) > MAX_REPOSITORY_CHARS:
        return None, f"at most {MAX_REPOSITORY_CHARS} characters"
    if _has_control(value):
        return None, "may not contain control characters"
    if value.startswith("-"):
        return None, "may not start with '-' (git would read it as an option)"
    if value.startswith("/"):
        return "local", None
    lowered = value.lower()
    for scheme, transport in _SCHEMES.items():
        if lowered.startswith(scheme):
            problem = _url_problem(value, transport)
            return (None, problem) if problem is not None else (transport, None)
    if lowered.startswith(("http://", "git://")):
        return None, "plain http:// and git:// are unauthenticated: use https:// or ssh"
    problem = _scp_like_problem(value)
    return (None, problem) if problem is not None else ("ssh", None)


def _repository(value: object, problems: list[tuple[str, str]]) -> tuple[str, Transport] | None:
    if not isinstance(value, str) or not value:
        problems.append(("/spec/repository", "is required: " + _REPOSITORY_RULE))
        return None
    transport, problem = _classify(value)
    if transport is None:
        problems.append(("/spec/repository", problem or _REPOSITORY_RULE))
        return None
    return value, transport


_REF_RULES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda name: len(name.encode()) > MAX_REF_CHARS, f"at most {MAX_REF_CHARS} bytes"),
    (lambda name: name.startswith("-"), "may not start with '-'"),
    (
        lambda name: name.startswith("refs/"),
        "give the short name (main, v1.2), not refs/heads/... or refs/tags/...",
    ),
    (lambda name: name in ("@", "HEAD"), "'@' and 'HEAD' are not branch or tag names"),
    (
        lambda name: bool(_REF_FORBIDDEN.search(name)),
        "may not contain spaces, control characters or any of ~ ^ : ? * [ \\",
    ),
    (
        lambda name: ".." in name or "@{" in name or "//" in name,
        "may not contain '..', '@{' or '//'",
    ),
    (
        lambda name: name.startswith("/") or name.endswith(("/", ".")),
        "may not start with '/' or end with '/' or '.'",
    ),
    (
        lambda name: any(
            part.startswith(".") or part.endswith(".lock") for part in name.split("/")
        ),
        "no part may start with '.' or end with '.lock'",
    ),
)
"""git's check-ref-format rules for a branch name, one (test, message) each."""


def ref_problem(name: object) -> str | None:
    """Why ``name`` is no branch or tag name git takes (``check-ref-format --branch``), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    return next((message for broken, message in _REF_RULES if broken(name)), None)


def _ref(value: object, problems: list[tuple[str, str]]) -> GitRef | None:
    where = "/spec/ref"
    if not isinstance(value, dict):
        problems.append((where, "is required: {branch: NAME} or {tag: NAME}"))
        return None
    unknown = set(value) - _REF_FIELDS
    if unknown:
        problems.append((where, f"unknown fields: {', '.join(sorted(map(str, unknown)))}"))
    given = [key for key in ("branch", "tag") if value.get(key) is not None]
    if len(given) != 1:
        problems.append((where, "must give exactly one of branch and tag"))
        return None
    key = given[0]
    problem = ref_problem(value[key])
    if problem is not None:
        problems.append((f"{where}/{key}", problem))
        return None
    return GitRef(branch=value[key]) if key == "branch" else GitRef(tag=value[key])


def _path(value: object, problems: list[tuple[str, str]]) -> str:  # noqa: PLR0911 - one rule each
    where = "/spec/path"
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append((where, "must be a string: a folder of the repository"))
        return ""
    if len(value) > MAX_PATH_CHARS:
        problems.append((where, f"at most {MAX_PATH_CHARS} characters"))
        return ""
    text = value.removeprefix("./").rstrip("/") if value not in (".", "./") else ""
    if _has_control(text) or "\\" in text:
        problems.append((where, "may not contain control characters or '\\'"))
        return ""
    if text.startswith("/"):
        problems.append((where, "must be relative to the repository's root"))
        return ""
    if text and any(part in ("", ".", "..") for part in text.split("/")):
        problems.append((where, "may not contain '..', '.' or empty parts"))
        return ""
    if text.startswith("-"):
        problems.append((where, "may not start with '-'"))
        return ""
    return text


def _interval(value: object, problems: list[tuple[str, str]]) -> int:
    if value is None:
        return DEFAULT_INTERVAL_SECONDS
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(("/spec/intervalSeconds", "must be an integer (seconds)"))
        return DEFAULT_INTERVAL_SECONDS
    if not MIN_INTERVAL_SECONDS <= value <= MAX_INTERVAL_SECONDS:
        problems.append(
            (
                "/spec/intervalSeconds",
                f"must be {MIN_INTERVAL_SECONDS}..{MAX_INTERVAL_SECONDS} seconds",
            )
        )
        return DEFAULT_INTERVAL_SECONDS
    return value


def parse_spec(spec: object) -> GitSourceSpec:
    """``GitSource.spec``, or ``SpecError`` with every problem (paths under ``/spec``)."""
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    problems: list[tuple[str, str]] = []
    unknown = set(spec) - _FIELDS
    if unknown:
        problems.append(("/spec", f"unknown fields: {', '.join(sorted(map(str, unknown)))}"))
    repository = _repository(spec.get("repository"), problems)
    ref = _ref(spec.get("ref"), problems)
    path = _path(spec.get("path"), problems)
    interval = _interval(spec.get("intervalSeconds"), problems)
    prune = spec.get("prune", True)
    if not isinstance(prune, bool):
        problems.append(("/spec/prune", "must be true or false"))
    if problems:
        raise SpecError(problems)
    assert repository is not None  # noqa: S101 - a problem was reported otherwise
    assert ref is not None  # noqa: S101
    return GitSourceSpec(
        repository=repository[0],
        transport=repository[1],
        ref=ref,
        path=path,
        interval_seconds=interval,
        prune=bool(prune),
    )


def is_manifest_file(path: str) -> bool:
    """A file of the folder the source applies: ``*.yaml``, ``*.yml``, ``*.json``, not hidden.

    Hidden files and folders (``.github/workflows/ci.yml``) are never fleet objects.
    """
    if any(part.startswith(".") for part in path.split("/")):
        return False
    return path.lower().endswith((".yaml", ".yml", ".json"))

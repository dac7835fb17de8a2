"""A small blocking HTTPS client of the API, pinned to the server's CA (never the system's).

Every error becomes an ``exits.ClientError`` with one line that says what to do: a problem
document's ``detail`` and ``reason``, or why the server could not be reached.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from tunnel_server.client import exits

MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""Largest answer read: a page of the biggest list is far smaller; a bigger one is no API's."""
TIMEOUT = 30.0
"""Seconds to connect and then for each read: every route answers within a second or two."""
MAX_PAGES = 100_000
"""Pages of one list followed at most: a server that never ends a list cannot hang us."""


def segment(value: str) -> str:
    """One path segment, escaped (names are validated by the server; ``/`` must not pass)."""
    return quote(value, safe="")


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    """TLS that trusts only the server's own CA; the host name is still checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise exits.ClientError(
            f"the server's CA certificate does not load ({exc}): log in again with"
            " `tunnel-server login --server URL --ca-hash sha256:...`",
            exits.USAGE,
        ) from None
    return context


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:  # noqa: ANN401 - whatever the API sent
        try:
            return json.loads(self.body)
        except ValueError:
            raise exits.ClientError(
                f"the server answered {self.status} with no JSON: is --server this API?"
            ) from None


@dataclass(kw_only=True)
class ApiClient:
    server: str
    """``https://HOST[:PORT]``."""
    token: str | None
    context: ssl.SSLContext
    extra_headers: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: object = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; an answer of 400 or more raises ``exits.ApiFailure``."""
        parts = urlsplit(self.server)
        target = path + ("?" + urlencode(query) if query else "")
        sent = dict(self.extra_headers)
        sent["Accept"] = "application/json"
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
        if payload is not None:
            sent["Content-Type"] = content_type
        sent.update(headers or {})
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, timeout=TIMEOUT, context=self.context
        )
        with contextlib.closing(connection):
            try:
                connection.request(method, target, body=payload, headers=sent)
                response = connection.getresponse()
                data = response.read(MAX_ANSWER_BYTES + 1)
            except ssl.SSLCertVerificationError as exc:
                raise exits.ClientError(
                    f"the server at {self.server} is not the one pinned ({exc.verify_message}):"
                    " check --server, or log in again with the CA hash of the server"
                    " (`tunnel-server ca-hash` on it)",
                    exits.UNREACHABLE,
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise unreachable(self.server, exc) from None
        if len(data) > MAX_ANSWER_BYTES:
            raise exits.ClientError(f"the answer to {method} {path} is too large")
        answer = Answer(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=data,
        )
        if answer.status >= 400:
            raise failure(answer)
        return answer

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:  # noqa: ANN401
        return self.request("GET", path, query=query).json()

    def post(self, path: str, body: object = None) -> Any:  # noqa: ANN401
        answer = self.request("POST", path, body={} if body is None else body)
        return answer.json() if answer.body else None

    def delete(self, path: str, query: dict[str, str] | None = None) -> Any:  # noqa: ANN401
        answer = self.request("DELETE", path, query=query)
        return answer.json() if answer.body else None

    def list_all(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        """Every page of a list, as one list document: ``{items, metadata}`` of the last."""
        items: list[Any] = []
        asked = dict(query or {})
        for _ in range(MAX_PAGES):
            page = self.get(path, asked)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise exits.ClientError(
                    f"GET {path} answered no list ({{items, metadata}}): is the server of this"
                    " version?"
                )
            items.extend(page["items"])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return {**page, "items": items, "metadata": metadata}
            asked["continue"] = str(token)
        raise exits.ClientError(f"GET {path} did not end after {MAX_PAGES} pages")


def unreachable(server: str, exc: BaseException) -> exits.ClientError:
    if isinstance(exc, ssl.SSLError):
        why = f"TLS failed ({exc.reason or exc})"
    elif isinstance(exc, socket.gaierror):
        why = f"cannot resolve the host name ({exc.strerror})"
    elif isinstance(exc, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(exc, TimeoutError | socket.timeout):
        why = "no answer in time"
    elif isinstance(exc, OSError) and exc.strerror:
        why = exc.strerror.lower()
    else:
        why = str(exc) or type(exc).__name__
    return exits.ClientError(
        f"cannot reach the server at {server}: {why}; is it running, and is --server right?",
        exits.UNREACHABLE,
    )


def failure(answer: Answer) -> exits.ApiFailure:
    """The error of an answer: its problem document's detail and reason when it has one."""
    try:
        problem = json.loads(answer.body)
    except ValueError:
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
        reason = str(problem.get("reason") or problem.get("title") or answer.status)
        return exits.ApiFailure(
            answer.status, reason, _one_line(problem["detail"]), problems=_problems(problem)
        )
    phrase = http.client.responses.get(answer.status, "error")
    return exits.ApiFailure(
        answer.status, f"http_{answer.status}", f"the server answered {answer.status} {phrase}"
    )


MAX_PROBLEMS = 1000
"""Problems of one answer kept: a document has far fewer fields wrong."""


def _problems(problem: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """``problems: [{path, reason}]`` of a problem document, each made one short line.

    docs/api.md's problems say ``reason``; ``message`` is taken as well.
    """
    listed = problem.get("problems")
    if not isinstance(listed, list):
        return ()
    return tuple(
        (
            _one_line(str(item.get("path", "")), 300),
            _one_line(str(item.get("reason", item.get("message", ""))), 500),
        )
        for item in listed[:MAX_PROBLEMS]
        if isinstance(item, dict)
    )


def _one_line(text: str, limit: int = 1000) -> str:
    """A server's text as one line of bounded length: it goes to a terminal."""
    flat = " ".join(text.split())
    clean = "".join(ch for ch in flat if ch.isprintable())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"

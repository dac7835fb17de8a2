"""``GetJson``: the agent's own reads of its member API server (for cluster status).

``GetJson = Callable[[str], Awaitable[Any]]``: a coroutine function that GETs a path (with its
query) on the member API server with the agent's own credentials and returns the decoded JSON.
Non-2xx raises ``MemberApiError`` (with the status and the ``Status`` message when there is
one); a connection failure or timeout raises ``MemberApiError`` too, so a caller handles one
exception type. ``MemberApi.request`` is the same client for writes (the work applier): it
returns the status and the decoded answer, so the caller reads the API server's refusal.
Answers are bounded (``max_json_bytes``) and the whole request is bounded in
time (``request_timeout``).

``MemberApi.stream_lines`` is for answers that never end on their own (a WATCH): it yields the
answer line by line, each line bounded (``LineTooLongError``), and bounds the silence between
two reads (``idle_timeout``) instead of the whole request, so a watch of ten minutes is no
timeout but a dead connection is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from edge_agent.cluster.credentials import CredentialsError, MemberCredentials
from edge_agent.cluster.settings import ClusterSettings

GetJson = Callable[[str], Awaitable[Any]]
_CHUNK = 64 * 1024
_CLOSE_WAIT = 2.0
"""Seconds ``close`` waits for streamed connections to finish their TLS shutdown."""


class MemberApiError(Exception):
    """A GET of the agent's own failed; ``status`` is the HTTP status, or None (no answer)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LineTooLongError(MemberApiError):
    """A streamed answer had a line longer than the caller's bound; the stream is closed."""


def _status_message(raw: bytes) -> str:
    with contextlib.suppress(ValueError):
        decoded = json.loads(raw)
        if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
            return str(decoded["message"])[:500]
    return raw[:200].decode("utf-8", errors="replace")


class MemberApi:
    """One pooled HTTP client to the member API server; ``get_json`` is the ``GetJson``."""

    def __init__(self, *, credentials: MemberCredentials, settings: ClusterSettings) -> None:
        self._credentials = credentials
        self._settings = settings
        self._http: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Future[None]] = set()

    @property
    def server(self) -> str:
        return self._credentials.server

    async def get_json(self, path: str) -> Any:  # noqa: ANN401 - decoded JSON (GetJson)
        """GET ``path`` (``/version``, ``/api/v1/pods?limit=500``) and decode the JSON."""
        if not path.startswith("/"):
            raise ValueError(f"a path on the API server starts with '/': {path!r}")
        if self._http is None:
            raise MemberApiError("the member API client is closed")
        try:
            authorization = self._credentials.authorization()
        except CredentialsError as error:
            raise MemberApiError(str(error)) from None
        headers = {"Accept": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        url = self._credentials.server + path
        try:
            async with self._http.get(url, headers=headers, allow_redirects=False) as answer:
                raw = await self._read(answer, path)
                status = answer.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise MemberApiError(f"GET {path} on {self.server} failed: {reason}") from None
        if not 200 <= status < 300:
            raise MemberApiError(
                f"GET {path} on {self.server}: HTTP {status}: {_status_message(raw)}",
                status=status,
            )
        try:
            return json.loads(raw)
        except ValueError:
            raise MemberApiError(
                f"GET {path} on {self.server}: the answer is not JSON", status=status
            ) from None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Any request with a JSON body (or none): ``(status, decoded answer or None)``.

        For writes (the work applier's PATCH/PUT/POST/DELETE): a 4xx/5xx answer is returned,
        not raised, so the caller reads the API server's ``Status`` (reason, message, causes);
        only no answer at all (connection, timeout, an answer over ``max_json_bytes``) raises
        MemberApiError. ``headers`` are added (``Impersonate-User`` for the work applier).
        """
        if not path.startswith("/"):
            raise ValueError(f"a path on the API server starts with '/': {path!r}")
        if self._http is None:
            raise MemberApiError("the member API client is closed")
        try:
            authorization = self._credentials.authorization()
        except CredentialsError as error:
            raise MemberApiError(str(error)) from None
        sent = {**(headers or {}), "Accept": "application/json"}
        if authorization is not None:
            sent["Authorization"] = authorization
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            sent["Content-Type"] = content_type
        url = self._credentials.server + path
        try:
            async with self._http.request(
                method, url, headers=sent, data=data, allow_redirects=False
            ) as answer:
                raw = await self._read(answer, path)
                status = answer.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise MemberApiError(f"{method} {path} on {self.server} failed: {reason}") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    async def stream_lines(
        self, path: str, *, max_line_bytes: int, idle_timeout: float
    ) -> AsyncGenerator[bytes]:
        """GET ``path`` and yield its answer line by line (no newline; empty lines skipped).

        For a WATCH (``?watch=1``): the request has no overall deadline, only
        ``idle_timeout`` seconds of silence between two reads and the settings' connect
        timeout. A non-2xx answer raises MemberApiError with its status and the ``Status``
        message before any line; a line longer than ``max_line_bytes`` raises
        LineTooLongError (nothing more of the answer is read); a broken or silent connection
        raises MemberApiError. A line cut off by the end of the answer is dropped: the
        server did not finish it. Close the generator (``contextlib.aclosing``) to release
        the connection early.
        """
        if not path.startswith("/"):
            raise ValueError(f"a path on the API server starts with '/': {path!r}")
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1, got {max_line_bytes}")
        if self._http is None:
            raise MemberApiError("the member API client is closed")
        try:
            authorization = self._credentials.authorization()
        except CredentialsError as error:
            raise MemberApiError(str(error)) from None
        headers = {"Accept": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._settings.connect_timeout, sock_read=idle_timeout
        )
        url = self._credentials.server + path
        try:
            async with self._http.get(
                url, headers=headers, allow_redirects=False, timeout=timeout
            ) as answer:
                self._track_closing(answer)
                if not 200 <= answer.status < 300:
                    raw = await answer.content.read(64 * 1024)
                    raise MemberApiError(
                        f"GET {path} on {self.server}: HTTP {answer.status}: "
                        f"{_status_message(raw)}",
                        status=answer.status,
                    )
                async for line in _lines(answer.content, max_line_bytes, path):
                    yield line
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise MemberApiError(f"GET {path} on {self.server} failed: {reason}") from None

    async def _read(self, answer: aiohttp.ClientResponse, path: str) -> bytes:
        limit = self._settings.max_json_bytes
        if answer.content_length is not None and answer.content_length > limit:
            raise MemberApiError(f"GET {path}: the answer is larger than {limit} bytes")
        body = bytearray()
        async for chunk in answer.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise MemberApiError(f"GET {path}: the answer is larger than {limit} bytes")
        return bytes(body)

    async def open(self) -> None:
        settings = self._settings
        connector = aiohttp.TCPConnector(ssl=self._credentials.ssl_context, limit=8)
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.request_timeout, sock_connect=settings.connect_timeout
            ),
        )

    def _track_closing(self, answer: aiohttp.ClientResponse) -> None:
        """Remember the connection of a streamed answer, so ``close`` can wait for it to end.

        A watch given up early (cancelled, or a line too long) is closed when its answer is
        released, and a TLS connection shuts down asynchronously after that; aiohttp's
        ``ClientSession.close`` waits only for the connections still pooled or in use. Without
        this, such a transport could outlive the event loop (an "unclosed transport" warning).
        """
        protocol = answer.connection.protocol if answer.connection is not None else None
        closed = protocol.closed if protocol is not None else None
        if closed is None or closed.done():
            return
        self._closing.add(closed)
        closed.add_done_callback(self._closed_one)

    def _closed_one(self, closed: asyncio.Future[None]) -> None:
        self._closing.discard(closed)
        if not closed.cancelled():
            closed.exception()  # retrieved: a connection lost with an error is not news here

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=_CLOSE_WAIT)


async def _lines(
    content: aiohttp.StreamReader, max_line_bytes: int, path: str
) -> AsyncIterator[bytes]:
    """The complete lines of ``content``; at most ``max_line_bytes`` (+ one chunk) buffered."""
    pending = bytearray()
    async for chunk in content.iter_any():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending += chunk[start:end]
            start = end + 1
            if len(pending) > max_line_bytes:
                break
            if pending.strip():
                yield bytes(pending)
            pending.clear()
        else:
            pending += chunk[start:]
        if len(pending) > max_line_bytes:
            raise LineTooLongError(
                f"GET {path}: a line of the answer is longer than {max_line_bytes} bytes"
            )


@contextlib.asynccontextmanager
async def open_member_api(
    *, credentials: MemberCredentials, settings: ClusterSettings
) -> AsyncIterator[MemberApi]:
    """A ``MemberApi`` for as long as the block runs."""
    api = MemberApi(credentials=credentials, settings=settings)
    await api.open()
    try:
        yield api
    finally:
        await api.close()

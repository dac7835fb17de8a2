"""A backend HTTP server for the gateway tests: ``python -m ...backend_http --port P --name N``.

Routes (every answer says which backend served it in ``X-Backend``):

- ``GET /headers``: the request's headers as JSON (what the gateway forwarded).
- ``POST /upload``: reads the body as it streams; answers ``{"bytes", "sha256"}``.
- ``GET /download?bytes=N[&chunked=1]``: N bytes of ``pattern()``, with ``Content-Length``
  or chunked.
- ``POST /echo``: the body back, chunked, as it arrives.
- ``GET /ws``: WebSocket echo (text and binary).
- ``GET /slow?seconds=S``: answers after S seconds.
- ``GET /short``: promises 1 MiB (``Content-Length``), sends 1 KiB, closes the connection.
- ``* /hangup?on=NAME``: the backend named NAME closes the connection without answering
  (after reading the body); any other answers 200 with its name.
- ``GET /stall``: a head and 1 KB of a 1 MB body, then nothing for a minute.

With ``--fail-file PATH``: while that file exists, every request is answered 500 (the body
read first), so a test can make a backend fail and recover without restarting it.
With ``--request-log PATH``: one line per request received, ``METHOD PATH X-Request-Id``
(what a mirror test counts).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

BLOCK = 64 * 1024
NAME = web.AppKey("name", str)
FAIL_FILE = web.AppKey("fail_file", Path)
REQUEST_LOG = web.AppKey("request_log", Path)


def pattern(size: int) -> bytes:
    """Deterministic, not compressible by accident: the test computes the same bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest() * 2048
        counter += 1
    return bytes(out[:size])


def _headers(request: web.Request) -> dict[str, str]:
    return {"X-Backend": request.app[NAME]}


async def headers(request: web.Request) -> web.Response:
    seen: list[list[str]] = [[k, v] for k, v in request.headers.items()]
    body = {"backend": request.app[NAME], "headers": seen, "path": request.path_qs}
    return web.Response(
        body=json.dumps(body).encode(), content_type="application/json", headers=_headers(request)
    )


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    body = {"bytes": size, "sha256": digest.hexdigest(), "backend": request.app[NAME]}
    return web.json_response(body, headers=_headers(request))


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query["bytes"])
    data = pattern(size)
    reply = web.StreamResponse(headers=_headers(request))
    if request.query.get("chunked"):
        reply.enable_chunked_encoding()
    else:
        reply.content_length = size
    reply.content_type = "application/octet-stream"
    await reply.prepare(request)
    for start in range(0, size, BLOCK):
        await reply.write(data[start : start + BLOCK])
    await reply.write_eof()
    return reply


async def echo(request: web.Request) -> web.StreamResponse:
    reply = web.StreamResponse(headers=_headers(request))
    reply.enable_chunked_encoding()
    await reply.prepare(request)
    async for chunk in request.content.iter_any():
        await reply.write(chunk)
    await reply.write_eof()
    return reply


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str(f"{request.app[NAME]}:{message.data}")
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query["seconds"]))
    return web.Response(text="late", headers=_headers(request))


async def hangup(request: web.Request) -> web.StreamResponse:
    await request.read()
    if request.query.get("on") == request.app[NAME]:
        assert request.transport is not None
        request.transport.close()
    return web.json_response({"backend": request.app[NAME]}, headers=_headers(request))


async def short(request: web.Request) -> web.StreamResponse:
    """Promises 1 MiB, sends 1 KiB, then closes the connection."""
    reply = web.StreamResponse(headers=_headers(request))
    reply.content_length = 1024 * 1024
    await reply.prepare(request)
    await reply.write(b"s" * 1024)
    assert request.transport is not None
    request.transport.close()
    return reply


async def stall(request: web.Request) -> web.StreamResponse:
    reply = web.StreamResponse(headers=_headers(request))
    reply.content_length = 1024 * 1024
    await reply.prepare(request)
    await reply.write(b"s" * 1024)
    await asyncio.sleep(60)
    return reply


@web.middleware
async def failing(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    log_file = request.app.get(REQUEST_LOG)
    if log_file is not None:
        with log_file.open("a") as log:
            log.write(f"{request.method} {request.path_qs} {request.headers.get('X-Request-Id')}\n")
    fail_file = request.app.get(FAIL_FILE)
    if fail_file is not None and fail_file.exists():
        await request.read()
        return web.Response(status=500, text="failing on purpose", headers=_headers(request))
    return await handler(request)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--fail-file", type=Path, default=None)
    parser.add_argument("--request-log", type=Path, default=None)
    args = parser.parse_args()
    app = web.Application(client_max_size=1024**2, middlewares=[failing])
    app[NAME] = args.name
    if args.fail_file is not None:
        app[FAIL_FILE] = args.fail_file
    if args.request_log is not None:
        app[REQUEST_LOG] = args.request_log
    app.router.add_get("/headers", headers)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_post("/echo", echo)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/hangup", hangup)
    app.router.add_get("/stall", stall)
    app.router.add_get("/short", short)
    web.run_app(
        app, host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=1.0
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

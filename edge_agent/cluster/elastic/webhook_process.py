"""The webhook's listener process: serves hold-mode admissions from a process of its own.

``python -m edge_agent.cluster.elastic.webhook_process --host H --port P --log-level N`` is
started by ``AdmissionWebhook`` (hold mode, the default). The agent's informers, policy
controller and autoscaler run over every pod for tens of milliseconds at a time; a listener
thread in the agent shares the GIL and the CPU with them and waits its turn at every socket
and TLS call (docs/benchmarks.md, "Elastic clusters"). A process of its own waits for nobody.

Rules:

* Why a subprocess and not ``multiprocessing`` (spawn): the pipe is ours, plain JSON lines
  read by asyncio on both sides (no pickling, no feeder threads, no resource tracker); the
  child's end is its stdin's EOF, which the kernel delivers however the agent ends (exit,
  crash, SIGKILL); and the child is an ordinary command line one can run and read alone.
* Messages in (stdin), one JSON object a line, at most ``webhook.MAX_MESSAGE_BYTES``:
  ``{"tls": {"cert": PEM, "key": PEM}}`` (the serving certificate, then each renewal) and
  ``{"policies": {"revision": N, "synced": B, "items": [ResourcePolicy...]}}`` (the policies
  informer's objects, whenever it changes). A line that is too long or not such an object
  ends the process with an error (the agent starts another). Messages out (stdout):
  ``{"listening": PORT}`` once, ``{"error": TEXT}`` if it cannot listen, and
  ``{"metrics": {"admissions": {OUTCOME: N}, "durations": [S...]}}`` every
  ``REPORT_INTERVAL`` seconds or every ``webhook.MAX_DURATIONS`` answers, whichever first.
* The decision is ``webhook.answer`` (hold) on the latest snapshot (``webhook.parse_snapshot``)
  and the HTTP side ``webhook.make_application``: the same code as in the agent. Before the
  first policies message the snapshot is not synced: pods are admitted unchanged (fail open).
* It listens only once it has a certificate; it ends at EOF on stdin (the agent closed the
  pipe, or died). SIGINT and SIGTERM are ignored: a signal to the agent's process group
  reaches it too, and its end is the agent's call (the pipe), never a race with the agent's
  own shutdown.
* The certificate's PEM goes to a private temporary directory only for ``load_cert_chain``
  (which reads files), and is removed at once.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from edge_agent.cluster.elastic import webhook

log = logging.getLogger("edge_agent.cluster.elastic.webhook_process")

REPORT_INTERVAL = 1.0
"""Seconds between two metrics reports: the agent's /metrics lags the answers by at most this."""


class _Listener:
    """The child's state: the TLS context, the latest snapshot, the metrics not yet reported."""

    def __init__(self, out: asyncio.StreamWriter) -> None:
        self._out = out
        self.context: ssl.SSLContext | None = None
        self.has_tls = asyncio.Event()
        self.snapshot = webhook.parse_snapshot(revision=-1, synced=False, objects=())
        self._admissions: collections.Counter[str] = collections.Counter()
        self._durations: list[float] = []

    def write(self, message: Mapping[str, Any]) -> None:
        self._out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def decide(self, request: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        return webhook.answer(request, self.snapshot)

    def observe(self, outcome: str, seconds: float) -> None:
        self._admissions[outcome] += 1
        self._durations.append(seconds)
        if len(self._durations) >= webhook.MAX_DURATIONS:
            self.report()

    def report(self) -> None:
        if self._durations:
            self.write({"metrics": {"admissions": self._admissions, "durations": self._durations}})
            self._admissions = collections.Counter()
            self._durations = []

    def take(self, message: object) -> None:
        """Apply one message from the agent; ValueError if it is not one."""
        # ValueError throughout (not TypeError): all are one kind, a bad line from the agent.
        if not isinstance(message, dict):
            raise ValueError("a line that is not a JSON object")  # noqa: TRY004
        if isinstance(tls := message.get("tls"), dict):
            self._load(str(tls.get("cert")), str(tls.get("key")))
        elif isinstance(policies := message.get("policies"), dict):
            revision, synced, items = (policies.get(k) for k in ("revision", "synced", "items"))
            if not isinstance(revision, int) or not isinstance(synced, bool):
                raise ValueError("a policies message without revision or synced")  # noqa: TRY004
            if not isinstance(items, list):
                raise ValueError("a policies message without items")  # noqa: TRY004
            self.snapshot = webhook.parse_snapshot(revision=revision, synced=synced, objects=items)
            log.debug("elastic webhook process: policies revision %d", revision)
        else:
            raise ValueError(f"an unknown message: {sorted(message)[:4]}")  # noqa: TRY004

    def _load(self, cert: str, key: str) -> None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-webhook-") as private:
            cert_path, key_path = Path(private, "tls.crt"), Path(private, "tls.key")
            cert_path.write_text(cert)
            key_path.touch(mode=0o600)
            key_path.write_text(key)
            if self.context is None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
                self.context = context
            else:  # the server keeps its context: the next handshake serves the new chain
                self.context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
        self.has_tls.set()


async def _read(reader: asyncio.StreamReader, listener: _Listener) -> None:
    """Apply the agent's messages until EOF (the agent closed the pipe or died)."""
    while line := await reader.readline():
        listener.take(json.loads(line))


async def _reports(listener: _Listener) -> None:
    while True:
        await asyncio.sleep(REPORT_INTERVAL)
        listener.report()


async def _serve(host: str | None, port: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=webhook.MAX_MESSAGE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout.buffer
    )
    out = asyncio.StreamWriter(transport, protocol, None, loop)
    listener = _Listener(out)
    runner = web.AppRunner(
        webhook.make_application(listener.decide, listener.observe), access_log=None
    )
    await runner.setup()
    try:
        async with asyncio.TaskGroup() as group:
            reading = group.create_task(_read(reader, listener), name="elastic.webhook.pipe")
            certified = group.create_task(listener.has_tls.wait(), name="elastic.webhook.tls")
            await asyncio.wait([reading, certified], return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                certified.cancel()  # EOF (or an error, raised by the group) before a certificate
                return
            site = web.TCPSite(runner, host, port, ssl_context=listener.context)
            try:
                await site.start()
            except OSError as error:
                listener.write({"error": str(error)})
                await out.drain()
                raise
            bound = runner.addresses[0][1]
            listener.write({"listening": bound})
            log.info("elastic webhook process %d: serving https on port %d", os.getpid(), bound)
            reports = group.create_task(_reports(listener), name="elastic.webhook.reports")
            await reading
            reports.cancel()
    finally:
        listener.report()
        with contextlib.suppress(ConnectionError):
            await out.drain()
        await runner.cleanup()
        out.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="", help="address to listen on ('' for every one)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free one)")
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for number in (signal.SIGINT, signal.SIGTERM):  # the pipe ends us (module rules)
        signal.signal(number, signal.SIG_IGN)
    code = 0
    try:
        asyncio.run(_serve(args.host or None, args.port))
    except* OSError as group:
        log.error("elastic webhook process: cannot serve: %s", group.exceptions[0])  # noqa: TRY400
        code = 2
    except* (ValueError, RecursionError) as group:
        log.error("elastic webhook process: a bad message from the agent: %s", group.exceptions[0])  # noqa: TRY400
        code = 3
    return code


if __name__ == "__main__":
    sys.exit(main())

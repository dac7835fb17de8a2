"""The ResourcePolicy mutating admission webhook, served by the cluster-mode agent over HTTPS.

The API server sends every pod CREATE (``webhook_config``) as an AdmissionReview v1; the answer
is the JSON patch of ``fleet_model.elastic.units.admit`` for the policy that governs the pod
(``policy.governing_policy``), or no patch.

Rules:

* The cluster is never blocked by us. Every review that parses is answered ``allowed: true``
  with its ``request.uid``; a pod we cannot make sense of, a request that is not a pod CREATE,
  a pod no policy governs, an unexpected error in the decision, and any pod arriving before the
  policies' informer has synced are all admitted unchanged (fail open). The configuration says
  ``failurePolicy: Ignore``, so a webhook that is down or slow admits pods unchanged too.
* Only ``POST /mutate-pods`` with ``Content-Type: application/json`` and a body of at most
  ``MAX_BODY_BYTES`` (the API server's own request limit): else 404 / 405 / 415 / 413. A body
  that is not JSON or not an AdmissionReview v1 with a ``request.uid`` is a 400 that says what
  is wrong. The server keeps serving after any of these.
* Hold mode (``ElasticSettings.hold``, the default): every governed pod is admitted at the
  scheduling gate ``elastic.edgefleet.io/waiting-for-room`` with the policy annotation; the
  policy controller releases gated pods in unit order. Without hold the webhook decides alone
  from the pods cache, which needs the ``pods`` informer (and the nodes, which it watches
  itself): pods per unit from ``count_usage``, plus the pods it admitted that the cache does
  not show yet, and the units opened by timeouts from the policy's status. A pod it places
  carries the annotation ``elastic.edgefleet.io/admission`` (the request's uid): a pod created
  from ``generateName`` has no name at admission, and this is how its admission is matched
  with the pod the cache shows later. An admission the cache never shows (a later admission
  step refused the pod) stops counting after ``WebhookTiming.in_flight`` seconds. Without
  the ``pods`` informer, or before both caches have synced, pods are held.
* Where it listens. Hold mode: in a child process (``webhook_process``, which says why a
  subprocess), so a review waits neither for the agent's loop, where the policy controller's
  passes and the autoscaler's steps run synchronously over every pod for tens of
  milliseconds, nor for the agent's GIL (docs/benchmarks.md, "Elastic clusters"). The agent
  keeps the informers, the certificates and the configuration; it sends the child, as JSON
  lines on its stdin of at most ``MAX_MESSAGE_BYTES``, the certificate and key (and each
  renewal) and the policies whenever the informer changes; the child decides with ``answer``
  and ``make_application`` (this module's code) and reports its counts and durations, which
  the agent adds to its metrics. The child ends when its stdin closes (the agent stopped or
  died); if it dies, the agent logs why and starts another on the port the first bound, after
  ``WebhookTiming.retry_initial`` seconds doubling to ``retry_max`` (reset once one served
  ``_STABLE`` seconds); ``ready`` is clear while none listens. A first child that cannot
  listen (the port is taken) ends ``run`` with that error.
* Without hold the decision counts pods from the pods and nodes caches and remembers its
  admissions, all main-loop state, so the listener stays a thread of the agent
  (``elastic-webhook-listener``) with its own event loop that hands each review to the main
  loop (``asyncio.run_coroutine_threadsafe``): that mode keeps waiting for the main loop.
  Certificate reloads run on the listener's loop (the context it handshakes with). The
  snapshot ``_snapshot`` (an immutable ``_PolicySnapshot``) is replaced by the main loop with
  one assignment, never changed: a review sees the old or the new policies, never a mixture.
  The interpreter's switch interval is left alone (it was lowered for a hold-mode listener
  thread; a process of its own needs no GIL hand-backs).
* Policies are parsed once per informer revision; invalid ones are skipped (the policy
  controller reports them in their status).
* Certificates: ``webhook_tls`` (self-made CA, renewed ``certificate_renew_days`` before
  expiry). On a renewal the configuration gets the new bundle (new CA and old) first, then,
  after ``WebhookTiming.ca_propagation`` seconds for the API server to load it, the listener
  serves the new certificate.
* The configuration is registered at start and checked every ``WebhookTiming.recheck`` seconds
  (someone may have deleted or edited it); failures are retried with a doubling back-off.
  ``ready`` is set once the listener serves and the configuration is registered.
* A ``webhook_url`` whose port is 0 means the port the listener bound (tests listen on port 0).
* One DEBUG line per patched pod, one WARNING per error; Prometheus metrics
  ``edge_agent_elastic_webhook_*`` when a registry is given (the listener process's
  answers arrive every ``webhook_process.REPORT_INTERVAL`` seconds).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import ipaddress
import json
import logging
import os
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import prometheus_client
from aiohttp import web

from edge_agent.cluster.elastic import webhook_tls
from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.elastic.webhook_config import (
    WEBHOOK_PATH,
    WebhookConfigError,
    desired_configuration,
    register,
)
from edge_agent.cluster.member_api import MemberApi, MemberApiError
from edge_agent.cluster.member_watch import Informer, InformerSettings, Key
from fleet_model.elastic.policy import (
    GroupKey,
    ResourcePolicy,
    governing_policy,
    group_key,
    parse_resource_policy,
)
from fleet_model.elastic.units import (
    Admission,
    Usage,
    admit,
    count_usage,
    opened_from_status,
)
from fleet_model.problems import SpecError, escape, is_name

__all__ = [
    "ANNOTATION_ADMISSION",
    "MAX_BODY_BYTES",
    "MAX_DURATIONS",
    "MAX_MESSAGE_BYTES",
    "REVIEW_API_VERSION",
    "AdmissionWebhook",
    "WebhookMetrics",
    "WebhookTiming",
]

log = logging.getLogger("edge_agent.cluster.elastic.webhook")

MAX_BODY_BYTES = 3 * 1024 * 1024
"""Bytes of one AdmissionReview: the API server's own limit on a request body (3 MiB), so a
real review always fits and anything larger is not one."""
REVIEW_API_VERSION = "admission.k8s.io/v1"
MAX_UID_CHARS = 128
"""A request uid is a UUID (36 characters); anything much longer is not one."""
_JSON = "application/json"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: the issue's goal is under 5 ms added per pod create; the API server gives up at
``webhook_timeout`` (2 s by default)."""
_MAX_IN_FLIGHT = 10_000
"""Admissions remembered for counting (hold=False): a burst of pod creates within
``in_flight`` seconds larger than this forgets the oldest first."""


@dataclass(frozen=True, kw_only=True)
class WebhookTiming:
    """Timing of the webhook's upkeep; not in ``ElasticSettings`` (operators need not tune it)."""

    retry_initial: float = 1.0
    """Seconds before the first retry of a failed registration or certificate step."""

    retry_max: float = 60.0
    """Seconds the doubling retry delay stops at: an API server back from an outage sees the
    configuration within a minute."""

    recheck: float = 300.0
    """Seconds between two checks of the configuration (and of the certificates' renewal
    time): a configuration someone deleted or edited is put back within five minutes, for one
    GET each time."""

    ca_propagation: float = 10.0
    """Seconds between publishing a renewed CA bundle and serving the certificate it signed:
    the API server loads webhook configurations through a watch, well within this."""

    in_flight: float = 30.0
    """Seconds an admission counts for its unit on its own (hold=False) while the pods cache
    does not show its pod: a watch event arrives well within this; a pod refused after our
    admission never arrives, and must not hold its unit's room for long."""


class WebhookMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.admissions = prometheus_client.Counter(
            "edge_agent_elastic_webhook_admissions",
            "Admission requests answered, by outcome: held (at the gate, hold mode), placed "
            "(node affinity in unit order), waiting (every unit full: at the gate), unchanged "
            "(governed, nothing to do), no_policy, not_synced (policies not listed yet), "
            "skipped (not a pod create or an odd pod), error (admitted unchanged), "
            "bad_request (answered 4xx)",
            ["outcome"],
            registry=registry,
        )
        self.latency = prometheus_client.Histogram(
            "edge_agent_elastic_webhook_duration_seconds",
            "Seconds from a request's arrival to its answer",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.registrations = prometheus_client.Counter(
            "edge_agent_elastic_webhook_registrations",
            "Checks of the MutatingWebhookConfiguration, by result (created, updated, "
            "unchanged, failed)",
            ["result"],
            registry=registry,
        )
        self.certificate_expiry = prometheus_client.Gauge(
            "edge_agent_elastic_webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires (Unix time)",
            registry=registry,
        )


ANNOTATION_ADMISSION = "elastic.edgefleet.io/admission"
"""On a pod placed without hold: the uid of the admission request that placed it."""


@dataclass(frozen=True, slots=True)
class _Flight:
    at: float
    policy: Key
    group: GroupKey
    unit: int
    uid: str
    """The admission request's uid, which the pod carries in ANNOTATION_ADMISSION."""


@dataclass(frozen=True, slots=True)
class _PolicySnapshot:
    """The parsed policies as of one informer revision; the listener thread reads only this."""

    revision: int
    synced: bool
    """The policies informer had listed once: before, every pod is admitted unchanged."""
    by_namespace: Mapping[str, tuple[ResourcePolicy, ...]]
    statuses: Mapping[Key, object]
    """Each valid policy's ``status`` (units opened by timeouts; used without hold)."""


_NO_POLICIES = _PolicySnapshot(revision=-1, synced=False, by_namespace={}, statuses={})
_IDLE_WAIT = 3600.0
"""Seconds one ``wait_changed`` of the policies follower lasts before it is simply made again."""
LISTENER_THREAD = "elastic-webhook-listener"
Decide = Callable[[Mapping[str, Any]], Awaitable[tuple[str, dict[str, Any]]]]


def _settle(future: concurrent.futures.Future[Any], *, error: BaseException | None = None) -> None:
    """Finish ``future`` unless it is done, or cancelled by a waiter that gave up."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class _ListenerThread:
    """An aiohttp application served over HTTPS on a thread of its own, with its own loop.

    ``started`` gets the bound port (or the error that kept it from listening), ``finished``
    the thread's end (or its error); ``stop`` is safe from any thread, at any time.
    """

    def __init__(
        self, app: web.Application, host: str | None, port: int, context: ssl.SSLContext
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self.context = context
        self.started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False
        # Daemon only so a crashed agent's interpreter can still exit; run() always joins it.
        self._thread = threading.Thread(target=self._main, name=LISTENER_THREAD, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop_requested = True
            loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to stop
                loop.call_soon_threadsafe(stopping.set)

    async def join(self) -> None:
        """Wait, without blocking the caller's loop, until the thread has ended; never raises.

        Not through ``finished``: a waiter on it that is cancelled cancels it (``wrap_future``).
        """
        await asyncio.to_thread(self._thread.join)

    async def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` on the listener's loop (between two of its callbacks)."""

        async def there() -> None:
            function()

        loop = self._loop
        if loop is None:
            raise RuntimeError("the webhook listener is not running")
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(there(), loop))

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # noqa: BLE001 - handed to the agent's loop, not lost
            _settle(self.started, error=error)
            _settle(self.finished, error=error)
        else:
            _settle(self.started, error=RuntimeError("the webhook listener stopped early"))
            _settle(self.finished)

    async def _serve(self) -> None:
        stopping = asyncio.Event()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._stopping = stopping
            if self._stop_requested:
                stopping.set()
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self.context)
            await site.start()
            addresses = runner.addresses
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # a waiter gave up
                self.started.set_result(int(addresses[0][1]) if addresses else self._port)
            await stopping.wait()
        finally:
            # Taken before cleanup, which forgets them: it closes each TLS connection
            # gracefully, waiting for the peer's close_notify, and this loop is about to
            # close, so what is still open then is cut.
            server = runner.server
            handlers = server.connections if server is not None else []
            transports = [h.transport for h in handlers if h.transport is not None]
            await runner.cleanup()  # answers in progress get shutdown_timeout to finish
            for transport in transports:
                transport.abort()
            await asyncio.sleep(0)  # let the aborts close their sockets


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _listen(text: str) -> tuple[str | None, int]:
    host, sep, number = text.rpartition(":")
    if not sep or not number.isdigit() or not 0 <= int(number) <= 65535:
        raise ValueError(f"webhook_listen must be HOST:PORT (port 0..65535), got {text!r}")
    host = host.strip("[]")
    return host or None, int(number)


def _url(text: str) -> urllib.parse.SplitResult | None:
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or port == -1
    ):
        raise ValueError(
            f"webhook_url must be https://HOST[:PORT]/PATH without user, query or fragment, "
            f"got {text!r}"
        )
    return parts


def _service(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not is_name(namespace) or not is_name(name) or "." in namespace:
        raise ValueError(f"webhook_service must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


def _host_for_url(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _pod_label(pod: Mapping[str, Any], request: Mapping[str, Any]) -> str:
    metadata = _dict(pod.get("metadata"))
    name = metadata.get("name") or request.get("name")
    if isinstance(name, str) and name:
        return name[:253]
    generate = metadata.get("generateName")
    return f"{generate[:253]}*" if isinstance(generate, str) and generate else "?"


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    kind = _dict(request.get("kind"))
    resource = _dict(request.get("resource"))
    return (
        request.get("operation") == "CREATE"
        and not request.get("subResource")
        and (kind.get("group"), kind.get("version"), kind.get("kind")) == ("", "v1", "Pod")
        and (resource.get("group"), resource.get("resource")) == ("", "pods")
    )


Count = Callable[
    [Mapping[str, Any], ResourcePolicy, str, "_PolicySnapshot", Mapping[str, Any]], Admission
]
"""Decides a governed pod without hold (``AdmissionWebhook._admit_counting``)."""
Observe = Callable[[str, float], None]
"""Records one answered request: its outcome and the seconds it took."""


def make_application(decide: Decide, observe: Observe) -> web.Application:
    """The aiohttp application answering ``POST /mutate-pods`` with ``decide``.

    Shared by the agent (tests, the listener thread) and the listener process
    (``webhook_process``), so every listener answers alike.
    """

    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        outcome = "bad_request"
        try:
            try:
                review = await _read_review(request)
            except _BadRequestError as error:
                log.warning("elastic webhook: refused a request from %s: %s", request.remote, error)
                return web.Response(status=error.status, text=f"{error}\n")
            admission_request = review["request"]
            outcome, fields = await decide(admission_request)
            fields["uid"] = admission_request["uid"]
            fields["allowed"] = True
            return web.json_response(
                {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": fields}
            )
        finally:
            observe(outcome, time.perf_counter() - started)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(WEBHOOK_PATH, handle)
    return app


async def _read_review(request: web.Request) -> dict[str, Any]:
    if request.content_type != _JSON:
        raise _BadRequestError(415, f"Content-Type must be {_JSON}")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _BadRequestError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _BadRequestError(413, f"the body is larger than {MAX_BODY_BYTES} bytes") from None
    try:
        review = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _BadRequestError(400, "the body is not JSON") from None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise _BadRequestError(400, "the body is not an AdmissionReview")
    if review.get("apiVersion") != REVIEW_API_VERSION:
        raise _BadRequestError(400, f"only AdmissionReview {REVIEW_API_VERSION} is served")
    admission_request = review.get("request")
    if not isinstance(admission_request, dict):
        raise _BadRequestError(400, "the AdmissionReview has no request")
    uid = admission_request.get("uid")
    if not isinstance(uid, str) or not 0 < len(uid) <= MAX_UID_CHARS:
        raise _BadRequestError(
            400, f"request.uid must be a string of 1..{MAX_UID_CHARS} characters"
        )
    return review


def answer(
    request: Mapping[str, Any], snapshot: _PolicySnapshot, *, count: Count | None = None
) -> tuple[str, dict[str, Any]]:
    """``(outcome, response fields)`` for a review that parsed; never raises.

    ``count`` None: a governed pod is held (hold mode); else ``count`` places it.
    """
    try:
        return _decide(request, snapshot, count)
    except Exception:
        log.warning(
            "elastic webhook: admitting request %s unchanged after an error",
            request.get("uid"),
            exc_info=True,
        )
        return "error", {}


def _decide(
    request: Mapping[str, Any], snapshot: _PolicySnapshot, count: Count | None
) -> tuple[str, dict[str, Any]]:
    pod = request.get("object")
    namespace = request.get("namespace")
    if (
        not _is_pod_create(request)
        or not isinstance(pod, dict)
        or not isinstance(pod.get("spec"), dict)
        or not isinstance(namespace, str)
        or not namespace
    ):
        return "skipped", {}
    if not snapshot.synced:
        return "not_synced", {}
    policies = list(snapshot.by_namespace.get(namespace, ()))
    policy = governing_policy(pod, policies, namespace=namespace)
    if policy is None:
        return "no_policy", {}
    held = count is None
    if count is None:
        admission = admit(pod, policy, (), hold=True)
    else:
        admission = count(pod, policy, namespace, snapshot, request)
    label = _pod_label(pod, request)
    if not admission.patch:
        log.debug("elastic webhook: pod %s/%s unchanged: %s", namespace, label, admission.reason)
        return "unchanged", {}
    log.debug("elastic webhook: pod %s/%s: %s", namespace, label, admission.reason)
    patch = base64.b64encode(json.dumps(admission.patch, separators=(",", ":")).encode())
    outcome = "held" if held else "waiting" if admission.waiting else "placed"
    return outcome, {"patchType": "JSONPatch", "patch": patch.decode()}


def parse_snapshot(*, revision: int, synced: bool, objects: Iterable[object]) -> _PolicySnapshot:
    """The snapshot of these ResourcePolicy objects.

    Invalid ones are skipped (the policy controller reports them in their status).
    """
    by_namespace: dict[str, list[ResourcePolicy]] = collections.defaultdict(list)
    statuses: dict[Key, object] = {}
    for obj in objects:
        try:
            policy = parse_resource_policy(obj)
        except SpecError:
            continue
        by_namespace[policy.namespace].append(policy)
        statuses[(policy.namespace, policy.name)] = _dict(obj).get("status")
    return _PolicySnapshot(
        revision=revision,
        synced=synced,
        by_namespace={ns: tuple(found) for ns, found in by_namespace.items()},
        statuses=statuses,
    )


MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Bytes of one line between the agent and its listener process: the policies of a cluster (a
few KiB each) with room to spare; a longer line is refused by either side."""
MAX_DURATIONS = 1000
"""Durations in one metrics report of the listener process: it reports when it has this many
(or every ``webhook_process.REPORT_INTERVAL`` seconds), so it never drops one."""
_MAX_OUTCOME_CHARS = 32
_START_TIMEOUT = 60.0
"""Seconds a listener process has to listen: an interpreter start and imports, on a busy
2-core machine a few seconds."""
_STOP_GRACE = 5.0
"""Seconds a listener process has to end after its pipe is closed, before it is killed."""
_STABLE = 10.0
"""Seconds a listener process must have served for its end to restart the back-off."""
_ROOT = Path(__file__).resolve().parents[3]
"""The directory holding the ``edge_agent`` package the agent runs: the child imports the same."""


def _tls_message(tls: webhook_tls.WebhookTls) -> dict[str, Any]:
    return {"tls": {"cert": tls.cert_path.read_text(), "key": tls.key_path.read_text()}}


class _ListenerProcess:
    """One listener process (``python -m edge_agent.cluster.elastic.webhook_process``).

    Its stdin carries JSON lines to it (``tls``, ``policies``), its stdout JSON lines back
    (``listening``, ``error``, ``metrics``); stderr is the agent's (its log lines). It ends
    when its stdin closes, so it never outlives the agent (module rules).
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._lock = asyncio.Lock()
        self.policies_sent: tuple[int, bool] | None = None
        """The snapshot (revision, synced) last sent."""

    @classmethod
    async def start(cls, host: str | None, port: int) -> _ListenerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        level = log.getEffectiveLevel()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent.cluster.elastic.webhook_process",
            f"--host={host or ''}",
            f"--port={port}",
            f"--log-level={level}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=MAX_MESSAGE_BYTES,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message; ValueError if too long; a gone process is ignored (it restarts)."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_MESSAGE_BYTES:
            raise ValueError(f"a message of {len(line)} bytes (at most {MAX_MESSAGE_BYTES})")
        stdin = self._process.stdin
        assert stdin is not None  # noqa: S101 - started with a pipe
        async with self._lock:
            with contextlib.suppress(ConnectionError):
                stdin.write(line)
                await stdin.drain()

    async def _message(self) -> dict[str, Any] | None:
        """The next message, None at the end; a broken line ends the process (ValueError)."""
        stdout = self._process.stdout
        assert stdout is not None  # noqa: S101 - started with a pipe
        try:
            line = await stdout.readline()
        except ValueError as error:  # longer than MAX_MESSAGE_BYTES
            raise ValueError(f"the listener process sent an overlong line: {error}") from None
        if not line:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            raise ValueError("the listener process sent a line that is not JSON") from None
        if not isinstance(message, dict):
            raise ValueError("the listener process sent a line that is not a JSON object")  # noqa: TRY004 - a protocol error, like the others
        return message

    async def listening(self) -> int:
        """The port once the process listens; RuntimeError (with its reason) if it ends."""
        async with asyncio.timeout(_START_TIMEOUT):
            message = await self._message()
        port = message.get("listening") if message is not None else None
        if isinstance(port, int) and 0 < port <= 65535:
            return port
        reason = message.get("error") if message is not None else None
        code = await self.stop()
        raise RuntimeError(
            f"the webhook listener process ended before listening (code {code}): "
            f"{reason if isinstance(reason, str) else 'no reason given'}"
        )

    async def reports(self, absorb: Callable[[Mapping[str, Any]], None]) -> None:
        """Hand each valid metrics report to ``absorb`` until the process closes its stdout."""
        while True:
            try:
                message = await self._message()
            except ValueError as error:
                log.warning("elastic webhook: %s; stopping it", error)
                return
            if message is None:
                return
            report = _valid_report(message.get("metrics"))
            if report is None:
                log.warning("elastic webhook: the listener process sent an odd report")
                continue
            absorb(report)

    async def stop(self) -> int:
        """Close its stdin (it ends), kill it if it does not; its return code."""
        process = self._process
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(_STOP_GRACE):
                return await process.wait()
        except TimeoutError:
            log.warning("elastic webhook: killing listener process %d", process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


def _valid_report(report: object) -> dict[str, Any] | None:
    """A metrics report of the listener process, checked (counts and durations bounded)."""
    if not isinstance(report, dict):
        return None
    admissions = report.get("admissions")
    durations = report.get("durations")
    if not isinstance(admissions, dict) or not isinstance(durations, list):
        return None
    if len(admissions) > 16 or len(durations) > MAX_DURATIONS:
        return None
    for outcome, count in admissions.items():
        if len(outcome) > _MAX_OUTCOME_CHARS or not isinstance(count, int) or count < 0:
            return None
    for seconds in durations:
        if not isinstance(seconds, int | float) or not 0 <= seconds < 3600:
            return None
    return {"admissions": admissions, "durations": durations}


class AdmissionWebhook:
    """Serves ``POST /mutate-pods`` over HTTPS and keeps its configuration and certificates.

    ``policies``: an informer of every ResourcePolicy (started by the caller); ``pods``: an
    informer of every pod, needed only without hold mode; ``namespace``: the agent's own,
    left out of the webhook's namespaces. See the module's rules.
    """

    def __init__(
        self,
        *,
        api: MemberApi,
        policies: Informer,
        settings: ElasticSettings,
        state_dir: Path,
        pods: Informer | None = None,
        nodes: Informer | None = None,
        registry: prometheus_client.CollectorRegistry | None = None,
        namespace: str | None = None,
    ) -> None:
        self._api = api
        self._policies = policies
        self._settings = settings
        self._state_dir = state_dir
        self._pods = pods
        self._namespace = namespace
        self._listen_host, self._listen_port = _listen(settings.webhook_listen)
        self._url = _url(settings.webhook_url)
        self._service = _service(settings.webhook_service)
        if pods is None and not settings.hold:
            log.info("elastic webhook: no pods cache given: every governed pod is held")
        self._hold = settings.hold or pods is None
        # Bound pods count for the unit of their node: without hold, node labels are needed.
        # A nodes cache the caller runs (``nodes``) is shared; else the webhook runs its own.
        self._own_nodes = not self._hold and nodes is None
        self._nodes = (
            None
            if self._hold
            else nodes or Informer(api, "/api/v1/nodes", settings=InformerSettings())
        )
        self._metrics = WebhookMetrics(registry) if registry is not None else None
        self._port = 0
        self.ready = asyncio.Event()
        """Set once the listener serves and the configuration is registered."""
        self.timing = WebhookTiming()
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)
        """The wall clock for certificate validity (tests put a fake one here)."""
        self._snapshot = _NO_POLICIES
        """Replaced (never changed) by the main loop; read by the listener thread."""
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._cache_revisions: tuple[int, int, int] = (-1, -1, -1)
        self._pods_by_namespace: dict[str, list[dict[str, Any]]] = {}
        self._admitted: set[str] = set()
        self._node_labels: dict[str, dict[str, str]] = {}
        self._usage: dict[Key, Usage] = {}
        self._in_flight: collections.deque[_Flight] = collections.deque(maxlen=_MAX_IN_FLIGHT)
        self._listening = False
        self._registered = False
        self._child: _ListenerProcess | None = None
        self._tls: webhook_tls.WebhookTls | None = None
        self._bound_port = 0
        self._started_at = 0.0

    @property
    def port(self) -> int:
        """The port the listener bound (0 while not listening)."""
        return self._port

    # ------------------------------------------------------------ serving

    def application(self, *, listener_thread: bool = False) -> web.Application:
        """The aiohttp application answering ``POST /mutate-pods``.

        By default it decides on the loop that serves it, which must be the informers' loop
        (tests serve it so). ``run`` serves it without hold with ``listener_thread=True`` on the
        listener thread, where it hands each review to the agent's loop (module rules).
        """
        decide = self._decide_from_listener if listener_thread else self._decide_here
        return make_application(decide, self._observe)

    def _observe(self, outcome: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.admissions.labels(outcome).inc()
            self._metrics.latency.observe(seconds)

    async def _decide_here(self, request: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Decide on the main loop (the informers' and the counting state's)."""
        self._publish_policies()
        return answer(request, self._snapshot, count=self._counter())

    async def _decide_from_listener(self, request: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if self._hold:
            return answer(request, self._snapshot)
        try:
            future = asyncio.run_coroutine_threadsafe(self._decide_here(request), self._loop())
        except RuntimeError:  # the agent's loop is closing: fail open
            log.warning("elastic webhook: admitting %s unchanged: no agent loop", request["uid"])
            return "error", {}
        return await asyncio.wrap_future(future)

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._main_loop is None:
            raise RuntimeError("the agent's loop is not known")
        return self._main_loop

    def _counter(self) -> Count | None:
        """How to decide a governed pod: ``None`` holds it (module rules), else count."""
        return None if self._holding() else self._admit_counting

    # ------------------------------------------------------------ decisions

    def _publish_policies(self) -> int:
        """Main loop only: parse the policies if the informer changed, publish the snapshot.

        Returns the revision published. The listener thread reads ``_snapshot`` without a
        lock: it is replaced whole, by one assignment (atomic in CPython), never changed.
        """
        revision = self._policies.revision
        synced = self._policies.synced.is_set()
        current = self._snapshot
        if revision == current.revision and synced == current.synced:
            return revision
        self._snapshot = parse_snapshot(
            revision=revision, synced=synced, objects=self._policies.items().values()
        )
        return revision

    async def _follow_policies(self) -> None:
        """Publish a new snapshot on every change of the policies informer (main loop)."""
        while True:
            revision = self._publish_policies()
            child = self._child
            if child is not None and child.policies_sent != self._snapshot_id():
                await self._send_policies(child)
            await self._policies.wait_changed(revision, _IDLE_WAIT)

    def _snapshot_id(self) -> tuple[int, bool]:
        return self._snapshot.revision, self._snapshot.synced

    def _holding(self) -> bool:
        """Hold this pod: hold mode, or the caches the count needs are not there yet."""
        if self._hold or self._pods is None or self._nodes is None:
            return True
        return not (self._pods.synced.is_set() and self._nodes.synced.is_set())

    def _admit_counting(
        self,
        pod: Mapping[str, Any],
        policy: ResourcePolicy,
        namespace: str,
        snapshot: _PolicySnapshot,
        request: Mapping[str, Any],
    ) -> Admission:
        """``admit`` without hold (main loop only): pods per unit from caches and admissions."""
        group = group_key(policy, pod)
        key = (policy.namespace, policy.name)
        usage = self._usage_of(policy, namespace, snapshot)
        counts = list(usage.counts(group, len(policy.units)))
        for unit in self._flying(key, group):
            if unit < len(counts):
                counts[unit] += 1
        opened = opened_from_status(policy, snapshot.statuses.get(key)).get(group, 0)
        admission = admit(pod, policy, counts, opened=opened)
        index = policy.unit_index(admission.unit)
        if index is None:
            return admission
        uid = str(request["uid"])
        if request.get("dryRun") is not True:  # a dry run creates nothing to count
            self._in_flight.append(_Flight(time.monotonic(), key, group, index, uid))
        # admit's operations leave an annotations map in place: add our key to it.
        mark = {"op": "add", "path": f"/metadata/annotations/{escape(ANNOTATION_ADMISSION)}"}
        return dataclasses.replace(admission, patch=[*admission.patch, {**mark, "value": uid}])

    def _refresh_caches(self, policy_revision: int) -> None:
        assert self._pods is not None  # noqa: S101 - only called without hold
        assert self._nodes is not None  # noqa: S101
        revisions = (self._pods.revision, self._nodes.revision, policy_revision)
        if revisions == self._cache_revisions:
            return
        if revisions[0] != self._cache_revisions[0]:
            by_namespace: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
            items = self._pods.items()
            admitted: set[str] = set()
            for (namespace, _), obj in items.items():
                by_namespace[namespace].append(obj)
                annotations = _dict(_dict(obj.get("metadata")).get("annotations"))
                if isinstance(uid := annotations.get(ANNOTATION_ADMISSION), str):
                    admitted.add(uid)
            self._pods_by_namespace = dict(by_namespace)
            self._admitted = admitted
        if revisions[1] != self._cache_revisions[1]:
            self._node_labels = {
                name: {k: v for k, v in labels.items() if isinstance(v, str)}
                for (_, name), obj in self._nodes.items().items()
                if isinstance(labels := _dict(obj.get("metadata")).get("labels"), dict)
            }
        self._usage.clear()
        self._cache_revisions = revisions

    def _usage_of(self, policy: ResourcePolicy, namespace: str, snapshot: _PolicySnapshot) -> Usage:
        self._refresh_caches(snapshot.revision)
        key = (policy.namespace, policy.name)
        usage = self._usage.get(key)
        if usage is None:
            pods = self._pods_by_namespace.get(namespace, [])
            policies = list(snapshot.by_namespace.get(namespace, ()))
            usage = count_usage(policy, pods, self._node_labels, policies=policies)
            self._usage[key] = usage
        return usage

    def _flying(self, policy: Key, group: GroupKey) -> list[int]:
        """Units of this group's recent admissions that the pods cache does not show yet."""
        horizon = time.monotonic() - self.timing.in_flight
        while self._in_flight and self._in_flight[0].at < horizon:
            self._in_flight.popleft()
        return [
            flight.unit
            for flight in self._in_flight
            if flight.policy == policy
            and flight.group == group
            and flight.uid not in self._admitted
        ]

    # ------------------------------------------------------------ upkeep

    def _effective_url(self) -> str | None:
        if self._url is None:
            return None
        parts = self._url
        if parts.port != 0:
            return parts.geturl()
        assert parts.hostname is not None  # noqa: S101 - checked in _url
        netloc = f"{_host_for_url(parts.hostname)}:{self._port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def _names(self) -> list[str]:
        namespace, name = self._service
        host = self._url.hostname if self._url is not None else None
        return webhook_tls.serving_names(
            service_namespace=namespace, service_name=name, url_host=host
        )

    async def _ensure_tls(self) -> webhook_tls.WebhookTls:
        settings = self._settings
        tls, _ = await asyncio.to_thread(
            webhook_tls.ensure_certificates,
            self._state_dir,
            names=self._names(),
            lifetime=timedelta(days=settings.certificate_days),
            renew_before=timedelta(days=settings.certificate_renew_days),
            now=self.now(),
        )
        if self._metrics is not None:
            self._metrics.certificate_expiry.set(tls.not_after.timestamp())
        return tls

    async def _register(self, tls: webhook_tls.WebhookTls) -> None:
        excluded = [self._namespace] if self._namespace else []
        if self._url is None:
            excluded.append(self._service[0])
        desired = desired_configuration(
            settings=self._settings,
            ca_bundle=tls.ca_bundle,
            url=self._effective_url(),
            service=None if self._url is not None else self._service,
            excluded_namespaces=tuple(excluded),
        )
        try:
            result = await register(self._api, desired)
        except (MemberApiError, WebhookConfigError):
            if self._metrics is not None:
                self._metrics.registrations.labels("failed").inc()
            raise
        if self._metrics is not None:
            self._metrics.registrations.labels(result).inc()

    async def run(self) -> None:
        """Make or load the certificates, listen, register, renew; until cancelled.

        Hold mode serves from a listener process, else from a listener thread (module rules);
        either is started here and always stopped before this returns or raises. The first
        listener's failure to listen is raised here.
        """
        self._main_loop = asyncio.get_running_loop()
        self._publish_policies()
        tls = await self._ensure_tls()
        try:
            if self._hold:
                await self._run_process(tls)
            else:
                await self._run_thread(tls)
        finally:
            self._listening = False
            self._update_ready()
            self._port = 0

    async def _run_thread(self, tls: webhook_tls.WebhookTls) -> None:
        context = webhook_tls.server_context(tls)
        listener = _ListenerThread(
            self.application(listener_thread=True), self._listen_host, self._listen_port, context
        )
        listener.start()

        async def serve(fresh: webhook_tls.WebhookTls) -> None:
            # On the listener's loop: it handshakes with this context.
            await listener.call(functools.partial(webhook_tls.reload_context, context, fresh))

        try:
            self._port = await asyncio.wrap_future(listener.started)
            self._listening = True
            log.info(
                "elastic webhook: serving https on %s:%d (count mode, thread %s)",
                self._listen_host or "*",
                self._port,
                LISTENER_THREAD,
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow_policies(), name="elastic.webhook.policies")
                if self._own_nodes and self._nodes is not None:
                    group.create_task(self._nodes.run(), name="elastic.webhook.nodes")
                group.create_task(self._upkeep(tls, serve), name="elastic.webhook.upkeep")
                group.create_task(self._listening_thread(listener), name="elastic.webhook.listener")
        finally:
            listener.stop()
            await listener.join()

    @staticmethod
    async def _listening_thread(listener: _ListenerThread) -> None:
        """Raise when the listener thread ends: its error, or that it ended at all."""
        await asyncio.wrap_future(listener.finished)
        raise RuntimeError("the webhook listener thread ended")

    # ------------------------------------------------------------ the listener process

    @property
    def listener_pid(self) -> int | None:
        """The listener process's pid (hold mode, while one runs)."""
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    async def _run_process(self, tls: webhook_tls.WebhookTls) -> None:
        self._tls = tls
        try:
            child = await self._start_child(self._listen_port)
            self._bound_port = self._port
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow_policies(), name="elastic.webhook.policies")
                group.create_task(
                    self._upkeep(tls, self._serve_in_child), name="elastic.webhook.upkeep"
                )
                group.create_task(self._supervise(child), name="elastic.webhook.process")
        finally:
            if self._child is not None:
                await self._child.stop()
                self._child = None

    async def _start_child(self, port: int) -> _ListenerProcess:
        """Start a listener process and feed it; return once it listens, else raise."""
        assert self._tls is not None  # noqa: S101 - set before the first start
        child = await _ListenerProcess.start(self._listen_host, port)
        self._child = child
        try:
            await child.send(_tls_message(self._tls))
            await self._send_policies(child)
            self._port = await child.listening()
        except BaseException:
            await child.stop()
            self._child = None
            raise
        self._listening = True
        self._started_at = time.monotonic()
        self._update_ready()
        log.info(
            "elastic webhook: serving https on %s:%d (hold mode, process %d)",
            self._listen_host or "*",
            self._port,
            child.pid,
        )
        return child

    async def _supervise(self, child: _ListenerProcess | None) -> None:
        """Read the listener's reports; when it ends, start another, with back-off."""
        failures = 0
        why = ""
        while True:
            if child is not None:
                await child.reports(self._absorb)
                code = await child.stop()
                self._child = None
                self._listening = False
                self._update_ready()
                self._port = 0
                lived = time.monotonic() - self._started_at
                failures = 0 if lived >= _STABLE else failures
                why = f"exit code {code}" if code >= 0 else f"signal {-code}"
            failures += 1
            delay = min(
                self.timing.retry_initial * 2 ** min(failures - 1, 30), self.timing.retry_max
            )
            if child is not None:
                log.warning(
                    "elastic webhook: the listener process %d ended (%s); starting another in "
                    "%.1f s",
                    child.pid,
                    why,
                    delay,
                )
            else:
                log.warning("elastic webhook: starting a listener process in %.1f s", delay)
            await asyncio.sleep(delay)
            try:
                child = await self._start_child(self._bound_port)
            except (OSError, RuntimeError, TimeoutError) as error:
                log.warning("elastic webhook: the listener process did not start: %s", error)
                child = None

    async def _serve_in_child(self, fresh: webhook_tls.WebhookTls) -> None:
        self._tls = fresh
        child = self._child
        if child is not None:  # else the next child gets it at its start
            await child.send(_tls_message(fresh))

    async def _send_policies(self, child: _ListenerProcess) -> None:
        snapshot = self._snapshot
        message = {
            "policies": {
                "revision": snapshot.revision,
                "synced": snapshot.synced,
                "items": list(self._policies.items().values()),
            }
        }
        try:
            await child.send(message)
        except ValueError as error:  # too large to send: the child keeps what it has
            log.warning("elastic webhook: the policies not sent to the listener: %s", error)
        child.policies_sent = (snapshot.revision, snapshot.synced)

    def _absorb(self, report: Mapping[str, Any]) -> None:
        """Count the listener's answers (``_ListenerProcess.reports`` validated the shape)."""
        if self._metrics is None:
            return
        for outcome, count in report["admissions"].items():
            self._metrics.admissions.labels(outcome).inc(count)
        for seconds in report["durations"]:
            self._metrics.latency.observe(seconds)

    def _update_ready(self) -> None:
        if self._listening and self._registered:
            self.ready.set()
        else:
            self.ready.clear()

    async def _upkeep(
        self,
        tls: webhook_tls.WebhookTls,
        serve: Callable[[webhook_tls.WebhookTls], Awaitable[None]],
    ) -> None:
        """Keep the configuration registered and the certificates current (module rules)."""
        failures = 0
        registered = False
        while True:
            try:
                fresh = await self._ensure_tls()
                await self._register(fresh)
                if fresh.serving_fingerprint != tls.serving_fingerprint:
                    # The API server trusts the new CA (the bundle holds both) only once it
                    # has loaded the configuration: serve the new certificate after that.
                    if registered and fresh.ca_fingerprint != tls.ca_fingerprint:
                        await asyncio.sleep(self.timing.ca_propagation)
                    await serve(fresh)
                    log.info(
                        "elastic webhook: serving the new certificate (valid until %s)",
                        fresh.not_after.isoformat(),
                    )
                    tls = fresh
            except (MemberApiError, WebhookConfigError, OSError) as error:
                failures += 1
                delay = min(
                    self.timing.retry_initial * 2 ** min(failures - 1, 30), self.timing.retry_max
                )
                log.warning("elastic webhook: %s; retrying in %.1f s", error, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            registered = self._registered = True
            self._update_ready()
            until_renewal = (tls.renew_at - self.now()).total_seconds()
            await asyncio.sleep(max(min(self.timing.recheck, until_renewal), 1.0))

"""The replicas' Leases on the Kubernetes API: this replica's, the leader's, the agents'.

Rules:

- One ``Replicas`` per server process, on the server's event loop, with an async lightkube
  client under the store's identity and namespace. ``run()`` is a TaskGroup of named tasks:
  the Lease watch (list, then watch from its resourceVersion; any failure: list again after
  ``write_retry``), this replica's Lease renewal, the leader election, the session scan and
  the holder writers. The decisions are ``rules``' (sans-IO); this file only does I/O.
- ``holder_of(node)`` answers from the watch-fed ``LeaseMirror``, never from a request.
- Holder writes are coalesced per node (``_pending``: the last wanted state wins) and
  rate-limited by a token bucket of ``holder_writes_per_second`` (burst ``holder_burst``),
  shared by ``HOLDER_WORKERS`` writers so one slow write does not stall the others.
- Each write carries the resourceVersion it was decided on; on 409 the Lease is read from
  the API and decided again, ``CONFLICT_RETRIES`` times at most.
- An outage of the API (docs/ha.md "When the Kubernetes API is down"): every call here is
  async, so nothing waits on the loop. While this replica cannot see the API (its Lease watch
  failed, or its own Lease's renewal failed) it judges which replicas are alive at the last
  moment it could see (``judged_now``), not at the wall clock: every replica's Lease would
  otherwise run out in its eyes after ``lease_duration``, its own included, and requests for
  the agents the others hold would find no holder. Its sessions are never dropped for a
  missed renewal. Once the watch lists again after a failure, every session whose agent
  Lease does not name this replica is claimed again (``reassert``). The leader stops leading
  ``renew_deadline`` after its last renewal, before any other may take the Lease
  (``lease_duration``); on the API's return every candidate writes under the Lease's
  resourceVersion, so exactly one wins.
- ``close()`` (clean shutdown) releases the leader Lease if held and deletes this replica's
  Lease: every agent it held counts as held by nobody at once, instead of after
  ``lease_duration``. Agent Leases stay (one small object per node, rewritten by the next
  holder).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import httpx2
import prometheus_client
from lightkube import ApiError, AsyncClient
from lightkube.resources.coordination_v1 import Lease

from tunnel_server.kubestore.store import client_config
from tunnel_server.kubestore.watch_thread import client_timeout
from tunnel_server.replicas import rules
from tunnel_server.replicas.mirror import LeaseMirror

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from tunnel_server.kubestore.settings import KubeStoreSettings
    from tunnel_server.settings import ReplicaSettings

log = logging.getLogger("tunnel_server.replicas")

HOLDER_WORKERS = 4
"""Holder writes in flight at once: one write is a round trip (~10 ms to kine, more to a
loaded etcd), so one writer alone could not reach the rate the bucket allows."""
CONFLICT_RETRIES = 8
"""Reads-and-decides again of one agent Lease after 409s before the change waits its turn
again: more writers than that on one agent at once is not a load we expect."""
WATCH_TIMEOUT = 300
"""Seconds the API server keeps one watch of the Leases open before we list again."""

Op = tuple[Literal["claim", "release"], float]
"""A wanted holder change of one node: claim or release, for the session started then."""


class ConflictError(Exception):
    """409: the Lease changed since it was read (or exists already)."""


class LeaseApiError(Exception):
    """The API refused or could not be reached; the write is tried again later."""


class ReplicaMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry, replicas: Replicas) -> None:
        leader = prometheus_client.Gauge(
            "tunnel_server_replica_leader",
            "1 while this replica holds the leader Lease and runs the singletons",
            registry=registry,
        )
        leader.set_function(lambda: 1.0 if replicas.leading else 0.0)
        alive = prometheus_client.Gauge(
            "tunnel_server_replicas_alive",
            "Replicas whose Lease is alive, this one included, as the watch shows them",
            registry=registry,
        )
        alive.set_function(lambda: len(replicas.alive()))
        pending = prometheus_client.Gauge(
            "tunnel_server_holder_writes_pending",
            "Agents whose holder record waits to be written (coalesced per agent)",
            registry=registry,
        )
        pending.set_function(lambda: len(replicas.pending))
        self.holder_writes = prometheus_client.Counter(
            "tunnel_server_holder_writes",
            "Agent holder Lease writes, by result (written, conflict, lost: a newer session on"
            " another replica holds it, failed: the API refused or was unreachable)",
            ["result"],
            registry=registry,
        )
        self.renew_failures = prometheus_client.Counter(
            "tunnel_server_lease_renew_failures",
            "Failed writes of this replica's Lease or the leader Lease",
            ["lease"],
            registry=registry,
        )


class Replicas:
    """This replica's membership, its agents' holder records, and the leader election."""

    def __init__(
        self,
        *,
        settings: ReplicaSettings,
        kube: KubeStoreSettings,
        peer_address: str,
        sessions: Callable[[], dict[str, float]],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> None:
        if settings.name is None or not rules.valid_replica_name(settings.name):
            raise ValueError(
                f"replica name {settings.name!r} must be a DNS subdomain (lower case, digits, '-',"
                " '.') of at most 235 characters"
            )
        self.settings = settings
        self.name: str = settings.name
        self.peer_address = peer_address
        self._ns = kube.namespace
        self._kube = kube
        self._sessions = sessions
        self.mirror = LeaseMirror()
        self.election = rules.Election(
            me=self.name,
            duration=settings.lease_duration,
            renew_interval=settings.renew_interval,
            renew_deadline=settings.renew_deadline,
        )
        self._client: AsyncClient | None = None
        self._own: rules.LeaseRecord | None = None
        self.pending: dict[str, Op] = {}
        self._recorded: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._tokens = float(settings.holder_burst)
        self._filled_at = time.monotonic()
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()
        self.listed = asyncio.Event()
        self.registered = asyncio.Event()
        self._watch_blind_since: float | None = None
        self._renew_blind_since: float | None = None
        self.metrics = None if registry is None else ReplicaMetrics(registry, self)

    # ------------------------------------------------------------------ what others ask

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def judged_now(self) -> float:
        """The time at which Leases are judged alive: now, or when the API was last seen.

        While this replica cannot see the API, every Lease would run out in its eyes (its own
        too) though their holders may well be renewing them: judge at the last moment seen.
        """
        blind = [t for t in (self._watch_blind_since, self._renew_blind_since) if t is not None]
        return min([time.time(), *blind])

    @property
    def blind(self) -> bool:
        """Whether the API cannot be seen now (the Lease watch or this replica's renewal fails)."""
        return self._watch_blind_since is not None or self._renew_blind_since is not None

    def holder_of(self, node: str) -> str | None:
        """The replica holding ``node``'s session (by the watch), None if none that is alive."""
        return self.mirror.holder_of(node, self.judged_now())

    def holder_address(self, node: str) -> tuple[str, str] | None:
        """The live replica holding ``node`` and the peer address its Lease advertises."""
        holder = self.holder_of(node)
        if holder is None:
            return None
        record = self.mirror.get(rules.replica_lease(holder))
        if record is None or not record.peer:
            return None
        return holder, record.peer

    def alive(self) -> list[str]:
        return sorted(self.mirror.alive(self.judged_now()))

    def held_nodes(self) -> set[str]:
        """Nodes some live replica holds (this one included), by the Lease watch."""
        return self.mirror.held_nodes(self.judged_now())

    def status(self) -> dict[str, Any]:
        return {
            "replica": self.name,
            "peer_address": self.peer_address,
            "leader": self.leading,
            "replicas_alive": self.alive(),
            "agents_held": len(self._recorded),
            "api_reachable": not self.blind,
        }

    async def while_leader(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work()`` while this replica leads: cancelled on losing, restarted on winning."""
        while True:
            await self._leading.wait()
            log.info("leading: starting %s", name)
            async with asyncio.TaskGroup() as group:
                task = group.create_task(work(), name=name)
                following = group.create_task(self._following.wait(), name=f"{name}.until-lost")
                await asyncio.wait((task, following), return_when=asyncio.FIRST_COMPLETED)
                task.cancel()
                following.cancel()
            log.info("no longer leading: %s stopped", name)

    # ------------------------------------------------------------------ API calls

    def _api(self) -> AsyncClient:
        if self._client is None:
            self._client = AsyncClient(
                client_config(self._kube),
                namespace=self._ns,
                timeout=client_timeout(self._kube),
                field_manager="tunnel-server",
            )
        return self._client

    async def _call(self, what: str, call: Coroutine[Any, Any, Any]) -> Any:  # noqa: ANN401
        try:
            return await call
        except ApiError as error:
            if error.status.code == 409:  # HTTP Conflict
                raise ConflictError(what) from error
            if error.status.code == 404:  # HTTP Not Found
                return None
            raise LeaseApiError(f"{what}: {error.status.message}") from error
        except httpx2.HTTPError as error:
            raise LeaseApiError(f"{what}: {error}") from error

    async def read(self, name: str) -> rules.LeaseRecord | None:
        lease = await self._call(
            f"get lease {name}", self._api().get(Lease, name, namespace=self._ns)
        )
        if lease is None:
            return None
        record = rules.from_object(lease.to_dict())
        self.mirror.put(record)
        return record

    async def write(self, record: rules.LeaseRecord) -> rules.LeaseRecord:
        """Create (no version) or replace (that version) the Lease; ConflictError on 409."""
        lease = Lease.from_dict(rules.to_object(record, namespace=self._ns))
        assert isinstance(lease, Lease)  # noqa: S101 - from_dict of the class gives the class
        what = f"write lease {record.name}"
        if record.version is None:
            answer = await self._call(what, self._api().create(lease))
        else:
            answer = await self._call(what, self._api().replace(lease))
        if answer is None:  # replaced a Lease deleted meanwhile
            raise ConflictError(what)
        written = rules.from_object(answer.to_dict())
        self.mirror.put(written)
        return written

    # ------------------------------------------------------------------ the tasks

    async def run(self) -> None:
        """Every task of the replica, until cancelled (then ``close()``)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(), name="replicas.lease-watch")
            group.create_task(self._keep_own_lease(), name="replicas.own-lease")
            group.create_task(self._elect(), name="replicas.election")
            group.create_task(self._scan_sessions(), name="replicas.session-scan")
            for index in range(HOLDER_WORKERS):
                group.create_task(self._write_holders(), name=f"replicas.holders-{index}")

    async def _watch(self) -> None:
        api = self._api()
        while True:
            try:
                listed = api.list(Lease, namespace=self._ns)
                records = [rules.from_object(lease.to_dict()) async for lease in listed]
                self.mirror.reset(records)
                self.listed.set()
                if self._watch_blind_since is not None:
                    self._watch_blind_since = None
                    log.info("leases listed again after a failure: checking this replica's")
                    self.reassert()
                async for event, lease in api.watch(
                    Lease,
                    namespace=self._ns,
                    resource_version=listed.resourceVersion,
                    server_timeout=WATCH_TIMEOUT,
                ):
                    record = rules.from_object(lease.to_dict())
                    if event == "DELETED":
                        self.mirror.delete(record)
                    elif event in ("ADDED", "MODIFIED"):
                        self.mirror.put(record)
            except Exception as error:  # noqa: BLE001 - the watch must outlive any one failure
                if self._watch_blind_since is None:
                    self._watch_blind_since = time.time()
                log.warning("watch of leases failed (%s): listing again", error)
                await asyncio.sleep(self.settings.write_retry)

    def _clash(self, current: rules.LeaseRecord | None, now: float) -> bool:
        """Whether another live replica uses this name (seen at the first registration)."""
        return (
            not self.registered.is_set()
            and current is not None
            and current.holder == self.name
            and current.peer != self.peer_address
            and rules.alive(current.renew_time, current.duration, now)
        )

    async def _keep_own_lease(self) -> None:
        name = rules.replica_lease(self.name)
        # One renewal (a read and a write) is bounded by a renew interval: a write proposed as
        # etcd's leader dies hangs until etcd's request timeout (7-10 s) and the client's, so
        # an unbounded one, then a renew interval's wait, then a read and a write, could leave
        # the Lease unrenewed past its duration (15 s) and every peer would count this live
        # replica and its agents as gone. A timed-out attempt is tried again at once, after a
        # fresh read (it may have been written meanwhile), so the renewal comes as soon as
        # etcd has a leader again.
        attempt_timeout = self.settings.renew_interval
        while True:
            now = time.time()
            try:
                async with asyncio.timeout(attempt_timeout):
                    await self._renew_own(name, now)
                self._renew_blind_since = None
            except (ConflictError, LeaseApiError, TimeoutError) as error:
                self._own = None  # read it again next time
                if not isinstance(error, ConflictError) and self._renew_blind_since is None:
                    # Its sessions stay: a missed renewal is no reason to drop an agent.
                    self._renew_blind_since = now
                log.warning("could not renew this replica's lease (%s)", str(error) or "timed out")
                if self.metrics is not None:
                    self.metrics.renew_failures.labels("replica").inc()
                if isinstance(error, TimeoutError):
                    continue  # the timeout was the wait: try again at once
            await asyncio.sleep(self.settings.renew_interval)

    async def _renew_own(self, name: str, now: float) -> None:
        """One renewal of this replica's Lease (a read first when its version is not known)."""
        current = self._own or await self.read(name)
        if self._clash(current, now):
            assert current is not None  # noqa: S101 - _clash checked it
            # Two replicas of one name would both hold and both lead: this one waits
            # (not ready) until that Lease runs out, and says why.
            log.error(
                "another replica named %s is alive at %s: give each replica its own"
                " --replica-name; not ready until its lease runs out",
                self.name,
                current.peer,
            )
            return
        base = current or rules.LeaseRecord(name=name, kind="replica", acquire_time=now)
        self._own = await self.write(
            rules.LeaseRecord(
                name=name,
                kind="replica",
                holder=self.name,
                acquire_time=base.acquire_time if base.holder == self.name else now,
                renew_time=now,
                duration=self.settings.lease_duration,
                transitions=base.transitions,
                version=base.version,
                peer=self.peer_address,
            )
        )
        self.registered.set()

    def _set_leading(self, *, leading: bool) -> None:
        if leading == self.leading:
            return
        if leading:
            log.info("leadership won: %s runs the singletons", self.name)
        else:
            log.warning("leadership lost or given up: %s stops the singletons", self.name)
        if leading:
            self._following.clear()
            self._leading.set()
        else:
            self._leading.clear()
            self._following.set()

    async def _elect(self) -> None:
        await self.registered.wait()  # a replica whose name clashes never leads
        # One read and one write must end before the renew deadline can pass unnoticed: a
        # request hanging for the client's whole timeout (10 s) would keep a cut-off leader
        # leading past it, closer to the moment another may take over. A renew interval, not
        # the deadline: a write hanging until etcd's request timeout (its leader died, 7-10 s)
        # is dropped and tried again at once, so the leader renews as soon as etcd has a
        # leader again instead of missing its own renew deadline.
        step_timeout = self.settings.renew_interval
        while True:
            now = time.time()
            try:
                async with asyncio.timeout(step_timeout):
                    self.election.observe(await self.read(rules.LEADER_LEASE), now)
                    action = self.election.next(time.time())
                    if isinstance(action, rules.Write):
                        started = time.time()
                        try:
                            written = await self.write(action.record)
                        except ConflictError:
                            self.election.failed(time.time(), conflict=True)
                        else:
                            self.election.written(written, started=started)
                        until = time.time() + self.settings.renew_interval
                    else:
                        until = action.until
            except (LeaseApiError, TimeoutError) as error:
                self.election.failed(time.time(), conflict=False)
                log.warning("leader election: the API failed (%s)", str(error) or "timed out")
                if self.metrics is not None:
                    self.metrics.renew_failures.labels("leader").inc()
                timed_out = isinstance(error, TimeoutError)  # that was the wait: again at once
                until = time.time() + (0.0 if timed_out else self.settings.renew_interval)
            self.election.next(time.time())  # applies the renew deadline even while waiting
            self._set_leading(leading=self.election.leading)
            await asyncio.sleep(max(0.0, min(until - time.time(), self.settings.renew_interval)))

    # ------------------------------------------------------------------ agent holders

    def reassert(self) -> None:
        """Claim again every session of ours whose agent Lease names another or no session.

        After an outage: a write lost on the way, or a record decided while this replica could
        not see, is put right; ``claim_wins`` still lets a newer session elsewhere keep it.
        """
        for node, since in self._recorded.items():
            record = self.mirror.agent(node)
            if (
                record is None
                or record.holder != self.name
                or record.acquire_time is None
                or abs(record.acquire_time - since) > rules.TIME_SLACK
            ):
                self.note(node, ("claim", since))

    def note(self, node: str, op: Op) -> None:
        """Want ``op`` written for ``node``: it replaces any change of the node still waiting."""
        self.pending[node] = op
        self._wake.set()

    def scan(self) -> None:
        """Queue the holder changes since the last scan of this process's sessions."""
        current = self._sessions()
        for node, since in current.items():
            if self._recorded.get(node) != since:
                self._recorded[node] = since
                self.note(node, ("claim", since))
        for node in [n for n in self._recorded if n not in current]:
            self.note(node, ("release", self._recorded.pop(node)))

    async def _scan_sessions(self) -> None:
        await self.listed.wait()  # decisions need the mirror
        await self.registered.wait()  # a replica whose name clashes holds nothing
        while True:
            self.scan()
            await asyncio.sleep(self.settings.session_scan_interval)

    async def _take_token(self) -> None:
        rate, burst = self.settings.holder_writes_per_second, self.settings.holder_burst
        while True:
            now = time.monotonic()
            self._tokens = min(float(burst), self._tokens + (now - self._filled_at) * rate)
            self._filled_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / rate)

    async def _write_holders(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            await self._take_token()
            if not self.pending:
                continue  # another writer took it meanwhile
            node = next(iter(self.pending))
            op = self.pending.pop(node)
            try:
                result = await self.write_holder(node, op)
            except LeaseApiError as error:
                result = "failed"
                log.warning("holder of %s not written (%s): trying again", node, error)
                await asyncio.sleep(self.settings.write_retry)
                self.pending.setdefault(node, op)  # unless a newer change came meanwhile
                self._wake.set()
            if self.metrics is not None:
                self.metrics.holder_writes.labels(result).inc()

    async def write_holder(self, node: str, op: Op) -> str:
        """Write one holder change under optimistic concurrency; what came of it."""
        kind, since = op
        current = self.mirror.agent(node)
        for _ in range(CONFLICT_RETRIES):
            if kind == "claim":
                if not rules.claim_wins(
                    current, me=self.name, since=since, live=self.mirror.alive(time.time())
                ):
                    log.info(
                        "holder of %s stays %s (a newer session)", node, current and current.holder
                    )
                    return "lost"
                new: rules.LeaseRecord | None = rules.claim(
                    current, node=node, me=self.name, since=since
                )
            else:
                new = rules.release(current, me=self.name, since=since)
            if new is None:
                return "unchanged"
            try:
                await self.write(new)
            except ConflictError:
                current = await self.read(rules.agent_lease(node))
                continue
            return "written"
        self.note(node, op)  # too busy now: its turn comes again
        return "conflict"

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Give up the leadership and this replica's Lease (a clean shutdown), then the client."""
        try:
            release = self.election.release()
            self._set_leading(leading=False)
            if release is not None:
                with contextlib.suppress(ConflictError, LeaseApiError):
                    await self.write(release.record)
            name = rules.replica_lease(self.name)
            with contextlib.suppress(LeaseApiError):
                await self._call(
                    f"delete lease {name}", self._api().delete(Lease, name, namespace=self._ns)
                )
        finally:
            if self._client is not None:
                await self._client.close()

"""`WatchThread`: a store's Kubernetes watches on a thread of their own, with their own loop.

Shared by the control objects' store (``kubestore.store``) and the fleet objects' store
(``fleet.hub.store_kube``): both keep a mirror fed by list + watch per kind while the server's
loop reads the mirror without ever calling the API. A subclass says which watches to run
(`_watches`) and how one kind is watched; this class starts the thread, waits for the first
lists (a clear error naming the CRDs and the namespace when one never comes), and stops it.

It also keeps the store's ``Reach`` (``kubestore.reach``) honest: a subclass reports its lists
and watch failures (``_listed_ok``, ``_watch_failed``), and while the API is marked unreachable
a probe task asks it one cheap question (``_probe``) every ``probe_interval``, so the store's
writes, which fail at once meanwhile, go through again within a second of its return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable
    from typing import Any

    from lightkube import KubeConfig

    from tunnel_server.kubestore.reach import Reach
    from tunnel_server.kubestore.settings import KubeStoreSettings
    from tunnel_server.store import ApiUnreachableError

__all__ = [
    "UNREACHABLE_STATUSES",
    "WatchThread",
    "call_api",
    "client_timeout",
    "is_unreachable",
]

_T = TypeVar("_T")

UNREACHABLE_STATUSES = frozenset({503, 504})
"""HTTP statuses with which the API server says it cannot serve now (its storage is down)."""


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` of a Kubernetes API call means that the API did not answer."""
    if isinstance(error, ApiError):
        return error.status.code in UNREACHABLE_STATUSES
    return isinstance(error, httpx2.TransportError)


def call_api(
    reach: Reach,
    what: str,
    call: Callable[[], _T],
    *,
    unavailable: type[ApiUnreachableError],
    failed: Callable[[str], Exception],
    conflict: Callable[[str], Exception],
    gone: Callable[[str], Exception],
) -> _T:
    """One synchronous API call of a store, its errors in the store's own types.

    While ``reach`` says the API is down it fails at once (``unavailable``), not after a
    timeout on the event loop; an unanswered call marks it down, any answer marks it up. 409 is
    ``conflict(what)``, 404 ``gone(what)``, any other refusal or failure ``failed(message)``.
    """
    reach.check(what, unavailable)
    try:
        answer = call()
    except ApiError as error:
        if is_unreachable(error):  # 503, 504: the API server cannot serve now
            reach.failed(error)
            raise reach.error(what, unavailable) from error
        reach.answered()
        code = error.status.code
        if code == 409:  # HTTP Conflict
            raise conflict(what) from error
        if code == 404:  # HTTP Not Found
            raise gone(what) from error
        raise failed(f"the Kubernetes API refused to {what}: {error.status.message}") from error
    except httpx2.TransportError as error:
        reach.failed(error)
        raise reach.error(what, unavailable) from error
    except httpx2.HTTPError as error:
        raise failed(f"the Kubernetes API failed to {what}: {error}") from error
    reach.answered()
    return answer


def client_timeout(settings: KubeStoreSettings) -> httpx2.Timeout:
    """A call's timeout: ``request_timeout`` in all, but ``connect_timeout`` to connect."""
    return httpx2.Timeout(settings.request_timeout, connect=settings.connect_timeout)


class WatchThread:
    """Runs `_watches(client)` as named tasks on its own thread until `stop`."""

    def __init__(
        self, *, config: KubeConfig, settings: KubeStoreSettings, name: str, reach: Reach
    ) -> None:
        self._config = config
        self._settings = settings
        self.reach = reach
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def _watches(
        self, client: AsyncClient
    ) -> Iterable[tuple[str, Coroutine[Any, Any, None]]]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _probe(self, client: AsyncClient) -> None:  # pragma: no cover - abstract
        """One cheap request to the API (an answer of any status but 503/504 counts)."""
        raise NotImplementedError

    def _listed_ok(self) -> None:
        self.reach.answered()

    def _watch_failed(self, error: BaseException) -> int:
        """Note a failed list or watch; the level to log it at (debug: the API is known down)."""
        self._failure = error
        if not is_unreachable(error):
            return logging.WARNING
        known = self.reach.down
        self.reach.failed(error)
        return logging.DEBUG if known else logging.WARNING

    async def _probe_while_down(self, client: AsyncClient) -> None:
        while True:
            await asyncio.sleep(self._settings.probe_interval)
            if not self.reach.down:
                continue
            try:
                await self._probe(client)
            except Exception as error:  # noqa: BLE001 - the probe must outlive any failure
                if is_unreachable(error):
                    self.reach.failed(error)
                    continue
                # Any other answer (a 404, a 403) came from the API server: it is back.
            self.reach.answered()

    def _start(self, listed: Iterable[tuple[threading.Event, str]], error: type[Exception]) -> None:
        """Start the thread; raise ``error`` unless every ``(event, resource)`` is set in time."""
        self._thread.start()
        self._started.wait(self._settings.ready_timeout)
        for event, resource in listed:
            if not event.wait(self._settings.ready_timeout):
                detail = f" ({self._failure})" if self._failure else ""
                raise error(
                    f"could not list {resource} in namespace"
                    f" {self._settings.namespace!r} within {self._settings.ready_timeout:g} s"
                    f"{detail}: are the CRDs installed (packaging/kubernetes/tunnel-server/crds)"
                    " and may this identity list them?"
                )

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the watch thread's loop (from any thread); dropped if none runs."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended between the check and now
                loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        loop, main = self._loop, self._main
        if loop is not None and main is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended between the check and now
                loop.call_soon_threadsafe(main.cancel)
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._started.set()
        client = AsyncClient(
            self._config,
            namespace=self._settings.namespace,
            timeout=client_timeout(self._settings),
        )
        try:
            async with asyncio.TaskGroup() as group:
                for name, watch in self._watches(client):
                    group.create_task(watch, name=name)
                group.create_task(self._probe_while_down(client), name=f"{self._thread.name}-probe")
        except asyncio.CancelledError:
            pass  # stop(): the normal end
        finally:
            await client.close()

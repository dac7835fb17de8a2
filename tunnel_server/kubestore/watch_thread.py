"""`WatchThread`: a store's Kubernetes watches on a thread of their own, with their own loop.

Shared by the control objects' store (``kubestore.store``) and the fleet objects' store
(``fleet.hub.store_kube``): both keep a mirror fed by list + watch per kind while the server's
loop reads the mirror without ever calling the API. A subclass says which watches to run
(`_watches`) and how one kind is watched; this class starts the thread, waits for the first
lists (a clear error naming the CRDs and the namespace when one never comes), and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING

from lightkube import AsyncClient

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable
    from typing import Any

    from lightkube import KubeConfig

    from tunnel_server.kubestore.settings import KubeStoreSettings

__all__ = ["WatchThread"]


class WatchThread:
    """Runs `_watches(client)` as named tasks on its own thread until `stop`."""

    def __init__(self, *, config: KubeConfig, settings: KubeStoreSettings, name: str) -> None:
        self._config = config
        self._settings = settings
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def _watches(
        self, client: AsyncClient
    ) -> Iterable[tuple[str, Coroutine[Any, Any, None]]]:  # pragma: no cover - abstract
        raise NotImplementedError

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
        client = AsyncClient(self._config, namespace=self._settings.namespace)
        try:
            async with asyncio.TaskGroup() as group:
                for name, watch in self._watches(client):
                    group.create_task(watch, name=name)
        except asyncio.CancelledError:
            pass  # stop(): the normal end
        finally:
            await client.close()

"""``Informer``'s back-off rules against a scripted server (the faults are the script).

The real API server paths (events, paging, resume, relist) are in
tests/integration/cluster_watch; here a ``MemberApi`` whose answers are scripted shows what a
real server cannot be made to do on demand: answer every watch with 410, or end every watch at
once. Each call records ``informer.backoff`` as it stands, so the assertions are about the
rules (which call, which back-off), never about elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncGenerator
from typing import Any

from edge_agent.cluster.credentials import MemberCredentials, TokenSource
from edge_agent.cluster.member_api import MemberApi, MemberApiError
from edge_agent.cluster.member_watch import Informer, InformerSettings
from edge_agent.cluster.settings import ClusterSettings

SETTINGS = InformerSettings(backoff_initial=0.001, backoff_max=0.004)

GONE = json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410}}).encode()


def added(name: str, rv: str) -> bytes:
    obj = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}
    return json.dumps({"type": "ADDED", "object": obj}).encode()


class ScriptedApi(MemberApi):
    """LIST answers an empty list; each WATCH plays the next script, then the test ends."""

    def __init__(self, watches: list[list[bytes]]) -> None:
        credentials = MemberCredentials(
            server="https://127.0.0.1:1",
            host="127.0.0.1",
            port=1,
            ssl_context=ssl.create_default_context(),
            token=TokenSource(),
        )
        super().__init__(credentials=credentials, settings=ClusterSettings())
        self.watches = watches
        self.calls: list[tuple[str, float]] = []
        self.paths: list[str] = []
        self.informer: Informer | None = None
        self.done = asyncio.Event()

    def _record(self, what: str) -> None:
        assert self.informer is not None
        self.calls.append((what, self.informer.backoff))

    async def get_json(self, path: str) -> Any:
        self.paths.append(path)
        self._record("list")
        return {"metadata": {"resourceVersion": "5"}, "items": []}

    async def stream_lines(
        self,
        path: str,
        *,
        max_line_bytes: int,  # noqa: ARG002 - the script's lines are small
        idle_timeout: float,  # noqa: ARG002 - the script never stalls
    ) -> AsyncGenerator[bytes]:
        self.paths.append(path)
        self._record("watch")
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()  # the test cancels the informer here
        for line in self.watches.pop(0):
            yield line


async def play(watches: list[list[bytes]]) -> ScriptedApi:
    api = ScriptedApi(watches)
    informer = Informer(api, "/api/v1/configmaps", settings=SETTINGS)
    api.informer = informer
    async with asyncio.TaskGroup() as group:
        task = group.create_task(informer.run(), name="informer")
        async with asyncio.timeout(30):
            await api.done.wait()
        task.cancel()
    return api


async def test_a_server_that_answers_every_watch_with_gone_is_not_hammered() -> None:
    calls = (await play([[GONE]] * 5)).calls
    # The first 410 relists at once; each further one in a row doubles the wait, up to the max.
    assert calls == [
        ("list", 0.0),
        ("watch", 0.0),
        ("list", 0.001),
        ("watch", 0.001),
        ("list", 0.002),
        ("watch", 0.002),
        ("list", 0.004),
        ("watch", 0.004),
        ("list", 0.004),
        ("watch", 0.004),
        ("list", 0.004),
        ("watch", 0.004),
    ]


async def test_a_watch_ended_at_once_backs_off_and_an_event_resets_it() -> None:
    api = await play([[], [], [added("a", "6")], [GONE], []])
    assert api.calls == [
        ("list", 0.0),
        ("watch", 0.0),
        # Ended without a line: a failure, retried from the same resourceVersion (no LIST).
        ("watch", 0.002),
        ("watch", 0.004),
        # An event: the back-off starts over; the server's clean end reopens at once.
        ("watch", 0.0),
        # 410 after events: relisted at once.
        ("list", 0.001),
        ("watch", 0.001),
        ("watch", 0.002),
    ]
    versions = [path.split("resourceVersion=")[1].split("&")[0] for path in api.paths[1:5]]
    assert versions == ["5", "5", "5", "6"]


async def test_a_failing_list_is_retried_with_the_back_off() -> None:
    class FailingApi(ScriptedApi):
        failures = 3

        async def get_json(self, path: str) -> Any:
            if self.failures:
                self.failures -= 1
                self._record("list failed")
                raise MemberApiError("HTTP 503", status=503)
            return await super().get_json(path)

    api = FailingApi([])
    informer = Informer(api, "/api/v1/configmaps", settings=SETTINGS)
    api.informer = informer
    async with asyncio.TaskGroup() as group:
        task = group.create_task(informer.run(), name="informer")
        async with asyncio.timeout(30):
            await api.done.wait()
        task.cancel()
    assert api.calls == [
        ("list failed", 0.0),
        ("list failed", 0.002),
        ("list failed", 0.004),
        ("list", 0.004),
        ("watch", 0.004),
    ]
    assert informer.synced.is_set()
    assert "HTTP 503" in informer.last_error

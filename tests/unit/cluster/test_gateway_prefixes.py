"""``TunnelClient.builtin_prefixes``: a family of targets served by one part of the agent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import prometheus_client

from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from tunnel_aio import TunnelStream
from tunnel_protocol import ErrorCode


class _Stream:
    """What ``_on_stream`` uses of a stream before it is handed on: its target, reject."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.rejected: tuple[ErrorCode, str] | None = None

    def reject(self, code: ErrorCode, text: str) -> None:
        self.rejected = (code, text)


def _client(tmp_path: Path) -> TunnelClient:
    return TunnelClient(
        data_dir=tmp_path,
        settings=TunnelClientSettings(targets={"web": ("127.0.0.1", 1)}),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )


async def test_the_longest_matching_prefix_serves_and_exact_names_win(tmp_path: Path) -> None:
    client = _client(tmp_path)
    served: list[tuple[str, str]] = []

    def handler(name: str) -> Callable[[TunnelStream], Awaitable[None]]:
        async def serve(stream: TunnelStream) -> None:
            served.append((name, stream.target))

        return serve

    client.builtin_prefixes["service/"] = handler("service")
    client.builtin_prefixes["service/kube-system/"] = handler("system")
    client.builtin_targets["service/exact"] = handler("exact")
    for target in ("service/demo/web:80", "service/kube-system/dns:53", "service/exact"):
        await client._on_stream(cast("TunnelStream", _Stream(target)))
    assert served == [
        ("service", "service/demo/web:80"),
        ("system", "service/kube-system/dns:53"),
        ("exact", "service/exact"),
    ]
    assert client.status()["targets"] == [
        "service/*",
        "service/exact",
        "service/kube-system/*",
        "web",
    ]


async def test_names_under_no_prefix_still_meet_the_allow_list(tmp_path: Path) -> None:
    client = _client(tmp_path)

    async def never(stream: TunnelStream) -> None:
        raise AssertionError(stream.target)

    client.builtin_prefixes["service/"] = never
    for target in ("services/demo/web:80", "servic", "other"):
        stream = _Stream(target)
        await client._on_stream(cast("TunnelStream", stream))
        assert stream.rejected is not None
        assert stream.rejected[0] is ErrorCode.TARGET_NOT_ALLOWED
        assert "[tunnel.targets]" in stream.rejected[1]

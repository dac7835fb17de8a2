"""Small request bodies held for retries and mirrors (``replay.py``).

The plan, the buffer, and the adapter the data path reads, on aiohttp's own ``StreamReader``
(over a real socket pair) fed as its parser feeds it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from hypothesis import given
from hypothesis import strategies as st

from tunnel_server.fleet.gateway.replay import (
    DEFAULT_BODY_LIMIT,
    BodyBuffer,
    BodyState,
    Plan,
    ReplayBody,
    ReplayError,
    may_retry,
    plan,
)

KIB = 1024
chunks = st.lists(st.binary(max_size=300), max_size=30)


def _plan(**changes: object) -> Plan:
    args: dict[str, object] = {
        "method": "PUT",
        "has_body": True,
        "content_length": 10,
        "upgrade": False,
        "backends": 2,
        "mirrors": 0,
        "limit": DEFAULT_BODY_LIMIT,
    }
    args.update(changes)
    return plan(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "hold"),
    [
        ({}, True),  # PUT with a small body and a backend to retry on
        ({"method": "delete"}, True),
        ({"content_length": None}, True),  # chunked: read until it ends or passes the limit
        ({"content_length": DEFAULT_BODY_LIMIT}, True),  # the limit itself is held
        ({"method": "POST"}, False),  # never retried once sent: nothing gained
        ({"method": "PATCH"}, False),
        ({"backends": 1}, False),  # no other backend to retry on
        ({"method": "POST", "mirrors": 1}, True),  # a mirror copy needs the body
        ({"backends": 1, "mirrors": 2}, True),
        ({"has_body": False, "mirrors": 1}, False),  # nothing to hold
        ({"upgrade": True, "mirrors": 1}, False),
        ({"limit": 0, "mirrors": 1}, False),  # holding turned off
    ],
)
def test_plan_holds_only_what_a_retry_or_a_mirror_can_use(
    *, changes: dict[str, object], hold: bool
) -> None:
    assert _plan(**changes) == Plan(hold=hold)


def test_an_announced_body_over_the_limit_is_never_read_ahead() -> None:
    assert _plan(content_length=DEFAULT_BODY_LIMIT + 1) == Plan(hold=False, too_large=True)
    assert _plan(content_length=DEFAULT_BODY_LIMIT + 1, mirrors=1).too_large
    # Not useful anyway: no need to say it is too large.
    assert _plan(method="POST", content_length=10**9) == Plan(hold=False)


@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "POST", "PATCH", "HEAD", "OPTIONS"]),
    has_body=st.booleans(),
    content_length=st.none() | st.integers(0, 10**9),
    upgrade=st.booleans(),
    backends=st.integers(0, 6),
    mirrors=st.integers(0, 4),
    limit=st.integers(0, 10**6),
)
def test_plan_never_holds_more_than_the_limit_or_without_a_use(
    *,
    method: str,
    has_body: bool,
    content_length: int | None,
    upgrade: bool,
    backends: int,
    mirrors: int,
    limit: int,
) -> None:
    decided = plan(
        method=method,
        has_body=has_body,
        content_length=content_length,
        upgrade=upgrade,
        backends=backends,
        mirrors=mirrors,
        limit=limit,
    )
    if decided.hold:
        assert has_body
        assert not upgrade
        assert limit > 0
        assert content_length is None or content_length <= limit
        assert mirrors > 0 or (
            method in {"GET", "PUT", "DELETE", "HEAD", "OPTIONS"} and backends > 1
        )
    assert not (decided.hold and decided.too_large)


def test_may_retry_needs_an_idempotent_method_and_a_body_held_whole() -> None:
    assert may_retry("GET", has_body=False, held=False)
    assert may_retry("PUT", has_body=True, held=True)
    assert not may_retry("PUT", has_body=True, held=False)  # streamed once, gone
    assert not may_retry("POST", has_body=True, held=True)  # never idempotent
    assert not may_retry("POST", has_body=False, held=False)


@given(parts=chunks, limit=st.integers(0, 4 * KIB))
def test_the_buffer_holds_a_body_within_the_limit_and_says_over_past_it(
    parts: list[bytes], limit: int
) -> None:
    buffer = BodyBuffer(limit=limit)
    fed: list[bytes] = []
    for part in parts:
        if buffer.state is not BodyState.FILLING:
            break
        buffer.feed(part)
        fed.append(part)
    buffer.end()
    total = b"".join(parts)
    held = b"".join(buffer.held)
    assert held == b"".join(fed)  # in order, nothing lost
    if len(total) <= limit:
        assert buffer.state is BodyState.COMPLETE
        assert buffer.body() == total
    else:
        assert buffer.state is BodyState.OVER
        assert total.startswith(held)
        # Bounded: the limit plus the one chunk that passed it.
        assert limit < buffer.size <= limit + max(len(p) for p in parts)
        with pytest.raises(ReplayError):
            buffer.body()
    assert buffer.size == len(held)
    assert all(buffer.held)  # empty chunks are not kept


def test_a_buffer_stopped_early_is_cut_and_takes_no_more() -> None:
    buffer = BodyBuffer(limit=100)
    buffer.feed(b"abc")
    buffer.stop()
    buffer.end()  # too late: it stays cut
    assert buffer.state is BodyState.CUT
    with pytest.raises(ReplayError):
        buffer.feed(b"d")
    with pytest.raises(ValueError, match="limit"):
        BodyBuffer(limit=-1)


# ---------------------------------------------------------------------------- the adapter


@pytest.fixture
async def protocol() -> AsyncIterator[BaseProtocol]:
    """A protocol on a real, connected transport (aiohttp's reader waits only while connected)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    made = BaseProtocol(loop)
    transport, _ = await loop.connect_accepted_socket(lambda: made, ours)
    yield made
    transport.close()
    theirs.close()


def _reader(protocol: BaseProtocol) -> StreamReader:
    return StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())


def _body(inner: StreamReader, limit: int, protocol: BaseProtocol) -> ReplayBody:
    return ReplayBody(inner, limit=limit, protocol=protocol, loop=asyncio.get_running_loop())


async def _drain(body: ReplayBody) -> bytes:
    return b"".join([chunk async for chunk in body.iter_any()])


async def test_a_small_body_is_held_and_read_whole_on_every_pass(protocol: BaseProtocol) -> None:
    inner = _reader(protocol)
    for part in (b"one,", b"two,", b"three"):
        inner.feed_data(part)
    inner.feed_eof()
    body = _body(inner, 64, protocol)
    assert await body.fill(within=5)
    assert body.held
    for _ in range(3):  # the first attempt and two retries
        body.rewind()
        assert not body.is_eof()
        assert await _drain(body) == b"one,two,three"
        assert body.is_eof()
    assert body.body() == b"one,two,three"


async def test_a_body_over_the_limit_streams_once_with_its_held_part_first(
    protocol: BaseProtocol,
) -> None:
    inner = _reader(protocol)
    inner.feed_data(b"x" * 40)
    inner.feed_data(b"y" * 40)
    body = _body(inner, 50, protocol)

    async def rest() -> None:
        await asyncio.sleep(0)
        inner.feed_data(b"z" * 10)
        inner.feed_eof()

    assert not await body.fill(within=5)
    assert not body.held
    async with asyncio.TaskGroup() as group:
        group.create_task(rest(), name="test.rest")
        body.rewind()  # nothing read yet: allowed
        got = await _drain(body)
    assert got == b"x" * 40 + b"y" * 40 + b"z" * 10
    with pytest.raises(ReplayError):
        body.rewind()
    with pytest.raises(ReplayError):
        body.body()


async def test_a_slow_client_is_not_waited_for_past_the_time_allowed(
    protocol: BaseProtocol,
) -> None:
    inner = _reader(protocol)
    inner.feed_data(b"part")
    body = _body(inner, 1024, protocol)
    assert not await body.fill(within=0.05)  # the rest never comes in time
    inner.feed_data(b"-rest")
    inner.feed_eof()
    assert await _drain(body) == b"part-rest"  # nothing lost: streamed as without holding


async def test_a_read_error_is_raised_where_the_data_path_reads_past_the_held_part(
    protocol: BaseProtocol,
) -> None:
    inner = _reader(protocol)
    inner.feed_data(b"good")
    body = _body(inner, 1024, protocol)

    async def fail() -> None:
        await asyncio.sleep(0)
        inner.set_exception(HttpProcessingError(message="bad chunked encoding"))

    async with asyncio.TaskGroup() as group:
        group.create_task(fail(), name="test.fail")
        assert not await body.fill(within=5)
    assert await body.readany() == b"good"
    with pytest.raises(HttpProcessingError, match="bad chunked"):
        await body.readany()


async def test_before_fill_reads_pass_straight_through(protocol: BaseProtocol) -> None:
    inner = _reader(protocol)
    inner.feed_data(b"streamed")
    inner.feed_eof()
    body = _body(inner, 1024, protocol)
    body.rewind()  # nothing read: a no-op
    assert await _drain(body) == b"streamed"
    assert not body.held
    with pytest.raises(ReplayError):
        body.body()
    with pytest.raises(ReplayError):
        body.rewind()  # read without holding: once only


async def test_fill_is_once_only(protocol: BaseProtocol) -> None:
    inner = _reader(protocol)
    inner.feed_eof()
    body = _body(inner, 10, protocol)
    assert await body.fill(within=1)  # an empty chunked body is held (as b"")
    assert body.body() == b""
    with pytest.raises(ReplayError):
        await body.fill(within=1)

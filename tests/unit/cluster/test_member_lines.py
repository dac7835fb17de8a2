"""``MemberApi.stream_lines``' splitter: lines across any chunking, each line bounded.

Fed through aiohttp's own ``StreamReader`` (what a response's ``content`` is), in chunks cut
anywhere, so a line split over reads and several lines in one read are both covered.
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
from aiohttp.base_protocol import BaseProtocol
from hypothesis import example, given
from hypothesis import strategies as st

from edge_agent.cluster.member_api import LineTooLongError, _lines

MAX = 16


async def split(chunks: list[bytes], max_line_bytes: int = MAX) -> tuple[list[bytes], bool]:
    """The lines read from ``chunks`` and whether the bound stopped the reading."""
    loop = asyncio.get_running_loop()
    content = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    for chunk in chunks:
        content.feed_data(chunk)
    content.feed_eof()
    seen: list[bytes] = []
    try:
        async for line in _lines(content, max_line_bytes, "/watch"):
            seen.append(line)  # noqa: PERF401 - keeps the lines read before the refusal
    except LineTooLongError:
        return seen, True
    return seen, False


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(
    lines=st.lists(st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"")), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
@example(lines=[b"a", b"", b" \r", b"b"], cuts=[2])  # blank lines (keep-alives) are skipped
def test_any_chunking_gives_the_lines_until_one_is_too_long(
    lines: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(line + b"\n" for line in lines)
    seen, stopped = asyncio.run(split(chunked(data, cuts)))
    long_at = next((i for i, line in enumerate(lines) if len(line) > MAX), None)
    good = lines if long_at is None else lines[:long_at]
    assert seen == [line for line in good if line.strip()]
    assert stopped == (long_at is not None)


async def test_a_line_cut_off_by_the_end_is_dropped() -> None:
    assert await split([b'{"a":1}\n{"b"']) == ([b'{"a":1}'], False)


async def test_a_line_of_exactly_the_bound_passes_one_more_byte_does_not() -> None:
    assert await split([b"x" * MAX + b"\n"]) == ([b"x" * MAX], False)
    assert await split([b"x" * (MAX + 1) + b"\n"]) == ([], True)
    # Unterminated and over the bound: refused without waiting for the newline.
    assert await split([b"x" * (MAX + 1)]) == ([], True)

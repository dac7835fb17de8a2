"""The one waiting helper: done once the condition holds, else it names what and the last value."""

from __future__ import annotations

import itertools

import pytest

from tests.harness.waiting import NotSeen, eventually, eventually_async


def test_returns_the_first_value_that_passes_the_check() -> None:
    counter = itertools.count()
    assert eventually(lambda: next(counter), lambda n: n >= 3, what="three", every=0) == 3


def test_fails_naming_what_was_awaited_and_the_last_value() -> None:
    with pytest.raises(
        NotSeen, match=r"node edge-a online: not seen within 0.05 s; last value: 'offline'"
    ):
        eventually(
            lambda: "offline", lambda s: s == "online", what="node edge-a online", within=0.05
        )


def test_ignored_errors_mean_not_yet_and_show_in_the_failure() -> None:
    def refuse() -> int:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(NotSeen, match=r"no value; the last probe raised ConnectionRefusedError"):
        eventually(refuse, what="a listener", within=0.05, ignore=(OSError,))


def test_other_errors_end_the_wait_at_once() -> None:
    def crash() -> int:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        eventually(crash, what="a crash is not a timeout", within=60)


async def test_the_async_flavour_awaits_the_probe() -> None:
    counter = itertools.count()

    async def probe() -> int:
        return next(counter)

    assert await eventually_async(probe, lambda n: n == 2, what="two", every=0) == 2
    with pytest.raises(NotSeen, match="never: not seen"):
        await eventually_async(probe, lambda _: False, what="never", within=0.05)

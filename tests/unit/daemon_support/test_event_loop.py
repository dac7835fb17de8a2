"""``daemon_support.event_loop``: the daemons' loop choice, from the environment."""

from __future__ import annotations

import asyncio
import importlib

import pytest
import uvloop

from daemon_support import event_loop


async def _loop_class() -> type:
    return type(asyncio.get_running_loop())


def test_asyncio_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.run(_loop_class()) is not uvloop.Loop
    assert issubclass(event_loop.run(_loop_class()), asyncio.BaseEventLoop)


@pytest.mark.parametrize("value", ["uvloop", "auto", " UVLOOP "])
def test_the_environment_picks_uvloop(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(event_loop.ENV, value)
    assert event_loop.run(_loop_class()) is uvloop.Loop


def test_asyncio_asked_for_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert event_loop.run(_loop_class(), default="uvloop") is not uvloop.Loop


def test_an_unknown_loop_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "trio")
    ran = False

    async def main() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(event_loop.EventLoopError, match="trio"):
        event_loop.run(main())  # closed unawaited: no RuntimeWarning (warnings are errors)
    assert not ran


def test_uvloop_missing_is_an_error_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_uvloop(name: str) -> object:
        if name == "uvloop":
            raise ImportError(name)
        return real_import(name)

    monkeypatch.setattr(importlib, "import_module", no_uvloop)
    assert event_loop.loop_factory("auto")[0] == "asyncio"
    with pytest.raises(event_loop.EventLoopError, match="not installed"):
        event_loop.loop_factory("uvloop")

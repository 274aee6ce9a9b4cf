"""The event loop a daemon (or a benchmark) runs on: asyncio's own, or uvloop's
(`daemon.event_loop: uvloop`). uvloop's loop is written in C (libuv): fewer Python calls per
socket wake-up, read and write. Everything else is the same code on either loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bitcoind_paychan.errors import ConfigError

Result = TypeVar("Result")
EVENT_LOOPS = ("asyncio", "uvloop")
DEFAULT_EVENT_LOOP = "asyncio"


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory for "uvloop" (ConfigError saying what to install if it is
    missing); None (asyncio's default loop) for "asyncio"."""
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"daemon.event_loop: found {event_loop!r}, expected one of "
                          f"{', '.join(EVENT_LOOPS)}")
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError("daemon.event_loop is uvloop, but uvloop is not installed: install "
                          "it (`pip install uvloop`; `make install` does) or set "
                          "daemon.event_loop: asyncio") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, Result], event_loop: str = DEFAULT_EVENT_LOOP) -> Result:
    """`asyncio.run(main)` on the event loop named (one of EVENT_LOOPS)."""
    try:
        factory = loop_factory(event_loop)
    except ConfigError:
        main.close()  # never awaited: no warning about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def event_loop_name() -> str:
    """Which of EVENT_LOOPS the running loop is."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"

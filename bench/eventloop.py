"""The benchmarks' event loop: asyncio's, or uvloop's (--uvloop; in the dev extras). uvloop's
loop is written in C (libuv): fewer Python calls per socket wake-up, read and write."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

Result = TypeVar("Result")


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if `use_uvloop` (ImportError with what to install if it is not
    installed); None for asyncio's default loop."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        raise ImportError("uvloop is not installed; install it with `pip install uvloop` "
                          "(`make install` does), or leave out --uvloop") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, Result], use_uvloop: bool = False) -> Result:
    """`asyncio.run(main)`, on uvloop if `use_uvloop`."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)

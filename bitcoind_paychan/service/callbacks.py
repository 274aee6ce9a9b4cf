"""The application's callbacks (`on_payment`, `on_event`), isolated from the library: an
exception in one is logged with its traceback and counted, never raised into the manager, so
a payment is still acknowledged and the autopilot's review goes on."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
E = TypeVar("E")
R = TypeVar("R")


class Callbacks:
    """Calls the application's callbacks; `errors` counts those that raised (a manager
    exposes it as `callback_errors`; the daemon as a metric)."""

    def __init__(self) -> None:
        self.errors = 0
        self.on_error: Callable[[], None] | None = None  # e.g. a metric's inc

    def event(self, callback: Callable[[E], object] | None, event: E) -> None:
        """Tell the application about `event` (nothing if it gave no callback)."""
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            self._failed(callback, event)

    async def answer(self, callback: Callable[[E], R | Awaitable[R]] | None, event: E
                     ) -> R | None:
        """What the application answers to `event` (awaited if it is a coroutine); None if
        it gave no callback or it raised."""
        if callback is None:
            return None
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                return await result
            return result
        except Exception:
            self._failed(callback, event)
            return None

    def _failed(self, callback: Callable[..., object], event: object) -> None:
        self.errors += 1
        name = getattr(callback, "__qualname__", repr(callback))
        log.exception("the application's callback %s raised on %s (ignored: the channel goes "
                      "on as if it had returned nothing)", name, type(event).__name__)
        if self.on_error is not None:
            try:
                self.on_error()
            except Exception:
                log.exception("the callback error hook raised")

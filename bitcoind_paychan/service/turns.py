"""OpenTurns: one open (or resume) of a client channel at a time per peer, so two callers
never fund two channels to one server nor take each other's connection."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class OpenTurns:
    """One open (or resume) at a time per peer: a second caller waits for the first's, then
    finds its channel live. `waiting(peer)`: how many calls wait for their turn now."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: collections.Counter[str] = collections.Counter()

    def waiting(self, peer: str) -> int:
        return self._waiting[peer]

    @contextlib.asynccontextmanager
    async def turn(self, peer: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(peer, asyncio.Lock())
        self._waiting[peer] += 1
        try:
            await lock.acquire()
        finally:
            self._waiting[peer] -= 1
        try:
            yield
        finally:
            lock.release()
            if not lock.locked() and not self._waiting[peer]:
                self._locks.pop(peer, None)
                del self._waiting[peer]

"""The autopilot's duties when instances share a store: a heartbeat, and each
settlement or broadcast claimed first, so one instance does it (a mixin of ChainWatcher)."""

from __future__ import annotations

import asyncio
import logging

from bitcoind_paychan.errors import PaychanError
from bitcoind_paychan.store.leases import Leases

# The "watcher" subsystem's lines (daemon/logs.py), as before the watcher had its package.
log = logging.getLogger("bitcoind_paychan.service.watcher")


class ClusterDuties:
    """Claims the watcher's duties (always granted without leases)."""

    leases: Leases | None

    async def _heartbeat(self) -> None:
        assert self.leases is not None
        try:
            await asyncio.to_thread(self.leases.heartbeat)
        except PaychanError as exc:
            log.warning("heartbeat failed (%s): other instances take this one's duties over "
                        "if it stays silent", exc)

    async def _claim(self, duty: str, hold: float | None = None) -> bool:
        """Whether this instance does `duty` now (always, without leases)."""
        if self.leases is None:
            return True
        if await asyncio.to_thread(self.leases.claim, duty, hold):
            return True
        log.debug("%s: another instance is doing it", duty)
        return False

    async def _finish(self, duty: str) -> None:
        if self.leases is not None:
            await asyncio.to_thread(self.leases.finish, duty)

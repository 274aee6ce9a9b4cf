"""The daemon's "can this process settle and refund right now", kept fresh.

`SettleHealth.check()` probes the node (in a worker thread) and evaluates the answer
(`node/health.py`: the rules live there); `run()` does so every INTERVAL seconds, which also
loads a wallet bitcoind restarted without. The last answer is what the metrics and the
dashboard show (they make no RPC call); `getinfo` checks afresh. A change is logged: a warning
when settling becomes impossible (with the reason), a line when it is possible again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from bitcoind_paychan.node.bitcoind import Bitcoind
from bitcoind_paychan.node.health import Readiness, probe_node, settle_readiness
from bitcoind_paychan.service.watcher import ChannelView

log = logging.getLogger(__name__)

INTERVAL = 10.0  # seconds between two probes
UNSETTLED = ("open", "closing")


def oldest_contract_height(views: Iterable[ChannelView], tip: int) -> int | None:
    """The lowest block holding the contract of a channel whose money is not settled."""
    heights = [tip - v.contract_confirmations + 1 for v in views
               if v.status in UNSETTLED and v.contract_confirmations > 0]
    return min(heights, default=None)


class SettleHealth:
    """The last readiness of the daemon (None before the first check)."""

    def __init__(self, node: Bitcoind, views: Callable[[], list[ChannelView]],
                 on_change: Callable[[Readiness], None] | None = None,
                 interval: float = INTERVAL) -> None:
        self.node = node
        self.views = views
        self.on_change = on_change
        self.interval = interval
        self.last: Readiness | None = None

    async def check(self) -> Readiness:
        """Probe the node now and evaluate; the answer becomes `last`."""
        probe = await asyncio.to_thread(probe_node, self.node)
        oldest = None
        if probe.prune_height is not None and probe.height is not None:  # only then it matters
            oldest = oldest_contract_height(self.views(), probe.height)
        readiness = settle_readiness(probe, oldest)
        previous, self.last = self.last, readiness
        if previous is None or previous.reason != readiness.reason:
            if readiness.can_settle:
                log.info("can settle and refund: %s", readiness.detail)
            else:
                log.warning("CANNOT settle or refund (%s): %s", readiness.reason.value,
                            readiness.detail)
            if self.on_change is not None:
                self.on_change(readiness)
        return readiness

    async def run(self) -> None:
        """Check every `interval` seconds until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not stop the checks
                log.exception("checking whether the daemon can settle failed")
            await asyncio.sleep(self.interval)

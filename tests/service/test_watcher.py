"""The autopilot's work per block follows the live channels, not the dead rows in the store."""

from __future__ import annotations

import asyncio
import time

from regtest.stranger import failed_row
from tests.service.conftest import FAST, Sides, until

LEGACY_ROWS = 100


def test_dead_rows_are_not_reviewed_per_block_and_never_funded_rows_are_pruned(
        sides: Sides) -> None:
    """An older server kept a FAILED row per stranger's fake contract, loaded, parsed and
    reviewed at every block. Now blocks touch only live channels, and a row whose coins do
    not exist is discarded once that is `forget_depth` blocks old."""
    async def scenario() -> tuple[list[int], list[int], int, list[str], str]:
        server = sides.server(review_interval=3600)  # reviews only at start and per block
        expiry = int(time.time()) + 86_400
        for _ in range(LEGACY_ROWS):
            server.store.put(failed_row(expiry))
        host, port = await server.listen()
        channel = await sides.client().open(host, port, 500_000)
        per_block, reviewed = [], []
        for _ in range(FAST.forget_depth + 1):
            reviews = server.watcher.reviews
            await asyncio.to_thread(sides.mine)
            await until(lambda seen=reviews: server.watcher.reviews > seen,  # type: ignore[misc]
                        what="the block's review")
            per_block.append(server.watcher.block_channels)
            reviewed.append(server.watcher.reviewed_channels)
            await channel.pay(1_000)
        before_review = len(server.store.channels())
        await server.watcher.review_all()  # the periodic review
        stored = [r.contract_txid for r in server.store.channels()]
        await server.stop()
        return per_block, reviewed, before_review, stored, channel.contract_txid

    per_block, reviewed, before_review, stored, honest = asyncio.run(scenario())
    # The first block confirms the honest contract; the later ones touch no channel, so
    # nothing is loaded for them (work follows what the block changed). A review never looks
    # at the dead rows (one may still look at the honest channel: it was touched or is new).
    assert per_block == [1] + [0] * FAST.forget_depth
    assert max(reviewed) <= 1
    assert before_review == LEGACY_ROWS + 1
    assert stored == [honest]

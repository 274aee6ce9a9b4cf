"""Regtest-only help: get a version 1 contract on chain past a Knots node's policy."""

from __future__ import annotations

import logging

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.errors import TransactionRejected
from bitcoind_paychan.node.bitcoind import Acceptance, AsyncBitcoind, Bitcoind
from bitcoind_paychan.node.ports import Broadcaster, Miner, NodePorts

log = logging.getLogger(__name__)


class MiningBroadcaster:
    """A broadcaster wrapping another: a transaction the mempool refuses for having a bare
    multisig output (Knots' policy) is mined directly by `miner` instead (in a block of its
    own). For regtest demos and tests of channel version 1 only."""

    def __init__(self, broadcaster: Broadcaster, miner: Miner) -> None:
        self.broadcaster = broadcaster
        self.miner = miner
        self.mined: list[str] = []

    async def test_accept(self, tx: Transaction) -> Acceptance:
        return await self.broadcaster.test_accept(tx)

    async def check_acceptable(self, tx: Transaction) -> Acceptance:
        try:
            return await self.broadcaster.check_acceptable(tx)
        except TransactionRejected as exc:
            if not _bare_multisig(exc):
                raise
            return Acceptance(True, exc.reason)  # `broadcast` will mine it

    async def broadcast(self, tx: Transaction) -> str:
        try:
            return await self.broadcaster.broadcast(tx)
        except TransactionRejected as exc:
            if not _bare_multisig(exc):
                raise
            if await self.miner.mine(tx):
                log.info("node refused bare multisig %s (%s); mined it directly (regtest)",
                         tx.txid_hex, exc.reason)
                self.mined.append(tx.txid_hex)
            return tx.txid_hex


def regtest_ports(node: Bitcoind | AsyncBitcoind) -> NodePorts:
    """A regtest node's ports, its broadcaster a `MiningBroadcaster` over it."""
    full = AsyncBitcoind(node) if isinstance(node, Bitcoind) else node
    return NodePorts.of(full, broadcaster=MiningBroadcaster(full, full))


def _bare_multisig(exc: TransactionRejected) -> bool:
    return "bare multisig" in str(exc) or "vout-script" in exc.reason

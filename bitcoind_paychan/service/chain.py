"""What the services need from the chain and the wallet (LDK-style interfaces).

`AsyncBitcoind` provides all of it; `regtest.harness` wraps it where a test must reach past a
node's policy (a Knots node will not relay version 1's bare multisig contract).
"""

from __future__ import annotations

from typing import Protocol

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.node.bitcoind import FundedTx


class Broadcaster(Protocol):
    async def broadcast(self, tx: Transaction) -> str: ...


class FeeEstimator(Protocol):
    async def fee_rate(self, target_blocks: int = 6, floor: int = 1000) -> int: ...


class ServerWallet(Broadcaster, FeeEstimator, Protocol):
    """The server's node: broadcasts contracts and settlements, pays out to its wallet."""

    async def payout_script(self) -> bytes: ...

    async def fund_external(self, draft: Transaction, input_weights: dict[tuple[str, int], int],
                            fee_rate: int) -> Transaction: ...


class ClientWallet(Broadcaster, FeeEstimator, Protocol):
    """The client's node: funds contracts, watches channel keys, finds settlements."""

    async def fund(self, script_pubkey: bytes, amount: int, fee_rate: int | None = None,
                   version: int = 2) -> FundedTx: ...

    async def release(self, inputs: tuple[tuple[str, int], ...]) -> None: ...

    async def spender(self, txid: str, index: int) -> Transaction | None: ...

    async def watch_key(self, secret_wif: str, script_types: tuple[str, ...] = ...) -> None: ...

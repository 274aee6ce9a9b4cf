"""What the chain says about one channel, kept apart from the payment state.

The connection's state machine owns ChannelRecord (payments, status); the chain watcher owns
this, so neither overwrites the other's fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChainState:
    contract_height: int = 0   # block height of the contract; 0 while unconfirmed or unseen
    spender: bytes = b""       # the transaction seen spending contract:0 (raw bytes), if any
    spender_height: int = 0    # its block height; 0 while unconfirmed
    conflict_height: int = 0   # height of a block that spent an input of the never-confirmed
    #                            contract
    broadcast_height: int = 0  # tip height when we last broadcast our own closing transaction
    fee_rate: int = 0          # sat/kvB of our own latest closing transaction (0: none)

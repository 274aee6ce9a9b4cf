"""ChannelView: one channel as applications, the CLI and the dashboard see it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelView:
    """One channel's state, deadline (server: when it settles; client: from when its refund
    is valid), txids and confirmations, for applications and the CLI."""

    role: str
    contract_txid: str
    version: int
    status: str
    value: int
    paid: int
    change: int
    payments: int
    peer: str
    expiry: int
    deadline: int
    contract_confirmations: int
    closing_txid: str | None
    closing_confirmations: int
    channel_id: str = ""  # generation 0's contract txid: the channel's identity for life
    generation: int = 0  # re-anchors confirmed before the current contract
    reanchor_txid: str | None = None  # a re-anchor in flight (issue 23): R's txid
    reanchor_state: str = ""  # signed (by the client), complete (both), refused

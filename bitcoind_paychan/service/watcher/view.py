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

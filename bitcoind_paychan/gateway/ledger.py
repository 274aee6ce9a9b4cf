"""Ledger: takes of credit decided in memory, for a store this process owns alone.

When no other instance writes the store (SQLite, memory: store.base.shared), the gateway
need not wait for the store to decide a take: it knows a lower bound of each channel's
credit and decides at once, then makes the take durable (exactly that many sat) and releases
what the request bought only once it is. Deciding against a lower bound never spends credit
that is not there, so a request is still never forwarded unpaid.

The bound, per channel: the credit left that the store answered last, less the takes decided
here since, which are queued behind that answer on the one thread that commits takes, in
order. Payments raise the credit without lowering the bound, so they show at the next answer.
A take the store decides itself (of all the credit, or when the bound falls short) and a take
made with a payment (on the payment writer's thread, in no order with the takes' thread)
leave the bound unknown until every such take is answered; the lowest credit left answered
meanwhile is then the bound (each answer's credit was there at its commit, and since then
only takes answered in that time lowered it). A take made with a payment is only started when
no take decided here is waiting for its commit, so it never spends their sat.

Sans-IO: the gateway's Credit (credit.py) calls it on its event loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Account:
    """One channel's bound: `left` (None: unknown) less the takes decided since (`pending`)."""

    left: int | None = None  # the credit left at the last answer, in the commits' order
    pending: deque[int] = field(default_factory=deque)  # decided here, not yet answered
    deciding: int = 0  # takes the store decides, not yet answered
    lowest: int | None = None  # the lowest credit left answered while `deciding`
    stale: bool = False  # a refusal came while `deciding`: unknown after it too


class Ledger:
    """Lower bounds of channels' credit, and the takes decided against them."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}

    def bound(self, channel: str) -> int | None:
        """The channel's credit is at least this (None: unknown, the store must decide)."""
        account = self._accounts.get(channel)
        if account is None or account.left is None or account.deciding:
            return None
        return account.left - sum(account.pending)

    def decide(self, channel: str, sat: int) -> bool:
        """Take `sat` now if the bound covers it (True): its durable take must be queued
        behind every take queued before, and answered through `answered(decided=True)`."""
        bound = self.bound(channel)
        if bound is None or bound < sat or sat <= 0:
            return False
        account = self._accounts[channel]
        account.pending.append(sat)
        return True

    def may_ride(self, channel: str) -> bool:
        """May a take ride with a payment (no take decided here waits for its commit)?"""
        account = self._accounts.get(channel)
        return account is None or not account.pending

    def store_decides(self, channel: str) -> None:
        """A take the store decides was started (queued, or riding with a payment)."""
        self._accounts.setdefault(channel, _Account()).deciding += 1

    def answered(self, channel: str, left: int | None, *, decided: bool,
                 refused: bool = False) -> None:
        """A take's commit answered: `left` the credit left after it (None: it failed and
        took nothing); `decided`: it was decided here; `refused`: the store found less
        credit than it was decided against (the bound was wrong: unknown until the store
        answers again)."""
        account = self._accounts.get(channel)
        if account is None:  # forgotten meanwhile
            return
        if decided:
            if account.pending:
                account.pending.popleft()
        else:
            account.deciding = max(account.deciding - 1, 0)
        if refused:  # the bound was wrong: unknown until a take the store decides after
            account.left = account.lowest = None
            account.stale = account.deciding > 0
            return
        if account.deciding or not decided:  # while, or as, what the store decided ends
            if left is not None:
                account.lowest = left if account.lowest is None else min(account.lowest,
                                                                         left)
            if not account.deciding:
                account.left = None if account.stale else account.lowest
                account.lowest, account.stale = None, False
        elif left is not None:
            account.left = left

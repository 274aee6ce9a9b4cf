"""Payments over the last hour, by minute and role, and the live rate, for the dashboard.

    activity = Activity()
    activity.rebuild("server", store.payments_per_second(Role.SERVER, now - 3600))  # at start
    activity.record(amount, received=True)    # on each payment (cheap: the hot path)
    activity.series(time.time())              # per role: 60 one-minute buckets, oldest first,
                                              # the live rate (last LIVE seconds) and the hour's

Each role counts apart: a daemon paying its own server receives (server) and makes (client)
each payment, and says so once for each.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

MINUTES = 60
LIVE = 10  # seconds the live rate is measured over (the last whole ones)
ROLES = ("server", "client")


class _Ring:
    """Counts and amounts per slot (a minute or a second), for the last `size` slots."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = [0] * size
        self.amount = [0] * size
        self.slot = [-1] * size  # which slot number each place holds

    def add(self, slot: int, count: int, amount: int) -> None:
        place = slot % self.size
        if self.slot[place] > slot:  # older than what the place holds: out of the window
            return
        if self.slot[place] != slot:
            self.slot[place], self.count[place], self.amount[place] = slot, 0, 0
        self.count[place] += count
        self.amount[place] += amount

    def counts(self, slots: Iterable[int]) -> list[int]:
        return [self.count[s % self.size] if self.slot[s % self.size] == s else 0 for s in slots]

    def amounts(self, slots: Iterable[int]) -> list[int]:
        return [self.amount[s % self.size] if self.slot[s % self.size] == s else 0 for s in slots]


class Activity:
    """Payments and satoshis per wall-clock minute for one hour, and per second for the
    live rate, for each role (server: received; client: paid)."""

    def __init__(self) -> None:
        self._minutes = {role: _Ring(MINUTES) for role in ROLES}
        self._seconds = {role: _Ring(2 * LIVE) for role in ROLES}

    def record(self, amount: int, *, received: bool, now: float | None = None,
               count: int = 1) -> None:
        """`count` payments of `amount` satoshis in all, received (server) or made (client)."""
        second = int(time.time() if now is None else now)
        role = "server" if received else "client"
        self._minutes[role].add(second // 60, count, amount)
        self._seconds[role].add(second, count, amount)

    def rebuild(self, role: str, per_second: Iterable[tuple[int, int, int]]) -> None:
        """Add the stored payments of `role` — (second, payments, satoshis) — as if recorded
        then: after a restart, the last hour is there again."""
        for second, count, amount in per_second:
            self.record(amount, received=role == "server", now=second, count=count)

    def series(self, now: float) -> dict[str, Any]:
        """The last hour's minutes (unix time of each minute's start), oldest first; per role
        the payments and satoshis in each, the hour's total, and the rates per second: the
        last LIVE whole seconds' and the hour's average."""
        current = int(now // 60)
        minutes = list(range(current - MINUTES + 1, current + 1))
        second = int(now)
        live = range(second - LIVE, second)  # whole seconds, not the one in progress
        result: dict[str, Any] = {"minutes": [m * 60 for m in minutes], "live_seconds": LIVE}
        for role in ROLES:
            payments = self._minutes[role].counts(minutes)
            total = sum(payments)
            result[role] = {
                "payments": payments, "amounts": self._minutes[role].amounts(minutes),
                "total": total, "amount": sum(self._minutes[role].amounts(minutes)),
                "rate_live": sum(self._seconds[role].counts(live)) / LIVE,
                "rate_hour": total / (MINUTES * 60),
            }
        return result

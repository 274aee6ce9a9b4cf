"""Payments over the last hour, by minute, for the dashboard's charts.

    activity = Activity()
    activity.record(amount, received=True)    # on each payment (cheap: the hot path)
    activity.series(time.time())              # 60 one-minute buckets, oldest first
"""

from __future__ import annotations

import time
from typing import Any

MINUTES = 60


class Activity:
    """Counts of payments and satoshis received, per wall-clock minute, for one hour."""

    def __init__(self) -> None:
        self._payments = [0] * MINUTES
        self._received = [0] * MINUTES
        self._minute = [0] * MINUTES  # which minute each slot holds

    def record(self, amount: int, *, received: bool, now: float | None = None) -> None:
        minute = int((time.time() if now is None else now) // 60)
        slot = minute % MINUTES
        if self._minute[slot] != minute:
            self._minute[slot], self._payments[slot], self._received[slot] = minute, 0, 0
        self._payments[slot] += 1
        if received:
            self._received[slot] += amount

    def series(self, now: float) -> dict[str, Any]:
        """The last hour's minutes (unix time of each minute's start), oldest first, with
        the payments and the satoshis received in each."""
        current = int(now // 60)
        minutes = list(range(current - MINUTES + 1, current + 1))
        fresh = [self._minute[m % MINUTES] == m for m in minutes]
        return {
            "minutes": [m * 60 for m in minutes],
            "payments": [self._payments[m % MINUTES] if ok else 0
                         for m, ok in zip(minutes, fresh, strict=True)],
            "received": [self._received[m % MINUTES] if ok else 0
                         for m, ok in zip(minutes, fresh, strict=True)],
        }

"""Idempotency: a paid request retried with the same `Idempotency-Key` (on the same channel,
for the same method, path and query) is answered again from what the gateway kept, not
forwarded and not charged a second time.

A key is kept from the moment its request is paid: a retry while it runs is refused (409).
One that was not charged (its upstream failed, it was refused) is forgotten: its retry is a
new request. A charged answer is kept for `TTL` seconds if its body is at most `MAX_ANSWER`
bytes (all of them together at most `MAX_TOTAL`, the oldest dropped first); a larger one, or
a metered stream, cannot be answered again: its retry is refused (409), never charged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

KEY_HEADER = "Idempotency-Key"
MAX_KEY = 255  # characters
MAX_ANSWER = 1 << 20  # bytes of one kept answer's body
MAX_TOTAL = 64 << 20  # bytes of all kept bodies
TTL = 3600.0  # seconds a charged answer is kept


@dataclass
class Replay:
    """One key's request: in progress (`status` None), or answered (`body` None: not kept)."""

    where: tuple[str, str]  # (channel, key)
    request: str  # "METHOD path?query"
    ack: bytes = b""  # the PAYMENT_ACK of the payment that paid it
    charged: int = 0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    at: float = 0.0


class Replays:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._kept: OrderedDict[tuple[str, str], Replay] = OrderedDict()
        self._bytes = 0

    def get(self, channel: str, key: str) -> Replay | None:
        self._expire()
        return self._kept.get((channel, key))

    def reserve(self, channel: str | None, key: str | None, request: str) -> Replay | None:
        """Take `key` on `channel` for `request` (in progress), if both are known and the
        key is free; the caller forgets it if the request is not charged."""
        if channel is None or key is None or (channel, key) in self._kept:
            return None
        replay = self._kept[(channel, key)] = Replay((channel, key), request,
                                                     at=self.clock())
        return replay

    def paid_by(self, channel: str, key: str, ack: bytes) -> None:
        """The reserved request's payment was stored: its ack, to give a retry again."""
        replay = self._kept.get((channel, key))
        if replay is not None:
            replay.ack = ack

    def finish(self, channel: str, key: str, charged: int, status: int,
               headers: Mapping[str, str], body: bytes | None) -> None:
        """The request was charged `charged` and answered: keep the answer (if small)."""
        replay = self._kept.get((channel, key))
        if replay is None:
            return
        if body is not None and len(body) > MAX_ANSWER:
            body = None
        replay.charged, replay.status, replay.headers, replay.body = (
            charged, status, dict(headers), body)
        replay.at = self.clock()
        self._kept.move_to_end((channel, key))
        self._bytes += len(body or b"")
        while self._bytes > MAX_TOTAL and self._kept:
            self._drop(next(iter(self._kept)))

    def forget(self, channel: str, key: str) -> None:
        """The request was not charged: its retry is a new request."""
        if (channel, key) in self._kept:
            self._drop((channel, key))

    def _drop(self, where: tuple[str, str]) -> None:
        replay = self._kept.pop(where)
        self._bytes -= len(replay.body or b"")

    def _expire(self) -> None:
        now = self.clock()
        for where, replay in list(self._kept.items()):
            if replay.status is not None and now - replay.at > TTL:
                self._drop(where)


def valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY and key.isprintable()

"""Credit: sat a channel's client has paid the gateway and not yet spent, by channel.

Every change is synchronous (no await between reading and writing a balance), so requests
of one channel running side by side never spend the same sat twice. A metered stream that
has spent what it may waits (`wait`) until the credit grows. Kept in memory: a gateway
restart loses it (see ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio


class Credit:
    def __init__(self) -> None:
        self._by_channel: dict[str, int] = {}
        self._grown: dict[str, asyncio.Event] = {}  # channel → set when its credit grows

    def of(self, channel: str) -> int:
        return self._by_channel.get(channel, 0)

    def hold(self, channel: str, paid: int, needed: int, *, everything: bool = False
             ) -> int | None:
        """Add the payment `paid` to the channel's credit, then take `needed` of it for one
        request (with `everything`, all of it, at least `needed`): the sat held, or None if
        the credit falls short (the payment stays credited)."""
        self.add(channel, paid)
        credit = self.of(channel)
        if credit < needed:
            return None
        held = credit if everything else needed
        self._by_channel[channel] = credit - held
        return held

    def take(self, channel: str, sat: int) -> int:
        """Take up to `sat` of the channel's credit; what was taken."""
        taken = min(sat, self.of(channel))
        self._by_channel[channel] = self.of(channel) - taken
        return taken

    def add(self, channel: str, sat: int) -> None:
        """Credit `sat`: a payment, what a request held and was not charged, or a payment
        stored outside a request (a resume's proof, a stream's top-up)."""
        if sat < 0:
            raise ValueError(f"a credit of {sat} sat: a request is never charged more than "
                             "it held")
        if sat:
            self._by_channel[channel] = self.of(channel) + sat
            grown = self._grown.pop(channel, None)
            if grown is not None:
                grown.set()

    def waiting(self, channel: str) -> bool:
        """A stream of the channel waits for its credit to grow."""
        return channel in self._grown

    async def wait(self, channel: str, timeout: float) -> bool:
        """Wait until the channel's credit grows (True), at most `timeout` seconds (False)."""
        grown = self._grown.setdefault(channel, asyncio.Event())
        try:
            await asyncio.wait_for(grown.wait(), timeout)
        except TimeoutError:
            if self._grown.get(channel) is grown:
                del self._grown[channel]
            return False
        return True

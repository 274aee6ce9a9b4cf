"""Credit: sat a channel's client has paid the gateway and not yet spent, by channel.

Every change is synchronous (no await between reading and writing a balance), so requests
of one channel running side by side never spend the same sat twice. Kept in memory: a
gateway restart loses it (the next session stores it; see ARCHITECTURE.md).
"""

from __future__ import annotations


class Credit:
    def __init__(self) -> None:
        self._by_channel: dict[str, int] = {}

    def of(self, channel: str) -> int:
        return self._by_channel.get(channel, 0)

    def hold(self, channel: str, paid: int, needed: int, *, everything: bool = False
             ) -> int | None:
        """Add the payment `paid` to the channel's credit, then take `needed` of it for one
        request (with `everything`, all of it, at least `needed`): the sat held, or None if
        the credit falls short (the payment stays credited)."""
        credit = self.of(channel) + paid
        if credit < needed:
            self._by_channel[channel] = credit
            return None
        held = credit if everything else needed
        self._by_channel[channel] = credit - held
        return held

    def add(self, channel: str, sat: int) -> None:
        """Credit `sat`: what a request held and was not charged, or a payment stored
        outside a request (a resume's proof)."""
        if sat < 0:
            raise ValueError(f"a credit of {sat} sat: a request is never charged more than "
                             "it held")
        if sat:
            self._by_channel[channel] = self.of(channel) + sat

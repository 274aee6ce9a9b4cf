"""Credit: sat a channel's client has paid the gateway and not yet spent, by channel.

It lives in the store (store/credit.py): a channel's credit is what its stored payments paid
less what the gateway took, so a payment is credit the moment it is stored, a gateway restart
loses none, and instances on one PostgreSQL share it. The store is called in a thread (as
the server manager does), never blocking the event loop. Each take is atomic in the store, so
requests of one channel (on one instance or several) never spend the same sat twice. Takes
are group-committed: those that arrive while a commit runs go together in the next one (one
transaction, one fsync), each answered once its commit is durable; a lone take commits at
once, so batching adds no latency. A
metered stream that has spent what it may waits (`wait`) until this instance sees the credit
grow (a payment it stored, or credit given back).

`known` is the credit as this instance last saw it (each take reads it in its own
transaction, then what this instance stores and gives back is added): what a payment must add
and what a receipt says, without a read of the store per request. It is advisory: another
instance's takes and payments show at the next take; the take itself is the store's, exact.
"""

from __future__ import annotations

import asyncio
import sys

from bitcoind_paychan.store.credit import CreditStore, Take, check_takes

_Waiting = tuple[Take, "asyncio.Future[tuple[int | None, int]]"]  # a take and its answer


class Credit:
    def __init__(self, store: CreditStore) -> None:
        self.store = store
        self._grown: dict[str, asyncio.Event] = {}  # channel → set when its credit grows
        self._known: dict[str, int] = {}  # channel → its credit as this instance last saw it
        self._takes: list[_Waiting] = []  # takes waiting for the next commit
        self._committing: asyncio.Task[None] | None = None
        self.commits = 0  # commits of takes made (takes per commit: the batching)

    async def of(self, channel: str) -> int:
        """The channel's credit, read from the store."""
        left = self._known[channel] = await asyncio.to_thread(self.store.credit, channel)
        return left

    async def known(self, channel: str) -> int:
        """The channel's credit as this instance last saw it (read once if never)."""
        found = self._known.get(channel)
        return found if found is not None else await self.of(channel)

    async def hold(self, channel: str, paid: int, needed: int, *, everything: bool = False
             ) -> int | None:
        """Take `needed` of the channel's credit (which the stored payment `paid` is part
        of) for one request (with `everything`, all of it, at least `needed`): the sat held,
        or None if the credit falls short (the payment stays credit)."""
        self.grew(channel, paid)
        return await self._take(channel, needed, sys.maxsize if everything else needed)

    async def take(self, channel: str, sat: int) -> int:
        """Take up to `sat` of the channel's credit; what was taken."""
        return await self._take(channel, 0, sat) or 0

    async def _take(self, channel: str, least: int, most: int) -> int | None:
        check_takes([(channel, least, most)])
        answer: asyncio.Future[tuple[int | None, int]] = (
            asyncio.get_running_loop().create_future())
        self._takes.append(((channel, least, most), answer))
        if self._committing is None:
            self._committing = asyncio.ensure_future(self._commit_takes())
        taken, self._known[channel] = await answer
        return taken

    async def _commit_takes(self) -> None:
        """Commit the takes waiting, in batches, until none waits. A take whose caller went
        away (cancelled) before its commit answered is given back."""
        batch: list[_Waiting] = []
        try:
            while self._takes:
                batch, self._takes = self._takes, []
                try:
                    answers = await asyncio.to_thread(self.store.take_credits,
                                                      [take for take, _ in batch])
                except Exception as exc:  # the commit failed: nothing was taken
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                self.commits += 1
                unclaimed = []
                for ((channel, _, _), answer), (taken, left) in zip(batch, answers,
                                                                    strict=True):
                    if answer.done():  # cancelled
                        unclaimed.append((channel, taken or 0))
                    else:
                        answer.set_result((taken, left))
                for channel, taken in unclaimed:
                    await self.give_back(channel, taken)
                batch = []
        finally:
            self._committing = None
            for _, answer in batch + self._takes:  # the gateway stops
                answer.cancel()

    async def give_back(self, channel: str, sat: int) -> None:
        """Credit again `sat` a request held and was not charged."""
        if sat < 0:
            raise ValueError(f"a credit of {sat} sat: a request is never charged more than "
                             "it held")
        if not sat:  # charged all it held (a price per request served): no transaction
            return
        await asyncio.to_thread(self.store.give_credit, channel, sat)
        self.grew(channel, sat)

    def grew(self, channel: str, sat: int) -> None:
        """The channel's credit grew by `sat` (a payment stored, credit given back): wake
        the streams waiting for it."""
        if sat:
            if channel in self._known:
                self._known[channel] += sat
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

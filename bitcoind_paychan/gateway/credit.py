"""Credit: sat a channel's client has paid the gateway and not yet spent, by channel.

It lives in the store (store/credit.py): a channel's credit is what its stored payments paid
less what the gateway took, so a payment is credit the moment it is stored, a gateway
restart loses none, and instances on one PostgreSQL share it. The store is called in a
thread (as the server manager does), but for a take committed at once (below), which waits
for nothing: not for another write, a busy lock nor a checkpoint (store.credit.TakesAtOnce).
Each take is atomic in the store, so requests of one channel (on one instance or several)
never spend the same sat twice. Takes are group-committed by a thread of their own
(store/groupcommit.py): those that arrive while a commit runs go together in the next one
(one transaction, one fsync), each answered once its commit is durable; a lone take commits
at once, so batching adds no latency. When the store is this process's alone (`alone`), a
take the ledger's lower bound covers is decided at once (ledger.py) and committed right on
the loop if no take is queued before it and the store is free (`hold_request`; SQLite
commits takes without an fsync). A metered stream that has spent what it may waits (`wait`)
until this instance sees the credit grow (a payment it stored, or credit given back).

`known` is the credit as this instance last saw it (each take reads it in its own
transaction, then what this instance stores and gives back is added): what a payment must add
and what a receipt says, without a read of the store per request. It is advisory: another
instance's takes and payments show at the next take; the take itself is the store's, exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import NamedTuple

from bitcoind_paychan.errors import CreditLost
from bitcoind_paychan.gateway.ledger import Ledger
from bitcoind_paychan.store.credit import (
    CreditStore,
    PaymentTake,
    Take,
    TakesAtOnce,
    check_takes,
)
from bitcoind_paychan.store.groupcommit import GroupCommit

log = logging.getLogger(__name__)


class _Waiting(NamedTuple):
    """A take waiting for its commit, and where to answer it (`decided`: by the ledger,
    exactly `most` sat, before its commit)."""

    take: Take
    answer: asyncio.Future[tuple[int | None, int]]
    loop: asyncio.AbstractEventLoop
    decided: bool = False


_Answers = list[tuple[_Waiting, "tuple[int | None, int] | Exception"]]


class _Takes(GroupCommit[_Waiting]):
    """The takes' group commit: each batch in one `take_credits` transaction, answered on
    each take's loop (`answer`, called there once per batch)."""

    thread_name = "credit-takes"

    def __init__(self, store: CreditStore, answer: Callable[[_Answers], None]) -> None:
        super().__init__()
        self.store, self.answer = store, answer

    def put(self, waiting: _Waiting) -> None:
        self._put(waiting)

    def _commit(self, batch: list[_Waiting]) -> None:
        try:
            found: list[tuple[int | None, int] | Exception] = list(
                self.store.take_credits([waiting.take for waiting in batch]))
        except Exception as exc:  # the commit failed: nothing was taken
            found = [exc] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, _Answers] = {}
        for waiting, answer in zip(batch, found, strict=True):
            by_loop.setdefault(waiting.loop, []).append((waiting, answer))
        for loop, answers in by_loop.items():  # one wake-up per loop
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(self.answer, answers)


class Credit:
    """The gateway's credit (`alone`: the store is this process's alone, so takes are
    decided at once against the ledger's bounds, ledger.py)."""

    def __init__(self, store: CreditStore, *, alone: bool = False) -> None:
        self.store = store
        self._ledger = Ledger() if alone else None
        self._now = store if alone and isinstance(store, TakesAtOnce) else None
        self._outstanding = 0  # takes handed to the thread, their answers not yet booked
        self._commits_here = 0  # takes committed on the loop
        self._grown: dict[str, asyncio.Event] = {}  # channel → set when its credit grows
        self._known: dict[str, int] = {}  # channel → its credit as this instance last saw it
        self._takes = _Takes(store, self._answer)  # the thread committing takes
        self._giving: set[asyncio.Task[None]] = set()  # cancelled takes being given back

    @property
    def decides_at_once(self) -> bool:
        """Are takes decided against the ledger's bounds (the store is this process's
        alone)?"""
        return self._ledger is not None

    async def of(self, channel: str) -> int:
        """The channel's credit, read from the store."""
        left = self._known[channel] = await asyncio.to_thread(self.store.credit, channel)
        return left

    async def known(self, channel: str) -> int:
        """The channel's credit as this instance last saw it (read once if never)."""
        found = self._known.get(channel)
        return found if found is not None else await self.of(channel)

    def cached(self, channel: str) -> int:
        """The channel's credit as this instance last saw it, without the store (0 if never
        seen)."""
        return self._known.get(channel, 0)

    async def hold(self, channel: str, paid: int, needed: int, *, everything: bool = False,
                   made: PaymentTake | None = None) -> int | None:
        """Take `needed` of the channel's credit (which the stored payment `paid` is part
        of) for one request (with `everything`, all of it, at least `needed`): the sat held,
        or None if the credit falls short (the payment stays credit). `made`: the take
        already made in the payment's transaction (`with_payment`), if it was."""
        self.grew(channel, paid)
        if made is not None and made.answer is not None and made.contract_txid == channel:
            taken, self._known[channel] = made.answer
            return taken
        return await self._take(channel, needed, sys.maxsize if everything else needed)

    @staticmethod
    def with_payment(channel: str, needed: int, *, everything: bool = False
                     ) -> PaymentTake:
        """The take `hold` would make, to be made with a payment of `channel` instead (the
        payment's exchange runs with it in store.credit.WITH_PAYMENT)."""
        return PaymentTake(needed, sys.maxsize if everything else needed, channel)

    def unclaimed(self, made: PaymentTake) -> None:
        """`made`'s request went away before it used what was taken with its payment: give
        it back (now, or once its commit answers)."""
        made.closed = True
        if made.answer is not None and made.answer[0]:
            self._give_back_later(made.contract_txid, made.answer[0])
            made.answer = None

    async def hold_request(self, channel: str, paid: int, needed: int
                           ) -> tuple[int | None, asyncio.Future[tuple[int | None, int]] | None]:
        """`hold` of `needed` sat for a request that needs exactly that: the sat held (None:
        the credit falls short), and, if the ledger decided it at once, the future answered
        once the take is durable, to await before anything the request bought is released
        (StoreError there: it is not, and nothing was taken); cancelling it gives back what
        was held once the take is durable. Without a future, the take is durable already."""
        self.grew(channel, paid)
        check_takes([(channel, needed, needed)])
        if self._ledger is None or not self._ledger.decide(channel, needed):
            return await self._take(channel, needed, needed), None
        known, bound = self._known.get(channel), self._ledger.bound(channel) or 0
        self._known[channel] = bound if known is None else max(known - needed, bound)
        if self._now is not None and not self._outstanding:  # nothing queued before it
            found = self._take_now((channel, needed, needed))
            if found is not None:  # committed here
                if isinstance(found, Exception):
                    raise found
                return needed, None
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int | None, int]] = loop.create_future()
        self._put(_Waiting((channel, needed, needed), answer, loop, decided=True))
        return needed, answer

    def _take_now(self, take: Take) -> tuple[int | None, int] | Exception | None:
        """Commit a take the ledger decided here, on the loop, if the store is free at
        once (a commit of takes costs no fsync: store.credit.TakesAtOnce): its answer as
        booked, or None (the store is busy: the takes' thread commits it)."""
        assert self._now is not None
        try:
            found = self._now.take_credits_now([take])
        except Exception as exc:  # nothing taken
            return self._booked(take, True, exc)
        if found is None:
            return None
        self._commits_here += 1
        return self._booked(take, True, found[0])

    def _put(self, waiting: _Waiting) -> None:
        self._outstanding += 1  # until its answer is booked, in the commits' order
        self._takes.put(waiting)

    async def committed(self, channel: str, answer: asyncio.Future[tuple[int | None, int]]
                        ) -> tuple[int | None, int]:
        """A take's answer, awaited; cancelled after its commit answered (before the caller
        resumed), what it took is given back, as `_answer` does for one cancelled before."""
        try:
            return await answer
        except asyncio.CancelledError:
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                taken = answer.result()[0]
                if taken:
                    self._give_back_later(channel, taken)
            raise

    def may_ride(self, channel: str) -> bool:
        """May the channel's next take ride with its payment (`with_payment`)? Not while
        takes the ledger decided wait for their commit: a take the payment writer makes
        could spend their sat."""
        return self._ledger is None or self._ledger.may_ride(channel)

    def riding(self, made: PaymentTake) -> None:
        """`made` rides with a payment from now on, until `rode`: the store decides it."""
        if self._ledger is not None:
            self._ledger.store_decides(made.channel)

    def rode(self, made: PaymentTake) -> None:
        """The exchange `made` rode with ended (its payment stored with it, or not)."""
        if self._ledger is not None:
            self._ledger.answered(made.channel, made.answer[1] if made.answer else None,
                                  decided=False)

    async def take(self, channel: str, sat: int) -> int:
        """Take up to `sat` of the channel's credit; what was taken."""
        return await self._take(channel, 0, sat) or 0

    async def _take(self, channel: str, least: int, most: int) -> int | None:
        check_takes([(channel, least, most)])
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int | None, int]] = loop.create_future()
        if self._ledger is not None:
            self._ledger.store_decides(channel)
        self._put(_Waiting((channel, least, most), answer, loop))
        taken, self._known[channel] = await self.committed(channel, answer)
        return taken

    @property
    def commits(self) -> int:
        """Commits of takes the thread made (takes per commit: the batching)."""
        return self._takes.commits

    @property
    def all_commits(self) -> int:
        """Commits of takes made, by the thread and on the loop (`hold_request`)."""
        return self._takes.commits + self._commits_here

    def _answer(self, answers: list[tuple[_Waiting, tuple[int | None, int] | Exception]]
                ) -> None:
        """On the loop: each take's answer; one whose caller went away (cancelled) before
        its commit answered is given back."""
        for waiting, found in answers:
            self._outstanding -= 1
            found = self._booked(waiting.take, waiting.decided, found)
            if not waiting.answer.done():
                if isinstance(found, Exception):
                    waiting.answer.set_exception(found)
                else:
                    waiting.answer.set_result(found)
            elif not isinstance(found, Exception) and found[0]:
                self._give_back_later(waiting.take[0], found[0])

    def _booked(self, take: Take, decided: bool, found: tuple[int | None, int] | Exception
                ) -> tuple[int | None, int] | Exception:
        """The ledger learns a take's answer (`decided`: by the ledger); a take it decided
        that the store refused is an error (not taken: whatever the request bought is not
        released)."""
        if self._ledger is None:
            return found
        channel, _, most = take
        refused = decided and not isinstance(found, Exception) and found[0] != most
        self._ledger.answered(channel, None if isinstance(found, Exception) else found[1],
                              decided=decided, refused=refused)
        if refused:
            log.error("channel %s: the store found less credit than the gateway decided a "
                      "take of %d sat against: a bug; the request is answered 503 and the "
                      "store decides the channel's next take", channel, most)
            return CreditLost(f"channel {channel}: the store found less than {most} sat of "
                              "credit when the take was made durable")
        return found

    def _give_back_later(self, channel: str, sat: int) -> None:
        giving = asyncio.ensure_future(self.give_back(channel, sat))
        self._giving.add(giving)
        giving.add_done_callback(self._giving.discard)

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

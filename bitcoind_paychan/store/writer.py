"""PaymentWriter: group commit of payments, from asyncio, through one writer thread.

Payments on many channels arrive at once; committing each alone costs one fsync apiece. The
writer thread (groupcommit.py) takes every payment queued by the time it is free and stores
them with one `record_payments` call (one commit, one fsync); a lone payment is committed at
once. Each caller's `record_payment` returns only after the commit that holds its payment,
so nothing is acknowledged before it is durable. A server's payments carry their
connection's lease: with `leases`, each is stored only while that lease is current (fencing,
`store/leases.py`), checked in the same commit. A take of credit the gateway asked for with a
payment (`store/credit.py`, WITH_PAYMENT) is made in the payment's commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from bitcoind_paychan.channel.effects import Effect, StorePayment
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.store.base import ChannelStore, Payment
from bitcoind_paychan.store.credit import TakingStore, attach
from bitcoind_paychan.store.groupcommit import GroupCommit
from bitcoind_paychan.store.leases import FencedPayment, Lease, Leases

Outcomes = list["BaseException | None"]  # one per payment of a hand-over: None once stored


class _HandOver:
    """Payments handed to the writer together (under one lease, if any), answered by one
    future (one wake-up)."""

    __slots__ = ("done", "lease", "loop", "payments", "takes")

    def __init__(self, payments: list[Payment], lease: Lease | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.payments, self.lease, self.loop = payments, lease, loop
        self.done: asyncio.Future[Outcomes] = loop.create_future()
        # A take of credit the gateway asked to make with a payment (store/credit.py).
        self.takes = [attach(record) for record, _, _ in payments]


class PaymentWriter(GroupCommit[_HandOver]):
    """`await writer.record_payment(...)`: `store.record_payment`, group-committed."""

    thread_name = "payment-writer"

    def __init__(self, store: ChannelStore, leases: Leases | None = None) -> None:
        super().__init__()
        self.store = store
        self.leases = leases

    async def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"",
                             lease: Lease | None = None) -> None:
        outcome = (await self._hand_over([(record, amount, info)], lease))[0]
        if outcome is not None:
            raise outcome

    def start(self, effects: Iterable[Effect], lease: Lease | None = None) -> Writes:
        """Hand every StorePayment among `effects` (made under `lease`, if any) to the writer
        now, in one hand-over (so they share a commit); `Writes.stored(effect)` awaits each one
        in its place."""
        stores = [e for e in effects if isinstance(e, StorePayment)]
        if not stores:
            return Writes({}, None, self)
        done = self._hand_over([(e.record, e.amount, e.info) for e in stores], lease)
        return Writes({id(e): index for index, e in enumerate(stores)}, done, self)

    def _hand_over(self, payments: list[Payment], lease: Lease | None
                   ) -> asyncio.Future[Outcomes]:
        item = _HandOver(payments, lease, asyncio.get_running_loop())
        self._put(item)
        return item.done

    def _size(self, item: _HandOver) -> int:
        return len(item.payments)

    def _commit(self, batch: list[_HandOver]) -> None:
        payments = [payment for item in batch for payment in item.payments]
        takes = [take for item in batch for take in item.takes]
        try:
            if self.leases is not None:
                fenced: list[FencedPayment] = [(payment, item.lease) for item in batch
                                               for payment in item.payments]
                outcomes: Outcomes = list(self.leases.record_payments(fenced, takes)
                                          if any(takes) else
                                          self.leases.record_payments(fenced))
            elif any(takes):
                assert isinstance(self.store, TakingStore), "takes need a store of credit"
                outcomes = list(self.store.record_payments(payments, takes))
            else:
                outcomes = list(self.store.record_payments(payments))
        except BaseException as e:  # the commit failed: none is stored, nothing taken
            outcomes = [e] * len(payments)
            for take in takes:
                if take is not None:
                    take.answer = None
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        at = 0
        for item in batch:
            answers.setdefault(item.loop, []).append(
                (item.done, outcomes[at:at + len(item.payments)]))
            at += len(item.payments)
        for loop, settled in answers.items():  # one wake-up per loop, not per payment
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)


class Writes:
    """Payments handed to a writer ahead of their turn (`PaymentWriter.start`)."""

    def __init__(self, index: dict[int, int], done: asyncio.Future[Outcomes] | None,
                 writer: PaymentWriter) -> None:
        self._index, self._done, self._writer = index, done, writer

    async def stored(self, effect: StorePayment, lease: Lease | None = None) -> None:
        """Return once `effect`'s payment is durable (started now, under `lease`, if it was
        not before)."""
        at = self._index.get(id(effect))
        if at is None or self._done is None:
            await self._writer.record_payment(effect.record, effect.amount, effect.info, lease)
            return
        outcome = (await self._done)[at]  # one shared future: its task's alone
        if outcome is not None:
            raise outcome

    async def finish(self) -> None:
        """Wait for every write started (after a failure, so none is left running unseen)."""
        if self._done is not None and not self._done.done():  # done: nothing to wait for
            await asyncio.wait([self._done])


_Answer = tuple["asyncio.Future[Outcomes]", Outcomes]


def _settle(answers: list[_Answer]) -> None:
    for done, outcomes in answers:
        if not done.cancelled():
            done.set_result(outcomes)

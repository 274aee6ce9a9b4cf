"""PaymentWriter: group commit of payments, from asyncio, through one writer thread.

Payments on many channels arrive at once; committing each alone costs one fsync apiece. The
writer thread (groupcommit.py) takes every payment queued by the time it is free and stores
them with one `record_payments` call (one commit, one fsync); a lone payment is committed at
once. Each caller's `record_payment` returns only after the commit that holds its payment,
so nothing is acknowledged before it is durable. A server's payments carry their
connection's lease: with `leases`, each is stored only while that lease is current (fencing,
`store/leases.py`), checked in the same commit. A take of credit the gateway asked for with a
payment (`store/credit.py`, WITH_PAYMENT) is made in the payment's commit. Another write may
be queued in the payments' order (`in_order`: a re-anchor's promotion).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TypeVar

from bitcoind_paychan.channel.effects import Effect, StorePayment
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.store.base import ChannelStore, Payment
from bitcoind_paychan.store.credit import TakingStore, attach
from bitcoind_paychan.store.groupcommit import GroupCommit
from bitcoind_paychan.store.leases import FencedPayment, Lease, Leases

log = logging.getLogger(__name__)
T = TypeVar("T")

Outcomes = list["BaseException | None"]  # one per payment of a hand-over: None once stored


Answer = Callable[[Outcomes], None]
"""Told a hand-over's outcomes, on its event loop's thread, once their commit is done."""


class _HandOver:
    """Payments handed to the writer together (under one lease, if any), answered by one
    call on their loop (one wake-up); or one other write (`task`) to run alone in its place
    in the order, answered the same way (one outcome)."""

    __slots__ = ("answer", "lease", "loop", "payments", "takes", "task")

    def __init__(self, payments: list[Payment], lease: Lease | None,
                 loop: asyncio.AbstractEventLoop, answer: Answer,
                 task: Callable[[], object] | None = None) -> None:
        self.payments, self.lease, self.loop, self.answer = payments, lease, loop, answer
        self.task = task
        # A take of credit the gateway asked to make with a payment (store/credit.py).
        self.takes = [attach(record) for record, _, _ in payments]


class PaymentWriter(GroupCommit[_HandOver]):
    """`await writer.record_payment(...)`: `store.record_payment`, group-committed."""

    thread_name = "payment-writer"

    def __init__(self, store: ChannelStore, leases: Leases | None = None) -> None:
        super().__init__()
        self.store = store
        self.leases = leases
        self.cpu_s = 0.0  # the writer thread's CPU time in its commits (benchmarks read it)

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

    def in_order(self, task: Callable[[], T]) -> Coroutine[object, object, T]:
        """Queue `task` (a store write) now, to run in the writer thread after every payment
        handed over before this call is committed, and before any handed over after it (a
        re-anchor's promotion: the payments signed for the old generation are stored first,
        those signed for the new one after it). Await the result for its result, or what it
        raised. The queueing is done by the call itself, not by the await."""
        result: list[T] = []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcomes] = loop.create_future()
        self._put(_HandOver([], None, loop, functools.partial(_resolve, done),
                            lambda: result.append(task())))
        return _outcome(done, result)

    def submit(self, payments: list[Payment], lease: Lease | None, answer: Answer) -> None:
        """Hand `payments` (made under `lease`, if any) to the writer; `answer(outcomes)` is
        called on the running loop once the commit holding them is done (or failed), in the
        order of the hand-overs, among the loop's callbacks: no task wakes up."""
        self._put(_HandOver(payments, lease, asyncio.get_running_loop(), answer))

    def _hand_over(self, payments: list[Payment], lease: Lease | None
                   ) -> asyncio.Future[Outcomes]:
        done: asyncio.Future[Outcomes] = asyncio.get_running_loop().create_future()
        self.submit(payments, lease, functools.partial(_resolve, done))
        return done

    def _size(self, item: _HandOver) -> int:
        return len(item.payments)

    def _alone(self, item: _HandOver) -> bool:
        return item.task is not None

    def _commit(self, batch: list[_HandOver]) -> None:
        if batch[0].task is not None:
            self._run(batch[0])
            return
        started = time.thread_time()
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
        self.cpu_s += time.thread_time() - started
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        at = 0
        for item in batch:
            answers.setdefault(item.loop, []).append(
                (item.answer, outcomes[at:at + len(item.payments)]))
            at += len(item.payments)
        for loop, settled in answers.items():  # one wake-up per loop, not per payment
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)

    def _run(self, item: _HandOver) -> None:
        """An `in_order` write, alone, its outcome to its caller."""
        assert item.task is not None
        outcome: BaseException | None = None
        try:
            item.task()
        except BaseException as e:  # handed to the waiting caller
            outcome = e
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            item.loop.call_soon_threadsafe(_settle, [(item.answer, [outcome])])


class Writes:
    """Payments handed to a writer ahead of their turn (`PaymentWriter.start`)."""

    def __init__(self, index: dict[int, int], done: asyncio.Future[Outcomes] | None,
                 writer: PaymentWriter) -> None:
        self._index, self._done, self._writer = index, done, writer

    @classmethod
    def answered(cls, effects: Iterable[Effect], outcomes: Outcomes, writer: PaymentWriter
                 ) -> Writes:
        """The writes of `effects`' StorePayments, their `outcomes` (from `submit`) known."""
        stores = [e for e in effects if isinstance(e, StorePayment)]
        done: asyncio.Future[Outcomes] = asyncio.get_running_loop().create_future()
        done.set_result(outcomes)
        return cls({id(e): index for index, e in enumerate(stores)}, done, writer)

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


_Answer = tuple[Answer, Outcomes]


def _resolve(done: asyncio.Future[Outcomes], outcomes: Outcomes) -> None:
    if not done.cancelled():
        done.set_result(outcomes)


def _settle(answers: list[_Answer]) -> None:
    for answer, outcomes in answers:
        try:
            answer(outcomes)
        except Exception:  # one hand-over's bug must not leave the others unanswered
            log.exception("answering a payment commit failed")


async def _outcome(done: asyncio.Future[Outcomes], result: list[T]) -> T:
    outcome = (await done)[0]
    if outcome is not None:
        raise outcome
    return result[0]

"""PaymentWriter: group commit of payments, from asyncio, through one writer thread.

Payments on many channels arrive at once; committing each alone costs one fsync apiece. The
writer thread takes every payment queued by the time it is free and stores them with one
`record_payments` call (one commit, one fsync). When idle it commits a lone payment at once, so
batching adds no latency; under load the batch is what arrived during the previous commit, so
the window follows the load. Each caller's `record_payment` returns only after the commit that
holds its payment, so nothing is acknowledged before it is durable. The thread ends after a
moment without work and starts again with the next payment. A server's payments carry their
connection's lease: with `leases`, each is stored only while that lease is current (fencing,
`store/leases.py`), checked in the same commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterable

from bitcoind_paychan.channel.effects import Effect, StorePayment
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.store.base import ChannelStore
from bitcoind_paychan.store.leases import FencedPayment, Lease, Leases

MAX_BATCH = 512  # payments per commit
IDLE_EXIT = 2.0  # seconds without work before the thread ends

_Item = tuple[FencedPayment, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class PaymentWriter:
    """`await writer.record_payment(...)`: `store.record_payment`, group-committed."""

    def __init__(self, store: ChannelStore, leases: Leases | None = None) -> None:
        self.store = store
        self.leases = leases
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    async def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"",
                             lease: Lease | None = None) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((((record, amount, info), lease), loop, done))
        with self._lock:
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name="payment-writer", daemon=True).start()
        await done

    def start(self, effects: Iterable[Effect], lease: Lease | None = None) -> Writes:
        """Hand every StorePayment among `effects` (made under `lease`, if any) to the writer
        now (so they share a commit); `Writes.stored(effect)` awaits each one in its place."""
        return Writes({id(e): asyncio.ensure_future(self.record_payment(e.record, e.amount,
                                                                        e.info, lease))
                       for e in effects if isinstance(e, StorePayment)}, self)

    def _work(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        try:
            payments = [payment for payment, _, _ in batch]
            outcomes: list[BaseException | None] = list(
                self.leases.record_payments(payments) if self.leases is not None
                else self.store.record_payments([payment for payment, _ in payments]))
        except BaseException as e:  # the commit failed: none is stored
            outcomes = [e] * len(batch)
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for (_, loop, done), outcome in zip(batch, outcomes, strict=True):
            answers.setdefault(loop, []).append((done, outcome))
        for loop, settled in answers.items():  # one wake-up per loop, not per payment
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)


class Writes:
    """Payments handed to a writer ahead of their turn (`PaymentWriter.start`)."""

    def __init__(self, started: dict[int, asyncio.Future[None]], writer: PaymentWriter) -> None:
        self._started, self._writer = started, writer

    async def stored(self, effect: StorePayment, lease: Lease | None = None) -> None:
        """Return once `effect`'s payment is durable (started now, under `lease`, if it was
        not before)."""
        started = self._started.get(id(effect))
        await (started if started is not None
               else self._writer.record_payment(effect.record, effect.amount, effect.info,
                                                lease))

    async def finish(self) -> None:
        """Wait for every write started (after a failure, so none is left running unseen)."""
        await asyncio.gather(*self._started.values(), return_exceptions=True)


_Answer = tuple["asyncio.Future[None]", BaseException | None]


def _settle(answers: list[_Answer]) -> None:
    for done, outcome in answers:
        if done.cancelled():
            continue
        if outcome is None:
            done.set_result(None)
        else:
            done.set_exception(outcome)

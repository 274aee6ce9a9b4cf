"""PaymentWriter: group commit from asyncio, each payment answered after its own commit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import Send, StorePayment
from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.base import Payment
from bitcoind_paychan.store.credit import PaymentTake
from bitcoind_paychan.store.postgres import PostgresStore
from bitcoind_paychan.store.sql import SQLStore
from bitcoind_paychan.store.writer import PaymentWriter
from tests.store.helpers import Channel


class Counting(SQLStore):
    """Notes each batch of a real store; its first commit waits for `release`."""

    batches: list[int]
    first_started: threading.Event
    release: threading.Event

    def record_payments(self, batch: Sequence[Payment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        self.batches.append(len(batch))
        self.first_started.set()
        self.release.wait(timeout=30)
        return super().record_payments(batch, takes)


class CountingSQLite(Counting, SQLiteStore):
    pass


class CountingPostgres(Counting, PostgresStore):
    pass


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], SQLStore]:
    """Opens a new store of each durable engine (the writer's batch is one transaction)."""
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")
        return lambda: CountingPostgres(dsn)
    return lambda: CountingSQLite(tmp_path / "channels.db")


def counting(opened: SQLStore) -> Counting:
    assert isinstance(opened, Counting)
    opened.batches = []
    opened.first_started, opened.release = threading.Event(), threading.Event()
    return opened


def test_payments_queued_during_a_commit_share_the_next_one(engine: Callable[[], SQLStore]
                                                            ) -> None:
    async def scenario() -> None:
        with counting(engine()) as store:
            channels = [Channel() for _ in range(20)]
            for ch in channels:
                store.put(ch.record())
            writer = PaymentWriter(store)
            first = asyncio.ensure_future(
                writer.record_payment(channels[0].pay(channels[0].record(), 10), 10))
            await asyncio.to_thread(store.first_started.wait, 30)  # the writer is committing
            rest = [asyncio.ensure_future(writer.record_payment(ch.pay(ch.record(), 10), 10))
                    for ch in channels[1:]]
            await asyncio.sleep(0)  # every one is queued
            assert not first.done()  # not answered before its commit
            store.release.set()
            await asyncio.gather(first, *rest)
            assert store.batches == [1, 19]  # an idle writer commits a lone payment at once
            for ch in channels:
                assert store.get(Role.SERVER, ch.txid).change == 99_990  # type: ignore[union-attr]
                assert len(store.payments(Role.SERVER, ch.txid)) == 1

    asyncio.run(scenario())


def test_a_refused_payment_fails_only_its_own_caller(engine: Callable[[], SQLStore]) -> None:
    async def scenario() -> None:
        with counting(engine()) as store:
            store.release.set()
            stored, unknown = Channel(), Channel()
            store.put(stored.record())
            writer = PaymentWriter(store)
            good = writer.record_payment(stored.pay(stored.record(), 5), 5)
            bad = writer.record_payment(unknown.pay(unknown.record(), 5), 5)
            outcomes = await asyncio.gather(good, bad, return_exceptions=True)
            assert outcomes[0] is None
            assert isinstance(outcomes[1], StoreError) and "not stored" in str(outcomes[1])
            assert len(store.payments(Role.SERVER, stored.txid)) == 1

    asyncio.run(scenario())


def test_a_failed_commit_fails_every_caller_of_the_batch(engine: Callable[[], SQLStore]
                                                         ) -> None:
    async def scenario() -> None:
        store = counting(engine())
        store.release.set()
        ch = Channel()
        store.put(ch.record())
        store.close()
        writer = PaymentWriter(store)
        with pytest.raises(StoreError, match="closed"):
            await writer.record_payment(ch.pay(ch.record(), 5), 5)

    asyncio.run(scenario())


def test_payments_started_together_are_one_hand_over_each_answered_alone(
        engine: Callable[[], SQLStore]) -> None:
    async def scenario() -> None:
        with counting(engine()) as store:
            store.release.set()
            stored, unknown = Channel(), Channel()
            store.put(stored.record())
            first = stored.pay(stored.record(), 5)
            second = stored.pay(first, 5)
            pays = [StorePayment(first, 5, b""), StorePayment(unknown.pay(unknown.record(), 5),
                                                             5, b""), StorePayment(second, 5, b"")]
            writes = PaymentWriter(store).start([pays[0], Send(messages.payment_ack()), *pays[1:]])
            await writes.stored(pays[0])
            with pytest.raises(StoreError, match="not stored"):  # refused alone
                await writes.stored(pays[1])
            await writes.stored(pays[2])
            await writes.finish()
            assert store.batches == [3]  # one commit for the three
            assert [p.amount for p in store.payments(Role.SERVER, stored.txid)] == [5, 5]

    asyncio.run(scenario())


def test_a_write_in_order_runs_after_the_payments_before_it_and_before_those_after(
        engine: Callable[[], SQLStore]) -> None:
    """`in_order` (a re-anchor's promotion) takes its place in the writer's queue when it is
    called (not when awaited): the payments handed over before it are committed first,
    those after it later, whatever the batching. The writer is held in its first commit
    while all of them are queued."""
    async def scenario() -> None:
        with counting(engine()) as store:
            ch = Channel()
            store.put(ch.record())
            writer = PaymentWriter(store)
            first = ch.pay(ch.record(), 5)
            before = asyncio.ensure_future(writer.record_payment(first, 5))
            await asyncio.to_thread(store.first_started.wait, 30)
            second = StorePayment(ch.pay(first, 5), 5, b"")
            third = StorePayment(ch.pay(second.record, 5), 5, b"")
            queued = writer.start([second])  # each handed over when called, in this order
            seen = writer.in_order(lambda: store.get(Role.SERVER, ch.txid))
            after = writer.start([third])
            store.release.set()
            await asyncio.gather(before, queued.stored(second), after.stored(third))
            at_task = await seen
            assert at_task is not None and at_task.change == ch.contract.value - 10
            assert store.batches == [1, 1, 1]  # the task split the queue in its place
            with pytest.raises(ZeroDivisionError):  # what the task raises, raised here
                await writer.in_order(lambda: 1 // 0)

    asyncio.run(scenario())

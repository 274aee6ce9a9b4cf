"""Leases, fencing and claimed duties of instances sharing one real PostgreSQL store: each
instance is its own PostgresStore (its own pool) on the same database."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import LeaseLost, SettlementDecided, StoreError
from bitcoind_paychan.store.leases import ClusterPolicy, leases_for
from bitcoind_paychan.store.postgres import PostgresStore
from bitcoind_paychan.store.postgres_leases import PostgresLeases
from regtest.waiting import wait_until
from tests.store.helpers import Channel


@pytest.fixture
def two(postgres_dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)
    yield a, b
    a.close()
    b.close()


def instance(store: PostgresStore, name: str, takeover_after: float = 5.0) -> PostgresLeases:
    leases = leases_for(store, ClusterPolicy(name, takeover_after))
    assert isinstance(leases, PostgresLeases) and leases.shared
    return leases


def test_an_instance_that_lost_the_lease_cannot_store_a_payment(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    store_a, store_b = two
    a, b = instance(store_a, "a"), instance(store_b, "b")
    channel = Channel()
    store_a.put(channel.record())
    first = a.acquire(Role.SERVER, channel.txid, "a/1")
    paid = channel.pay(channel.record(), 10)
    assert a.record_payments([((paid, 10, b""), first)]) == [None]
    taken = b.acquire(Role.SERVER, channel.txid, "b/7")  # the client resumed on b
    assert taken.token == first.token + 1
    again = channel.pay(paid, 10)
    outcome = a.record_payments([((again, 10, b""), first)])[0]
    assert isinstance(outcome, LeaseLost) and "a/1" in str(outcome)
    assert store_b.get(Role.SERVER, channel.txid).change == paid.change  # type: ignore[union-attr]
    assert b.record_payments([((again, 10, b""), taken)]) == [None]
    assert [p.amount for p in store_a.payments(Role.SERVER, channel.txid)] == [10, 10]


class SlowStore(PostgresStore):
    """A real PostgresStore whose payment writes wait for `release` (inside the transaction
    that read the leases) once `started` is set."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.started, self.release = threading.Event(), threading.Event()

    def _store_payments(self, conn: Any, batch: Sequence[Any]) -> list[StoreError | None]:
        self.started.set()
        self.release.wait(timeout=30)
        return super()._store_payments(conn, batch)


def test_a_resume_on_another_instance_waits_for_a_payment_being_committed(
        postgres_dsn: str) -> None:
    """Once `acquire` returns on b, a's payment in flight is either in what b reads, or
    refused: never stored after b's read."""
    with SlowStore(postgres_dsn) as store_a, PostgresStore(postgres_dsn) as store_b:
        a, b = instance(store_a, "a"), instance(store_b, "b")
        channel = Channel()
        store_a.put(channel.record())
        lease = a.acquire(Role.SERVER, channel.txid, "a/1")
        paid = channel.pay(channel.record(), 10)
        outcome: list[StoreError | None] = []
        paying = threading.Thread(target=lambda: outcome.extend(
            a.record_payments([((paid, 10, b""), lease)])))
        paying.start()
        assert store_a.started.wait(30)  # a holds the lease row FOR SHARE, mid-commit
        taken: list[Any] = []
        taking = threading.Thread(target=lambda: taken.append(
            b.acquire(Role.SERVER, channel.txid, "b/1")))
        taking.start()
        taking.join(0.2)
        assert not taken  # b's acquisition waits for a's commit
        store_a.release.set()
        paying.join(30)
        taking.join(30)
        assert outcome == [None] and taken[0].token == lease.token + 1
        assert store_b.get(Role.SERVER, channel.txid).change == paid.change  # type: ignore


class SlowSettlingStore(PostgresStore):
    """A real PostgresStore whose read-modify-writes wait for `release` (inside the
    transaction, after the settlement's lease check) once `started` is set."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.started, self.release = threading.Event(), threading.Event()

    def _modify(self, conn: Any, role: Role, contract_txid: str, change: Any) -> Any:
        self.started.set()
        self.release.wait(timeout=30)
        return super()._modify(conn, role, contract_txid, change)


def test_a_resume_on_another_instance_waits_for_a_settlement_being_committed_and_sees_it(
        postgres_dsn: str) -> None:
    """Issue 19, Seen 1 across instances, at the store: a's settlement passed its lease check
    and is being committed when the client resumes on b. b's acquisition waits for that
    commit, so b's read after it shows the channel CLOSING (b answers with the settlement),
    and no payment b makes is stored, under its newer lease or not."""
    with SlowSettlingStore(postgres_dsn) as store_a, PostgresStore(postgres_dsn) as store_b:
        a, b = instance(store_a, "a"), instance(store_b, "b")
        channel = Channel()
        store_a.put(channel.record())
        lease = a.acquire(Role.SERVER, channel.txid, "a/settle")
        closing = replace(channel.record(), status=ChannelStatus.CLOSING,
                          settlement_tx=b"settle" * 30)
        failures: list[BaseException] = []

        def settle() -> None:
            try:
                a.store_settlement(closing, lease)
            except BaseException as exc:
                failures.append(exc)

        settling = threading.Thread(target=settle)
        settling.start()
        assert store_a.started.wait(30)  # a holds the lease row FOR SHARE, mid-commit
        seen: list[Any] = []
        taking = threading.Thread(target=lambda: seen.extend([
            b.acquire(Role.SERVER, channel.txid, "b/1"),
            store_b.get(Role.SERVER, channel.txid)]))
        taking.start()
        taking.join(0.2)  # (b's acquisition waits for a's commit, however long this is)
        store_a.release.set()
        settling.join(30)
        taking.join(30)
        assert failures == []
        taken, read = seen
        assert taken.token == lease.token + 1
        assert read is not None and read.status is ChannelStatus.CLOSING
        paid = channel.pay(channel.record(), 10)
        outcome = b.record_payments([((paid, 10, b""), taken)])[0]
        assert isinstance(outcome, SettlementDecided)
        assert store_b.payments(Role.SERVER, channel.txid) == []


def test_a_settlement_under_a_lease_taken_over_is_not_stored(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Seen 1, the other order: the client resumed on b (a newer lease) while a's settler
    awaited its node; a's CLOSING write is refused, b's payments go on."""
    store_a, store_b = two
    a, b = instance(store_a, "a"), instance(store_b, "b")
    channel = Channel()
    store_a.put(channel.record())
    settler = a.acquire(Role.SERVER, channel.txid, "a/settle")
    resumed = b.acquire(Role.SERVER, channel.txid, "b/1")
    closing = replace(channel.record(), status=ChannelStatus.CLOSING, settlement_tx=b"s" * 9)
    with pytest.raises(LeaseLost, match="settlement"):
        a.store_settlement(closing, settler)
    paid = channel.pay(channel.record(), 10)
    assert b.record_payments([((paid, 10, b""), resumed)]) == [None]
    stored = store_b.get(Role.SERVER, channel.txid)
    assert stored is not None and stored.status is ChannelStatus.OPEN
    assert stored.change == paid.change


def test_a_duty_is_done_by_one_instance_and_taken_over_when_its_claimer_goes_silent(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    store_a, store_b = two
    a, b = instance(store_a, "a", takeover_after=0.5), instance(store_b, "b", 0.5)
    assert a.claim("settle:x")
    assert not b.claim("settle:x")  # a is alive and doing it
    a.finish("settle:x")
    assert b.claim("settle:x")
    b.finish("settle:x")
    assert a.claim("settle:y")
    # a stops beating (as if killed): after takeover_after, b takes the duty over.
    wait_until(lambda: b.claim("settle:y"), what="b to take over the duty of a silent instance")
    b.heartbeat()
    assert not a.claim("settle:y")  # and a, if it comes back, leaves it to b (alive)


def test_a_held_claim_lasts_its_hold_even_for_a_live_instance(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    store_a, store_b = two
    a, b = instance(store_a, "a"), instance(store_b, "b")
    assert a.claim("broadcast:t", hold=0.3)
    assert not b.claim("broadcast:t", hold=0.3)  # rebroadcast once, not by each instance
    wait_until(lambda: b.claim("broadcast:t", hold=0.3), what="the hold to run out")


def test_a_restarted_instance_of_the_same_name_is_another_claimer(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    store_a, store_b = two
    before = instance(store_a, "a", takeover_after=0.5)
    assert before.claim("settle:z")
    after = instance(store_b, "a", takeover_after=0.5)  # the same name, a new process
    assert not after.claim("settle:z")
    def beat_and_claim() -> bool:
        after.heartbeat()  # alive, unlike its predecessor
        return after.claim("settle:z")

    wait_until(beat_and_claim, what="the restarted instance to take over its silent "
               "predecessor's duty")

"""Leases with fencing and claimed duties, for a store one process owns (LocalLeases)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import ConfigError, LeaseLost, SettlementDecided, StoreError
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.base import Payment
from bitcoind_paychan.store.credit import PaymentTake
from bitcoind_paychan.store.leases import ClusterPolicy, LocalLeases
from bitcoind_paychan.store.writer import PaymentWriter
from tests.store.helpers import Channel


def test_a_payment_made_under_a_lease_taken_over_is_not_stored(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "channels.db") as store:
        channel = Channel()
        store.put(channel.record())
        leases = LocalLeases(store)
        old = leases.acquire(Role.SERVER, channel.txid, "a/1")
        new = leases.acquire(Role.SERVER, channel.txid, "b/1")  # the client resumed elsewhere
        assert new.token == old.token + 1
        first = channel.pay(channel.record(), 10)
        outcomes = leases.record_payments([((first, 10, b""), old)])
        assert isinstance(outcomes[0], LeaseLost)
        assert "lost the channel's lease" in str(outcomes[0])
        assert store.get(Role.SERVER, channel.txid).change == 100_000  # type: ignore[union-attr]
        assert store.payments(Role.SERVER, channel.txid) == []
        assert leases.record_payments([((first, 10, b""), new)]) == [None]
        assert store.get(Role.SERVER, channel.txid).change == 99_990  # type: ignore[union-attr]


def test_a_batch_stores_the_current_leases_payments_and_refuses_the_others(
        tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "channels.db") as store:
        kept, moved = Channel(), Channel()
        for ch in (kept, moved):
            store.put(ch.record())
        leases = LocalLeases(store)
        lease = leases.acquire(Role.SERVER, kept.txid, "a/1")
        stale = leases.acquire(Role.SERVER, moved.txid, "a/2")
        leases.acquire(Role.SERVER, moved.txid, "b/1")
        outcomes = leases.record_payments([
            ((kept.pay(kept.record(), 5), 5, b""), lease),
            ((moved.pay(moved.record(), 7), 7, b""), stale),
            ((kept.pay(kept.pay(kept.record(), 5), 6), 6, b""), lease),
        ])
        assert [type(o) for o in outcomes] == [type(None), LeaseLost, type(None)]
        assert [p.amount for p in store.payments(Role.SERVER, kept.txid)] == [6, 5]
        assert store.payments(Role.SERVER, moved.txid) == []


class ContendedLock:
    """A lock that says when a thread found it held and waits for it (`contended`)."""

    def __init__(self) -> None:
        self.inner, self.contended = threading.Lock(), threading.Event()

    def __enter__(self) -> None:
        if not self.inner.acquire(blocking=False):
            self.contended.set()
            self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


class SlowStore(SQLiteStore):
    """A real store whose commit waits for `release` once `started` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.started, self.release = threading.Event(), threading.Event()

    def record_payments(self, batch: Sequence[Payment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        self.started.set()
        self.release.wait(timeout=30)
        return super().record_payments(batch, takes)


def test_acquire_waits_for_a_commit_in_progress_so_the_new_holder_reads_it(
        tmp_path: Path) -> None:
    """Once `acquire` returns, every payment of the older lease is either in the store (and
    the new holder's read shows it) or refused: none lands after the read."""
    async def scenario() -> None:
        with SlowStore(tmp_path / "channels.db") as store:
            channel = Channel()
            store.put(channel.record())
            leases = LocalLeases(store)
            leases._lock = lock = ContendedLock()  # type: ignore[assignment]
            old = leases.acquire(Role.SERVER, channel.txid, "a/1")
            writer = PaymentWriter(store, leases)
            paid = asyncio.ensure_future(
                writer.record_payment(channel.pay(channel.record(), 10), 10, b"", old))
            await asyncio.to_thread(store.started.wait, 30)  # the old holder is committing
            taking = asyncio.ensure_future(
                asyncio.to_thread(leases.acquire, Role.SERVER, channel.txid, "b/1"))
            assert await asyncio.to_thread(lock.contended.wait, 30)  # it waits for the commit
            assert not taking.done()
            store.release.set()
            new = await taking
            await paid
            assert new.token == old.token + 1
            assert store.get(Role.SERVER, channel.txid).change == 99_990  # type: ignore
            with pytest.raises(LeaseLost):
                await writer.record_payment(channel.pay(channel.record(change=99_990), 10), 10,
                                            b"", old)

    asyncio.run(scenario())


class SlowSettlingStore(SQLiteStore):
    """A real store whose read-modify-writes wait for `release` once `started` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.started, self.release = threading.Event(), threading.Event()

    def modify(self, role: Role, contract_txid: str, change: Any) -> ChannelRecord:
        self.started.set()
        self.release.wait(timeout=30)
        return super().modify(role, contract_txid, change)


def test_a_resume_waits_for_a_settlement_being_stored_and_reads_it_closing(
        tmp_path: Path) -> None:
    """Issue 19, Seen 1 on one process, at the store: the settlement passed its lease check
    and is being written when the client resumes. The resume's acquisition waits for it, so
    its read shows the channel CLOSING, and no payment is stored after, under any lease."""
    with SlowSettlingStore(tmp_path / "channels.db") as store:
        channel = Channel()
        store.put(channel.record())
        leases = LocalLeases(store)
        settler = leases.acquire(Role.SERVER, channel.txid, "a/settle")
        closing = replace(channel.record(), status=ChannelStatus.CLOSING,
                          settlement_tx=b"settle" * 30)
        settling = threading.Thread(target=leases.store_settlement, args=(closing, settler))
        settling.start()
        assert store.started.wait(30)  # checked its lease, writing
        seen: list[Any] = []
        taking = threading.Thread(target=lambda: seen.extend([
            leases.acquire(Role.SERVER, channel.txid, "b/1"),
            store.get(Role.SERVER, channel.txid)]))
        taking.start()
        taking.join(0.2)  # (the acquisition waits for the write, however long this is)
        store.release.set()
        settling.join(30)
        taking.join(30)
        taken, read = seen
        assert taken.token == settler.token + 1
        assert read is not None and read.status is ChannelStatus.CLOSING
        outcome = leases.record_payments([((channel.pay(channel.record(), 10), 10, b""),
                                           taken)])[0]
        assert isinstance(outcome, SettlementDecided)
        assert store.payments(Role.SERVER, channel.txid) == []


def test_release_leaves_a_later_holder_alone(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "channels.db") as store:
        leases = LocalLeases(store)
        old = leases.acquire(Role.SERVER, "ab" * 32, "a/1")
        leases.acquire(Role.SERVER, "ab" * 32, "b/1")
        leases.release(old)
        assert leases.holder(Role.SERVER, "ab" * 32) == "b/1"


def test_a_duty_is_claimed_by_one_doer_until_finished(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "channels.db") as store:
        leases = LocalLeases(store)
        assert leases.claim("settle:x")
        assert not leases.claim("settle:x")  # being done
        leases.finish("settle:x")
        assert leases.claim("settle:x")
        assert leases.claim("broadcast:y", hold=30) and leases.claim("broadcast:y", hold=30)


def test_the_cluster_policy_names_the_instance_and_refuses_bad_timing() -> None:
    assert ClusterPolicy(instance_id="shop-1").instance == "shop-1"
    assert ":" in ClusterPolicy().instance  # hostname:pid
    assert ClusterPolicy(takeover_after=6).heartbeat_interval == 2
    with pytest.raises(ConfigError, match="takeover_after"):
        ClusterPolicy(takeover_after=0)
    with pytest.raises(ConfigError, match="instance_id"):
        ClusterPolicy(instance_id=" ")

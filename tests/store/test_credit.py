"""The gateway's credit in the store (store/credit.py), on every engine: derived from the
stored payments, taken and given back, surviving a reopen, and on PostgreSQL never taken twice
by two instances (a race driven by the test, not by timing)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import LeaseLost, StoreError
from bitcoind_paychan.store import ChannelStore, SQLiteStore, codec, postgres_schema, sqlite_schema
from bitcoind_paychan.store.codec import SCHEMA_VERSION
from bitcoind_paychan.store.credit import CreditStore, PaymentTake
from bitcoind_paychan.store.leases import leases_for
from bitcoind_paychan.store.postgres import PostgresStore
from bitcoind_paychan.store.sqlite import BUSY_TIMEOUT, TAKES_AT_ONCE, WAL_AUTOCHECKPOINT
from regtest.postgres import PostgresServer
from regtest.waiting import wait_until
from tests.store.helpers import Channel
from tests.store.test_contract import reopen, store

__all__ = ["reopen", "store"]


def credit_of(store: ChannelStore) -> CreditStore:
    assert isinstance(store, CreditStore)
    return store


def paid(store: ChannelStore, *amounts: int) -> Channel:
    """A server channel stored, then paid `amounts` in turn."""
    channel = Channel()
    record = channel.record()
    store.put(record)
    for amount in amounts:
        record = channel.pay(record, amount)
        store.record_payment(record, amount)
    return channel


def test_credit_is_what_the_payments_paid_less_what_was_taken(store: ChannelStore) -> None:
    credit = credit_of(store)
    channel = paid(store, 1_000)
    txid = channel.txid
    assert credit.credit(txid) == 1_000
    assert credit.take_credit(txid, 300, 300) == 300
    assert credit.take_credit(txid, 800, 800) is None  # short: nothing taken
    assert credit.credit(txid) == 700
    assert credit.take_credit(txid, 100, 10**9) == 700  # everything, at least 100
    assert credit.take_credit(txid, 0, 50) == 0
    credit.give_credit(txid, 250)  # held and not charged
    assert credit.credit(txid) == 250
    record = store.get(Role.SERVER, txid)
    assert record is not None
    store.record_payment(channel.pay(record, 500), 500)  # a stored payment is credit at once
    assert credit.credit(txid) == 750
    with pytest.raises(ValueError, match="never charged more than it held"):
        credit.give_credit(txid, 1_000)
    assert credit.credit(txid) == 750


def test_a_channel_the_store_does_not_hold_has_no_credit(store: ChannelStore) -> None:
    credit = credit_of(store)
    unknown = Channel().txid
    assert credit.credit(unknown) == 0
    assert credit.take_credit(unknown, 1, 1) is None
    assert credit.take_credit(unknown, 0, 5) == 0
    credit.give_credit(unknown, 5)  # forgotten meanwhile: nothing to give back to
    client = Channel()
    store.put(client.pay(client.record(Role.CLIENT), 900))
    assert credit.credit(client.txid) == 0  # only what a server channel was paid is credit


def test_a_forgotten_channel_takes_its_credit_with_it(store: ChannelStore) -> None:
    credit = credit_of(store)
    channel = paid(store, 1_000)
    assert credit.take_credit(channel.txid, 400, 400) == 400
    store.modify(Role.SERVER, channel.txid, lambda r: replace(r, status=ChannelStatus.SETTLED))
    store.forget(Role.SERVER, channel.txid)
    assert credit.credit(channel.txid) == 0


def test_credit_survives_a_reopen(reopen: Callable[[], ChannelStore]) -> None:
    with reopen() as first:
        channel = paid(first, 2_000)
        assert credit_of(first).take_credit(channel.txid, 500, 500) == 500
    with reopen() as again:
        assert credit_of(again).credit(channel.txid) == 1_500


def version_5_channel() -> tuple[Channel, tuple[str, ...], tuple[object, ...]]:
    """A server channel paid 1,000 sat, as a version 5 store's channels row holds it (the
    columns before re-anchoring's, version 7)."""
    channel = Channel()
    record = channel.pay(channel.record(), 1_000)
    columns = codec.CHANNEL_COLUMNS[:-len(codec.REANCHOR_COLUMNS)]
    return channel, columns, tuple(codec.encode(record)[:len(columns)])


def test_a_version_5_sqlite_file_gains_the_credit_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    channel, columns, row = version_5_channel()
    with closing(sqlite3.connect(path)) as conn:
        for sql in sqlite_schema.V1:
            conn.execute(sql)
        for step in sqlite_schema.MIGRATIONS[:4]:  # 1 -> 5
            step(conn)
        conn.execute(f"PRAGMA application_id = {sqlite_schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 5")
        conn.execute(f"INSERT INTO channels ({', '.join(columns)}) VALUES "
                     f"({', '.join('?' * len(columns))})", row)
        conn.commit()
    path.chmod(0o600)  # as the store makes its files: it holds channel keys
    with SQLiteStore(path) as store:
        assert store.info().schema_version == SCHEMA_VERSION
        assert store.take_credit(channel.txid, 600, 600) == 600
        assert store.credit(channel.txid) == 400


def test_a_version_5_database_gains_the_credit_table(postgres_server: PostgresServer) -> None:
    database = postgres_server.new_database()
    channel, columns, row = version_5_channel()
    upgrades = postgres_schema.MIGRATIONS[:5 - postgres_schema.FIRST_VERSION]  # up to 5
    with psycopg.connect(postgres_server.dsn(database), autocommit=True) as conn:
        for statement in [*postgres_schema.CREATE, *(sql for step in upgrades for sql in step)]:
            conn.execute(statement)
        conn.execute(f"INSERT INTO channels ({', '.join(columns)}) VALUES "
                     f"({', '.join(['%s'] * len(columns))})", row)
        conn.execute("INSERT INTO schema_version VALUES (5)")
    with PostgresStore(postgres_server.dsn(database)) as store:
        assert store.info().schema_version == SCHEMA_VERSION
        assert store.take_credit(channel.txid, 600, 600) == 600
        assert store.credit(channel.txid) == 400


def test_a_take_says_what_it_left(store: ChannelStore) -> None:
    credit = credit_of(store)
    channel = paid(store, 1_000)
    assert credit.take_credit_left(channel.txid, 300, 300) == (300, 700)
    assert credit.take_credit_left(channel.txid, 800, 800) == (None, 700)
    assert credit.take_credit_left(channel.txid, 0, 10**9) == (700, 0)
    assert credit.take_credit_left("00" * 32, 0, 5) == (0, 0)  # no such channel


def test_a_batch_of_takes_is_taken_in_turn_in_one_transaction(store: ChannelStore) -> None:
    credit = credit_of(store)
    one, two = paid(store, 500), paid(store, 300)
    assert credit.take_credits([(two.txid, 200, 200), (one.txid, 400, 400),
                                (two.txid, 200, 200), (one.txid, 0, 10**9),
                                ("00" * 32, 0, 5)]) == [
        (200, 100), (400, 100), (None, 100), (100, 0), (0, 0)]  # each sees those before
    assert (credit.credit(one.txid), credit.credit(two.txid)) == (0, 100)
    with pytest.raises(ValueError, match="expected 0 <= least <= most"):
        credit.take_credits([(two.txid, 50, 50), (one.txid, 5, 1)])
    assert credit.credit(two.txid) == 100  # a bad take in a batch: none of it is taken


def test_a_take_rides_in_the_transaction_that_stores_its_payment(store: ChannelStore) -> None:
    """Through the leases (the server's path; fenced in the same commit): each stored
    payment's take is made right after it; a refused payment's (a lost lease, a higher
    change) is not made."""
    leases = leases_for(store)
    one, two = paid(store, 300), paid(store, 300)
    lease = leases.acquire(Role.SERVER, one.txid, "a/1")
    stale = leases.acquire(Role.SERVER, two.txid, "a/1")
    leases.acquire(Role.SERVER, two.txid, "b/1")  # `stale` lost: two's payment is refused
    first, second = (store.get(Role.SERVER, c.txid) for c in (one, two))
    assert first is not None and second is not None
    takes = [PaymentTake(500, 500, one.txid), PaymentTake(100, 100, two.txid), None]
    for take in takes[:2]:
        assert take is not None
        take.contract_txid = take.channel  # as the writer attaches it
    outcomes = leases.record_payments([((one.pay(first, 400), 400, b""), lease),
                                       ((two.pay(second, 10), 10, b""), stale),
                                       ((one.pay(first, 1), 1, b""), lease)], takes)
    assert outcomes[0] is None and isinstance(outcomes[1], LeaseLost)
    assert isinstance(outcomes[2], StoreError)  # a higher change than the one stored first
    assert [t.answer if t is not None else None for t in takes] == [(500, 200), None, None]
    credit = credit_of(store)
    assert (credit.credit(one.txid), credit.credit(two.txid)) == (200, 300)


def test_a_take_is_bounded_before_it_can_fail_a_payment() -> None:
    with pytest.raises(ValueError, match="expected 0 <= least <= most"):
        PaymentTake(5, 1, "00" * 32)


class HeldStore(PostgresStore):
    """An instance whose credit takes stop, once they read the balance under its lock, until
    `release`."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.reading, self.release = threading.Event(), threading.Event()

    def _credit_read(self, contract_txid: str) -> None:
        self.reading.set()
        assert self.release.wait(timeout=30)


def test_two_instances_never_take_the_same_credit(postgres_server: PostgresServer) -> None:
    database = postgres_server.new_database()
    dsn = postgres_server.dsn(database)
    with HeldStore(dsn) as a, PostgresStore(dsn) as b:
        channel = paid(a, 150)
        assert b.take_credit(channel.txid, 0, 0) == 0  # the channel's row exists: a locks it
        got = race(a, lambda: a.take_credit(channel.txid, 100, 100),
                   lambda: b.take_credit(channel.txid, 100, 100), postgres_server, database)
        assert got == {"a": 100, "b": None}  # b read the balance a left: 50
        assert b.credit(channel.txid) == 50


def test_a_take_riding_with_a_payment_and_another_instances_take_never_spend_the_same_sat(
        postgres_server: PostgresServer) -> None:
    """Instance a stores a payment of 100 with its request's take of 200 (one transaction,
    through its leases); b's take of 200 waits for a's row lock, then reads what a left."""
    database = postgres_server.new_database()
    dsn = postgres_server.dsn(database)
    with HeldStore(dsn) as a, PostgresStore(dsn) as b:
        channel = paid(a, 150)
        assert b.take_credit(channel.txid, 0, 0) == 0  # the channel's row exists: a locks it
        leases = leases_for(a)
        lease = leases.acquire(Role.SERVER, channel.txid, "a/1")
        record = a.get(Role.SERVER, channel.txid)
        assert record is not None
        take = PaymentTake(200, 200, channel.txid, contract_txid=channel.txid)
        got = race(a, lambda: leases.record_payments(
            [((channel.pay(record, 100), 100, b""), lease)], [take]),
            lambda: b.take_credit(channel.txid, 200, 200), postgres_server, database)
        assert got == {"a": [None], "b": None} and take.answer == (200, 50)
        assert b.credit(channel.txid) == 50


def race(a: HeldStore, first: Callable[[], object], second: Callable[[], object],
         server: PostgresServer, database: str) -> dict[str, object]:
    """`first` on instance a (held once it read its row under the lock), then `second`,
    which waits for a's row lock, each in a thread; what each returned (keys a and b)."""
    got: dict[str, object] = {}
    one = threading.Thread(target=lambda: got.update(a=first()))
    one.start()
    assert a.reading.wait(timeout=30)  # a read the credit and holds the row
    two = threading.Thread(target=lambda: got.update(b=second()))
    two.start()
    waiting_on_a_lock(server, database)  # b waits for a's row lock
    a.release.set()
    one.join(30)
    two.join(30)
    return got


def waiting_on_a_lock(server: PostgresServer, database: str) -> None:
    """Return once one session of `database` waits on a lock."""
    wait_until(lambda: server.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
        f"datname = '{database}'", database) == "1", what="b waiting on a's lock")


class _Watched(SQLiteStore):
    """Records the connection's `synchronous` setting as each take reads its credit."""

    seen: list[int]

    def _credit_read(self, contract_txid: str) -> None:
        assert self._conn is not None
        self.seen.append(self._conn.execute("PRAGMA synchronous").fetchone()[0])


def test_sqlite_commits_takes_unsynced_and_everything_else_synced(tmp_path: Path) -> None:
    """A take of credit is committed to the WAL without an fsync (synchronous NORMAL = 1);
    the setting is FULL (2) again for every other write, payments first."""
    with _Watched(tmp_path / "gateway.db") as store:
        store.seen = []
        txid = paid(store, 1_000).txid
        assert store.take_credits([(txid, 10, 10), (txid, 20, 20)]) == [(10, 990), (20, 970)]
        assert store.seen == [1, 1]
        assert store._conn is not None
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


_CRASH = """
import os, signal, sys
from bitcoind_paychan.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
assert store.take_credits([(sys.argv[2], 300, 300)]) == [(300, 700)]
os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: the WAL as it is
"""


def test_an_unsynced_take_survives_the_process_crashing_after_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    with SQLiteStore(path) as store:
        txid = paid(store, 1_000).txid
    crashed = subprocess.run([sys.executable, "-c", _CRASH, str(path), txid],
                             cwd=Path(__file__).resolve().parents[2], check=False)
    assert crashed.returncode == -signal.SIGKILL
    with SQLiteStore(path) as reopened:
        assert reopened.credit(txid) == 700


def test_a_take_at_once_waits_for_no_other_write_and_no_checkpoint(tmp_path: Path) -> None:
    """`take_credits_now` (the gateway's take on its event loop) never waits: another
    connection's write lock makes it decline (None: the thread takes over), as does every
    TAKES_AT_ONCE-th take, left to the thread whose commit may checkpoint the WAL; the
    connection's settings are as before after each."""
    with SQLiteStore(tmp_path / "gateway.db") as store:
        txid = paid(store, 10_000).txid
        with closing(sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # an operator's shell, writing
            assert store.take_credits_now([(txid, 1, 1)]) is None  # at once, not in 10 s
            other.execute("ROLLBACK")
        found = [store.take_credits_now([(txid, 1, 1)]) for _ in range(TAKES_AT_ONCE + 1)]
        assert found[:-1] == [[(1, 10_000 - n)] for n in range(1, TAKES_AT_ONCE + 1)]
        assert found[-1] is None  # the thread's turn
        assert store.take_credits_now([(txid, 1, 1)]) == [(1, 10_000 - TAKES_AT_ONCE - 1)]
        assert store._conn is not None
        settings = [store._conn.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("busy_timeout", "wal_autocheckpoint", "synchronous")]
        assert settings == [int(BUSY_TIMEOUT * 1000), WAL_AUTOCHECKPOINT, 2]

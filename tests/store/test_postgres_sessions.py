"""What bounds a PostgreSQL session of the store: its timeouts free the lease rows of an
instance frozen inside a payment transaction, and the store works again as soon as a restarted
server accepts connections. A real PostgreSQL server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.errors import PolicyError, StoreError
from bitcoind_paychan.store.leases import ClusterPolicy, leases_for
from bitcoind_paychan.store.postgres import PostgresStore, SessionTimeouts
from bitcoind_paychan.store.postgres_leases import PostgresLeases
from regtest.postgres import PostgresServer
from regtest.waiting import wait_until
from tests.store.helpers import Channel


def shown(store: PostgresStore, setting: str) -> str:
    with store._connection(f"show {setting}") as session:
        (value,) = session.execute(f"SHOW {setting}").fetchone()
    return str(value)


def test_each_session_carries_the_timeouts(postgres_dsn: str) -> None:
    with PostgresStore(postgres_dsn) as default:
        assert shown(default, "statement_timeout") == "30s"
        assert shown(default, "lock_timeout") == "5s"
        assert shown(default, "idle_in_transaction_session_timeout") == "2s"
    given = SessionTimeouts(statement_timeout=60, lock_timeout=1.5,
                            idle_in_transaction_session_timeout=0.25)
    with PostgresStore(postgres_dsn, timeouts=given) as store:
        assert shown(store, "statement_timeout") == "1min"
        assert shown(store, "lock_timeout") == "1500ms"
        assert shown(store, "idle_in_transaction_session_timeout") == "250ms"


@pytest.mark.parametrize(("given", "field"), [
    ({"statement_timeout": 0}, "statement_timeout"),
    ({"lock_timeout": 7200}, "lock_timeout"),
    ({"lock_timeout": 2.0}, "lock_timeout"),  # not above the idle-in-transaction timeout
    ({"statement_timeout": 4.0}, "statement_timeout"),  # below the lock timeout
])
def test_timeouts_that_cannot_bound_a_frozen_instance_are_refused(
        given: dict[str, float], field: str) -> None:
    with pytest.raises(PolicyError) as refused:
        SessionTimeouts(**given)
    assert refused.value.field == field


def sessions_idle_in_transaction(store: PostgresStore) -> int:
    with store._connection("look for sessions idle in a transaction") as session:
        (count,) = session.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction'").fetchone()
    return int(count)


class FrozenStore(PostgresStore):
    """A real PostgresStore whose payment transaction freezes (as a paused process would)
    once it has read its leases FOR SHARE, until `wake` is set."""

    def __init__(self, dsn: str, timeouts: SessionTimeouts) -> None:
        super().__init__(dsn, timeouts=timeouts)
        self.frozen, self.wake = threading.Event(), threading.Event()

    def _store_payments(self, conn: Any, batch: Sequence[Any]) -> list[StoreError | None]:
        self.frozen.set()
        self.wake.wait(timeout=60)
        return super()._store_payments(conn, batch)


def instance(store: PostgresStore, name: str) -> PostgresLeases:
    leases = leases_for(store, ClusterPolicy(name))
    assert isinstance(leases, PostgresLeases)
    return leases


def test_an_instance_frozen_in_a_payment_transaction_does_not_hold_up_a_resume(
        postgres_dsn: str) -> None:
    """Without the idle-in-transaction timeout b's acquisition would wait for as long as a
    stays frozen: here a is woken only after b took the lease."""
    quick = SessionTimeouts(idle_in_transaction_session_timeout=0.2)
    with FrozenStore(postgres_dsn, quick) as store_a, PostgresStore(postgres_dsn) as store_b:
        a, b = instance(store_a, "a"), instance(store_b, "b")
        channel = Channel()
        store_a.put(channel.record())
        lease = a.acquire(Role.SERVER, channel.txid, "a/1")
        paid = channel.pay(channel.record(), 10)
        outcome: list[object] = []

        def pay() -> None:
            try:
                outcome.extend(a.record_payments([((paid, 10, b""), lease)]))
            except StoreError as exc:
                outcome.append(exc)

        paying = threading.Thread(target=pay)
        paying.start()
        assert store_a.frozen.wait(30)  # a holds the lease row FOR SHARE, and is frozen
        taken = b.acquire(Role.SERVER, channel.txid, "b/1")  # returns while a is frozen
        assert taken.token == lease.token + 1
        assert store_b.get(Role.SERVER, channel.txid).change == channel.record().change  # type: ignore[union-attr]
        wait_until(lambda: not sessions_idle_in_transaction(store_b),
                   what="a's session to end")  # (its locks went first: b has the lease)
        store_a.wake.set()
        paying.join(30)
        (failed,) = outcome  # a's payment: not stored, so never acknowledged
        assert isinstance(failed, StoreError) and "not stored" in str(failed)
        assert store_b.payments(Role.SERVER, channel.txid) == []
        assert store_b.get(Role.SERVER, channel.txid).change == channel.record().change  # type: ignore[union-attr]
        again = a.acquire(Role.SERVER, channel.txid, "a/2")  # a's pool replaced the session
        assert again.token == taken.token + 1


def test_a_session_frozen_halfway_through_a_pipelined_batch_is_ended_by_a_heartbeat(
        postgres_dsn: str) -> None:
    """A process stopped after sending part of a pipelined batch (no Sync yet) leaves its
    session "active", waiting for the rest: the idle-in-transaction timeout never fires, so
    the other instances' heartbeats end it once it has waited longer than that timeout."""
    quick = SessionTimeouts(idle_in_transaction_session_timeout=0.2)
    with PostgresStore(postgres_dsn, timeouts=quick) as store_b:
        b = instance(store_b, "b")
        channel = Channel()
        store_b.put(channel.record())
        lease = b.acquire(Role.SERVER, channel.txid, "b/1")
        frozen = psycopg.connect(postgres_dsn, autocommit=True)
        quick.configure(frozen)
        pgconn = frozen.pgconn
        pgconn.enter_pipeline_mode()
        for sql in (b"BEGIN", b"SELECT token FROM channel_leases FOR SHARE"):
            pgconn.send_query_params(sql, None)
        pgconn.flush()  # ... and the process stops before the rest of the batch and its Sync
        taken: list[Any] = []
        taking = threading.Thread(target=lambda: taken.append(
            b.acquire(Role.SERVER, channel.txid, "b/2")))
        taking.start()

        for _ in range(300):  # b's heartbeats (each 1/3 of takeover_after when it runs)
            b.heartbeat()
            taking.join(0.1)
            if not taking.is_alive():
                break
        assert not taking.is_alive(), "the frozen session was never ended"
        assert taken[0].token == lease.token + 1
        with pytest.raises(psycopg.OperationalError):
            pgconn.exit_pipeline_mode()
            frozen.execute("SELECT 1")
        frozen.close()


def test_the_store_works_again_after_the_server_restarts(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "psycopg.pool"), PostgresServer(fsync=False) as server:
        dsn = server.dsn(server.new_database())
        with PostgresStore(dsn) as store:
            channel = Channel()
            store.put(channel.record())
            for _ in range(3):  # several pooled connections, all closed by the restart
                threads = [threading.Thread(target=store.get, args=(Role.SERVER, channel.txid))
                           for _ in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            server.restart()
            paid = channel.pay(channel.record(), 10)
            # the first use after the restart: no stale connection, no error
            assert store.record_payments([(paid, 10, b"")]) == [None]
            server.crash()  # and after a crash (WAL replayed at the restart)
            server.restart()
            again = channel.pay(paid, 10)
            assert store.record_payments([(again, 10, b"")]) == [None]
            assert [p.amount for p in store.payments(Role.SERVER, channel.txid)] == [10, 10]
    kinds = [record.msg for record in caplog.records if record.name == "psycopg.pool"]
    assert len(kinds) == len(set(kinds))  # the pool's warnings: one of each kind, not a flood

"""PostgresStore: schema versions, instances sharing a database, a server crash, and one clear
line (never the password) for each way of failing to open. A real PostgreSQL throughout."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import psycopg
import pytest

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import codec, open_store
from bitcoind_paychan.store import postgres_schema as schema
from bitcoind_paychan.store.codec import SCHEMA_VERSION
from bitcoind_paychan.store.postgres import PostgresStore, describe, redact
from regtest.ports import free_port
from regtest.postgres import PostgresServer
from tests.store.helpers import Channel, assert_same


def refusal(dsn: str) -> str:
    """The one line a store that cannot open says."""
    with pytest.raises(StoreError) as failed:
        PostgresStore(dsn)
    message = str(failed.value)
    assert "\n" not in message
    return message


def test_a_new_database_gets_the_current_schema_and_says_so(
        postgres_server: PostgresServer, postgres_dsn: str) -> None:
    with open_store(engine="postgresql", dsn=postgres_dsn) as store:
        info = store.info()
    assert (info.engine, info.schema_version) == ("postgresql", SCHEMA_VERSION)
    assert postgres_server.password not in info.location and "127.0.0.1" in info.location
    database = postgres_dsn.rsplit("/", 1)[1].split("?")[0]
    assert postgres_server.sql("SELECT version FROM schema_version", database) == str(
        SCHEMA_VERSION)


def test_a_store_of_a_newer_schema_is_refused(postgres_server: PostgresServer) -> None:
    database = postgres_server.new_database()
    PostgresStore(postgres_server.dsn(database)).close()
    postgres_server.sql(f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}", database)
    message = refusal(postgres_server.dsn(database))
    assert f"store schema version {SCHEMA_VERSION + 1}, newer than this" in message
    assert "upgrade bitcoind-paychan" in message


def test_a_version_4_database_is_upgraded_keeping_its_log(
        postgres_server: PostgresServer) -> None:
    database = postgres_server.new_database()
    for statement in schema.CREATE:
        postgres_server.sql(statement, database)
    ch = Channel()
    postgres_server.sql("INSERT INTO schema_version VALUES (4); INSERT INTO payment_log (role, "
                        f"contract_txid, seq, amount, change_after, info) VALUES ('server', "
                        f"'{ch.txid}', 1, 1000, 99000, '')", database)
    before = int(time.time())
    with PostgresStore(postgres_server.dsn(database)) as store:
        assert store.info().schema_version == SCHEMA_VERSION
        rec = ch.pay(ch.record(), 1000)
        store.put(rec)
        store.record_payment(ch.pay(rec, 5), 5)
        new, old = store.payments(Role.SERVER, ch.txid)
        assert (old.amount, old.stored_at) == (1000, None)
        assert new.amount == 5 and (new.stored_at or 0) >= before
        assert store.payments(Role.SERVER, since=before) == [new]


def test_a_version_5_database_gets_re_anchoring_keeping_its_channels(
        postgres_server: PostgresServer) -> None:
    """Schema 6's step alone (it may be renumbered at a merge): the channels stored before it
    read back as generation 0 with nothing pending, keyed as before, and take re-anchors."""
    database = postgres_server.new_database()
    old = [*schema.CREATE, *(sql for step in schema.MIGRATIONS[:-1] for sql in step)]
    ch = Channel()
    record = ch.pay(ch.record(), 1_000)
    columns = codec.CHANNEL_COLUMNS[:-len(codec.REANCHOR_COLUMNS)]
    with psycopg.connect(postgres_server.dsn(database), autocommit=True) as conn:
        for statement in old:
            conn.execute(statement)
        conn.execute(f"INSERT INTO channels ({', '.join(columns)}) VALUES "
                     f"({', '.join(['%s'] * len(columns))})",
                     codec.encode(record)[:len(columns)])
        conn.execute(f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION - 1})")
    with PostgresStore(postgres_server.dsn(database)) as store:
        assert store.info().schema_version == SCHEMA_VERSION
        got = store.get(Role.SERVER, ch.txid)
        assert_same(got, record)
        assert got is not None and (got.generation, got.pending) == (0, None)
        assert store.generations(Role.SERVER, ch.txid) == []
        store.record_payment(ch.pay(record, 5), 5)


def test_instances_opening_a_new_database_together_create_it_once(
        postgres_server: PostgresServer, postgres_dsn: str) -> None:
    opened: list[PostgresStore] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresStore(postgres_dsn))
        except BaseException as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and len(opened) == 4
    ch = Channel()
    opened[0].put(ch.record())
    assert_same(opened[3].get(Role.SERVER, ch.txid), ch.record())  # one database, shared
    for store in opened:
        store.close()
    database = postgres_dsn.rsplit("/", 1)[1].split("?")[0]
    assert postgres_server.sql("SELECT count(*) FROM schema_version", database) == "1"


def test_instances_modifying_one_channel_lose_no_update(postgres_dsn: str) -> None:
    ch = Channel()
    with PostgresStore(postgres_dsn) as first, PostgresStore(postgres_dsn) as second:
        first.put(ch.record())

        def count(store: PostgresStore) -> None:
            for _ in range(25):
                store.modify(Role.SERVER, ch.txid, lambda r: replace(r, payments=r.payments + 1))

        threads = [threading.Thread(target=count, args=(s,)) for s in (first, second, first)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert first.get(Role.SERVER, ch.txid).payments == 75  # type: ignore[union-attr]


def test_an_instance_never_raises_the_change_another_lowered(postgres_dsn: str) -> None:
    ch = Channel()
    with PostgresStore(postgres_dsn) as first, PostgresStore(postgres_dsn) as second:
        first.put(ch.record())
        stale = ch.pay(ch.record(), 50)
        paid = ch.pay(stale, 50)
        first.record_payment(paid, 100)
        with pytest.raises(StoreError, match="change 99950 above the stored 99900"):
            second.record_payment(stale, 50)
        with pytest.raises(StoreError, match="above the stored 99900"):
            second.put(stale)
        assert_same(second.get(Role.SERVER, ch.txid), paid)
        assert [e.amount for e in second.payments(Role.SERVER, ch.txid)] == [100]


def test_an_acknowledged_payment_survives_a_server_crash() -> None:
    ch = Channel()
    with PostgresServer() as server:  # its own server (fsync on): this test crashes it
        dsn = server.dsn(server.new_database())
        with PostgresStore(dsn) as store:
            store.put(ch.record())
            paid = ch.pay(ch.record(), 700)
            store.record_payment(paid, 700, b"acknowledged")
            server.crash()
        server.restart()
        with PostgresStore(dsn) as store:
            assert_same(store.get(Role.SERVER, ch.txid), paid)
            assert [e.info for e in store.payments(Role.SERVER, ch.txid)] == [b"acknowledged"]


def test_a_read_only_store_sees_and_refuses_to_write(postgres_dsn: str) -> None:
    ch = Channel()
    with pytest.raises(StoreError, match="holds no bitcoind-paychan store yet"):
        PostgresStore(postgres_dsn, read_only=True)
    with PostgresStore(postgres_dsn) as owner, PostgresStore(postgres_dsn,
                                                             read_only=True) as reader:
        owner.put(ch.record())
        assert_same(reader.get(Role.SERVER, ch.txid), ch.record())
        with pytest.raises(StoreError, match="read-only"):
            reader.put(ch.record())


# -- one clear line for each way of failing, never the password -------------------------------


def test_a_bad_dsn_is_refused_without_its_password() -> None:
    for dsn in ("host=db password=hunter2hunter2 oops", "postgresql://u:hunter2 hunter2@db/x"):
        message = refusal(dsn)
        assert "not a PostgreSQL connection string" in message and "hunter2" not in message


def test_an_unreachable_server_is_named_with_what_to_do(postgres_server: PostgresServer
                                                        ) -> None:
    dsn = f"postgresql://paychan:secret-pw-1@127.0.0.1:{free_port()}/paychan"
    message = refusal(dsn)
    assert "Connection refused" in message and "not running or not listening" in message
    assert "secret-pw-1" not in message and describe(dsn) in message


def test_wrong_credentials_and_a_missing_database(postgres_server: PostgresServer) -> None:
    message = refusal(postgres_server.dsn(password="wrong-password-42"))
    assert "password authentication failed" in message and "wrong user or password" in message
    assert "wrong-password-42" not in message
    message = refusal(postgres_server.dsn("no_such_db"))
    assert 'database "no_such_db" does not exist' in message and "createdb" in message
    assert postgres_server.password not in message


def test_missing_privileges_are_refused_at_open(postgres_server: PostgresServer) -> None:
    role = postgres_server.new_role("role-password-7")
    database = postgres_server.new_database()
    message = refusal(postgres_server.dsn(database, role, "role-password-7"))
    assert "permission denied for schema public" in message and "GRANT" in message
    PostgresStore(postgres_server.dsn(database)).close()  # the owner creates the store
    message = refusal(postgres_server.dsn(database, role, "role-password-7"))
    assert "may not SELECT, INSERT, UPDATE, DELETE on table channels" in message
    assert "GRANT" in message and "role-password-7" not in message
    postgres_server.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                        f"TO {role}", database)
    PostgresStore(postgres_server.dsn(database, role, "role-password-7")).close()


def test_redact_hides_passwords_in_both_forms() -> None:
    assert redact("x password=abc y") == "x password=*** y"
    assert redact("postgresql://me:p%40ss@h/db") == "postgresql://me:***@h/db"
    assert "longsecret" not in redact('bad "longsecret"', "password=longsecret host=h")

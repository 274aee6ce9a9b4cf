"""SQLiteStore: durability, file protection, schema versions, threads."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import fields, replace
from pathlib import Path

import pytest

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import SQLiteStore, codec, open_store
from bitcoind_paychan.store import sqlite_schema as schema
from tests.store.helpers import Channel, assert_same


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "channels.db"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """A permissive umask, so only the store's own care keeps files private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_every_record_field_has_columns() -> None:
    # A new ChannelRecord or Contract field fails here until codec.py stores it.
    stored = {
        "role": ["role"], "contract_tx": ["contract_tx"], "key": ["key_secret"],
        "change": ["change"], "signature": ["signature"], "status": ["status"],
        "refund_tx": ["refund_tx"], "settlement_tx": ["settlement_tx"], "peer": ["peer"],
        "payments": ["payments"], "version": ["version"], "client_pub": ["client_pub"],
        "server_pub": ["server_pub"], "expiry": ["expiry"], "value": ["value"],
        "outpoint": ["contract_txid", "outpoint_index", "current_txid"],
        "generation": ["generation"], "origin": ["contract_txid", "current_txid"],
        "pending": list(codec.REANCHOR_COLUMNS[2:]),
    }
    names = {f.name for f in fields(ChannelRecord) if f.name != "contract"}
    assert names | {f.name for f in fields(Contract)} == set(stored)
    assert {c for cols in stored.values() for c in cols} == set(codec.CHANNEL_COLUMNS)


def test_every_chain_state_field_has_a_column() -> None:
    # A new ChainState field fails here until codec.py stores it.
    names = [f.name for f in fields(ChainState)]
    assert list(codec.CHAIN_COLUMNS) == [*codec.KEY_COLUMNS, *names]
    state = ChainState(1, b"x", 3, 4, 5, 6)
    assert all(getattr(state, n) != getattr(ChainState(), n) for n in names)
    row = codec.encode_chain(Role.CLIENT, "ab" * 32, state)
    assert codec.decode_chain(row[len(codec.KEY_COLUMNS):]) == state


def test_survives_close_and_reopen(path: Path) -> None:
    ch = Channel()
    rec = ch.full_record(Role.CLIENT, ch.record().status)
    with open_store(path) as store:
        store.put(rec)
        rec = ch.pay(rec, 42)
        store.record_payment(rec, 42, b"note")
    with SQLiteStore(str(path)) as store:
        assert_same(store.get(Role.CLIENT, ch.txid), rec)
        assert [(e.amount, e.info) for e in store.payments(Role.CLIENT)] == [
            (42, b"note"), (12_345, b"")]  # and what full_record says was paid on opening


def test_chain_state_and_meta_survive_reopen(path: Path) -> None:
    ch = Channel()
    state = ChainState(contract_height=101, spender=b"tx" * 50, spender_height=150,
                       broadcast_height=149, fee_rate=1_000)
    with SQLiteStore(path) as store:
        store.put(ch.record(Role.CLIENT))
        store.put_chain_state(Role.CLIENT, ch.txid, state)
        store.set_meta("tip", "150:00ff")
        store.set_meta("tip", "151:0100")
        rec = store.modify(Role.CLIENT, ch.txid,
                           lambda r: replace(r, status=ChannelStatus.CLOSING))
    with SQLiteStore(path) as store:
        assert store.chain_state(Role.CLIENT, ch.txid) == state
        assert store.get_meta("tip") == "151:0100"
        assert_same(store.get(Role.CLIENT, ch.txid), rec)


def test_wal_and_full_sync(path: Path) -> None:
    with SQLiteStore(path) as store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)


CHILD = textwrap.dedent("""
    import sys
    from bitcoind_paychan.channel.records import Role
    from bitcoind_paychan.store import SQLiteStore

    store = SQLiteStore(sys.argv[1])
    rec = store.get(Role.SERVER, sys.argv[2])
    while True:
        rec = rec.with_payment(rec.change - 1, b"sig%d" % rec.change)
        store.record_payment(rec, 1)
        print(rec.change, flush=True)
""")


def test_payment_survives_kill_9_right_after_it_was_stored(path: Path) -> None:
    ch = Channel()
    with SQLiteStore(path) as store:
        store.put(ch.record())
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), ch.txid],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    printed = [child.stdout.readline() for _ in range(60)]
    child.send_signal(signal.SIGKILL)
    # Read on through child.stdout: readline() may have buffered lines that communicate(),
    # which reads the pipe itself, would never see.
    out = child.stdout.read()
    err = child.stderr.read() if child.stderr else ""
    assert child.wait(30) == -signal.SIGKILL, err
    last = int((printed + out.splitlines())[-1])
    with SQLiteStore(path) as store:
        rec = store.get(Role.SERVER, ch.txid)
        assert rec is not None
        assert rec.change in (last, last - 1)  # the one after may have landed before the kill
        assert rec.payments == 100_000 - rec.change
        assert len(store.payments(Role.SERVER)) == rec.payments


def test_files_created_0600_whatever_the_umask(path: Path, umask_zero: None) -> None:
    ch = Channel()
    with SQLiteStore(path) as store:
        store.put(ch.record())
        store.record_payment(ch.pay(ch.record(), 1), 1)
        for name in ("", "-wal", "-shm"):
            assert (Path(f"{path}{name}").stat().st_mode & 0o777) == 0o600, name


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_refuses_a_file_others_can_access(path: Path, mode: int) -> None:
    SQLiteStore(path).close()
    path.chmod(mode)
    name = re.escape(str(path))
    with pytest.raises(StoreError, match=f"{name}.*mode {mode:04o}.*`chmod 600 {name}`"):
        SQLiteStore(path)


def test_refuses_an_exposed_wal_file(path: Path) -> None:
    SQLiteStore(path).close()
    wal = Path(f"{path}-wal")
    wal.write_bytes(b"")
    wal.chmod(0o644)
    with pytest.raises(StoreError, match=re.escape(f"chmod 600 {wal}")):
        SQLiteStore(path)


def test_refuses_a_newer_schema(path: Path) -> None:
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {codec.SCHEMA_VERSION + 1}")
    newer = codec.SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match=rf"schema version {newer}, newer.*upgrade bitcoind-"):
        SQLiteStore(path)


def _schema_sql(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT sql FROM sqlite_schema WHERE sql NOT NULL")}


def _old_store(path: Path, version: int, channels: list[ChannelRecord],
               log: list[tuple[ChannelRecord, int, bytes]]) -> None:
    """A store file as release `version` (1 to 3) wrote it: its tables, its rows (channels
    stored whole, the initial payment not logged, one sequence across the whole log)."""
    with closing(sqlite3.connect(path)) as conn:
        for sql in (*schema.V1, *(schema.V2_TABLES if version >= 2 else ()),
                    *(schema.V3_INDEXES if version >= 3 else ())):
            conn.execute(sql)
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {version}")
        old_columns = codec.CHANNEL_COLUMNS[:-len(codec.REANCHOR_COLUMNS)]
        columns, marks = ", ".join(old_columns), ", ".join("?" * len(old_columns))
        conn.executemany(f"INSERT OR REPLACE INTO channels ({columns}) VALUES ({marks})",
                         [codec.encode(rec)[:len(old_columns)] for rec in channels])
        conn.executemany("INSERT INTO payment_log (role, contract_txid, amount, change_after, "
                         "info) VALUES (?, ?, ?, ?, ?)",
                         [(rec.role.value, rec.contract_txid, amount, rec.change, info)
                          for rec, amount, info in log])
        if version >= 2:
            conn.execute("INSERT INTO meta VALUES ('synced:server', '5:00')")
        conn.commit()
    path.chmod(0o600)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_upgrades_an_old_file_keeping_its_data(path: Path, tmp_path: Path, version: int) -> None:
    # A self-paying daemon's store: one contract under both roles, payments interleaved.
    ch = Channel()
    server, client = ch.pay(ch.record(Role.SERVER), 1000), ch.pay(ch.record(Role.CLIENT), 1000)
    log = []
    for amount in (10, 20, 30):
        client = ch.pay(client, amount)
        server = ch.pay(server, amount)
        log += [(client, amount, b"c%d" % amount), (server, amount, b"s%d" % amount)]
    unpaid = Channel().record(Role.CLIENT)
    _old_store(path, version, [server, client, unpaid], log)
    with SQLiteStore(path) as store:
        assert_same(store.get(Role.SERVER, ch.txid), server)
        assert_same(store.get(Role.CLIENT, unpaid.contract_txid), unpaid)
        for role, prefix in ((Role.SERVER, b"s"), (Role.CLIENT, b"c")):
            entries = store.payments(role, ch.txid)
            assert [(e.seq, e.amount, e.change_after, e.info) for e in entries] == [
                (4, 30, 98_940, prefix + b"30"), (3, 20, 98_970, prefix + b"20"),
                (2, 10, 98_990, prefix + b"10"), (1, 1000, 99_000, b"")]
            assert len(entries) == store.get(role, ch.txid).payments  # type: ignore[union-attr]
            assert {e.stored_at for e in entries} == {None}  # logged before version 5
        assert store.payments(Role.CLIENT, unpaid.contract_txid) == []
        assert store.get_meta("synced:server") == ("5:00" if version >= 2 else None)
        assert store.history() == []
        assert [r.contract_txid for r in store.channels(Role.CLIENT, [ChannelStatus.OPEN])
                ] == sorted([ch.txid, unpaid.contract_txid])  # through the status index
        assert store.chain_state(Role.SERVER, ch.txid) == ChainState()
        store.modify(Role.SERVER, ch.txid, lambda r: replace(r, status=ChannelStatus.SETTLED))
        store.forget(Role.SERVER, ch.txid)
        (summary,) = store.history()
        assert summary.opened_at is None and summary.paid == 1060 and summary.payments == 4
        assert len(store.payments(Role.SERVER, ch.txid)) == 4
        before = int(time.time())
        store.record_payment(client := ch.pay(client, 5), 5)
        newest = store.payments(Role.CLIENT, ch.txid)[0]
        assert (newest.amount, newest.seq) == (5, 5) and (newest.stored_at or 0) >= before
        assert [e.amount for e in store.payments(Role.CLIENT, since=before)] == [5]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (codec.SCHEMA_VERSION,)
    SQLiteStore(tmp_path / "new.db").close()
    assert _schema_sql(path) == _schema_sql(tmp_path / "new.db")  # as if created new


def test_a_failed_upgrade_changes_nothing(path: Path) -> None:
    ch = Channel()
    _old_store(path, 3, [ch.record()], [])
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE history (x)")  # in the way of version 4's table
        conn.commit()
    before = _schema_sql(path)
    with pytest.raises(StoreError, match="history already exists"):
        SQLiteStore(path)
    assert _schema_sql(path) == before
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)


def test_refuses_other_files(path: Path, tmp_path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="some other program"):
        SQLiteStore(path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database, not at all" * 100)
    junk.chmod(0o600)
    with pytest.raises(StoreError, match=f"open the store in {re.escape(str(junk))}.*not a"):
        SQLiteStore(junk)
    with pytest.raises(StoreError, match="directory exists"):
        SQLiteStore(tmp_path / "missing" / "channels.db")


def test_concurrent_payments_from_8_threads(path: Path) -> None:
    channels, per_thread = [Channel() for _ in range(8)], 40
    errors: list[BaseException] = []
    start = threading.Barrier(len(channels))

    with SQLiteStore(path) as store:
        for ch in channels:
            store.put(ch.record())

        def pay(ch: Channel) -> None:
            try:
                start.wait()
                rec = ch.record()
                for _ in range(per_thread):
                    rec = rec.with_payment(rec.change - 10, b"sig")
                    store.record_payment(rec, 10)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=pay, args=(ch,)) for ch in channels]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for ch in channels:
            rec = store.get(Role.SERVER, ch.txid)
            assert rec is not None
            assert (rec.change, rec.payments) == (100_000 - 10 * per_thread, per_thread)
        log = store.payments(Role.SERVER)
        assert len({(e.contract_txid, e.seq) for e in log}) == len(log) == 8 * per_thread


# -- one process per store -------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from bitcoind_paychan.store import SQLiteStore

    store = SQLiteStore(sys.argv[1])
    print("holding", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    store.close()
""")
OPENER = textwrap.dedent("""
    import sys
    from bitcoind_paychan.errors import StoreError
    from bitcoind_paychan.store import SQLiteStore

    try:
        SQLiteStore(sys.argv[1])
    except StoreError as exc:
        sys.exit(f"error: {exc}")
""")


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir()) if p.is_file()}


def test_a_second_process_is_refused_and_changes_nothing(path: Path) -> None:
    ch = Channel()
    with SQLiteStore(path) as store:
        store.put(ch.record())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        before = _files(path)
        second = subprocess.run([sys.executable, "-c", OPENER, str(path)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert second.stderr == (f"error: the store {path} is in use by process {holder.pid} "
                                 f"(it holds {path}.lock); one process owns a store: stop that "
                                 "one first, or open the store read-only to look at it\n")
        assert _files(path) == before
        with pytest.raises(StoreError, match=f"in use by process {holder.pid}"):
            SQLiteStore(path)
    finally:
        holder.communicate("", timeout=30)
    with SQLiteStore(path) as store:  # released when the owner closed it
        assert_same(store.get(Role.SERVER, ch.txid), ch.record())


def test_the_lock_dies_with_its_process(path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
    assert Path(f"{path}.lock").read_text() == f"{holder.pid}\n"
    holder.kill()
    holder.wait(30)
    SQLiteStore(path).close()  # a crashed owner leaves no stale lock behind


def test_one_store_object_per_file_in_a_process(path: Path) -> None:
    first = SQLiteStore(path)
    with pytest.raises(StoreError, match=rf"in use by this process \(pid {os.getpid()}"):
        SQLiteStore(path)
    first.close()
    first.close()
    SQLiteStore(path).close()
    assert (Path(f"{path}.lock").stat().st_mode & 0o777) == 0o600


def test_read_only_looks_while_the_owner_runs(path: Path) -> None:
    ch = Channel()
    with SQLiteStore(path) as owner:
        owner.put(ch.record())
        with SQLiteStore(path, read_only=True) as reader:
            assert reader.read_only
            paid = ch.pay(ch.record(), 5)
            owner.record_payment(paid, 5)
            assert_same(reader.get(Role.SERVER, ch.txid), paid)  # sees what is committed
            assert [e.amount for e in reader.payments(Role.SERVER)] == [5]
            with pytest.raises(StoreError, match=f"cannot store server channel .*{path} is "
                                                 "open read-only"):
                reader.put(ch.record())
            with pytest.raises(StoreError, match="read-only"):
                reader.set_meta("tip", "1:00")
        owner.record_payment(ch.pay(paid, 1), 1)  # the owner is unaffected


def test_read_only_needs_an_existing_current_store(path: Path) -> None:
    with pytest.raises(StoreError, match=f"there is no store {path} to read"):
        SQLiteStore(path, read_only=True)
    assert not path.exists()
    _old_store(path, 3, [], [])
    with pytest.raises(StoreError, match=r"schema version 3.*open it once read-write"):
        SQLiteStore(path, read_only=True)

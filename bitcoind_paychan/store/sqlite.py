"""SQLiteStore: the durable ChannelStore in one SQLite file.

WAL with synchronous=FULL: every committed write is fsynced before the call returns, so it
survives a crash and a power loss. The file holds the client's private channel keys: it (and its
-wal/-shm files) is created mode 0600, and a file that group or others can access is refused.
One connection, guarded by a lock, serves every thread. One process owns a store: it holds an
exclusive lock on `<store>.lock` (with its pid inside) from open to close, and a second opener is
refused. Others may look at a store while its owner runs by opening it `read_only`. Schema and
codec: `schema.py`; file protection and the lock: `files.py`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import files, schema
from bitcoind_paychan.store.base import (
    ChannelSummary,
    Payment,
    PaymentLogEntry,
    WatchedChannel,
    change_increased,
    closed,
    discard_refusal,
    not_discardable,
    not_final,
    not_stored,
    other_channel,
    summarize,
    unknown_channel,
)

MEMORY = ":memory:"
BUSY_TIMEOUT = 10.0  # seconds to wait for another process's write lock
_BATCH = 500  # contract txids per query (below SQLite's limit on bound parameters)

_HINTS = {
    "SQLITE_FULL": "free some disk space",
    "SQLITE_BUSY": "another process is writing to the store; stop it or try again",
    "SQLITE_READONLY": "the file or its directory is not writable by this user",
    "SQLITE_CANTOPEN": "check that the directory exists and is writable",
    "SQLITE_NOTADB": "the file is not a bitcoind-paychan store",
    "SQLITE_CORRUPT": "the file is damaged: restore it from a backup",
    "SQLITE_IOERR": "the disk failed a read or write: check it",
}


class SQLiteStore:
    """The ChannelStore contract in an SQLite file (or ":memory:", for tests).

    The opener owns the file until `close` (StoreError if another process or store object
    owns it). `read_only=True` takes no ownership, so it works while the owner runs: it sees
    what the owner has committed and refuses every write; it needs an existing store of the
    current schema.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self._name = str(path)
        self._read_only = read_only
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._owner: files.StoreLock | None = None
        created = False
        if self._name != MEMORY:
            if read_only and not Path(path).exists():
                raise StoreError(f"there is no store {path} to read; check the path")
            if not read_only:
                self._owner = files.StoreLock(Path(path))
            try:
                created = not read_only and files.create_private(Path(path))
                for file in (Path(path), *files.sidecars(path)):
                    files.check_private(file)
            except BaseException:
                self._release()
                raise
        with self._open_errors("open the store"):
            try:
                conn = _connect(self._name, read_only)
            except BaseException:
                self._release()
                raise
        self._conn = conn
        if self._name != MEMORY:
            for file in files.sidecars(path):
                files.restrict(file)
            if created:
                files.fsync_dir(Path(path).parent)

    @property
    def path(self) -> str:
        return self._name

    @property
    def read_only(self) -> bool:
        return self._read_only

    # -- the contract ----------------------------------------------------------------------

    def put(self, record: ChannelRecord) -> None:
        key = (Role(record.role), record.contract_txid)
        with self._transaction(f"store {key[0]} channel {key[1]}") as conn:
            self._put(conn, record, int(time.time()))

    def put_many(self, records: Iterable[ChannelRecord]) -> None:
        now = int(time.time())
        with self._transaction("store channels") as conn:
            for record in records:
                self._put(conn, record, now)

    def _put(self, conn: sqlite3.Connection, record: ChannelRecord, now: int) -> None:
        key = (Role(record.role), record.contract_txid)
        times = (now, now if record.status.final else None)
        new = conn.execute(schema.CHANGE, key).fetchone() is None
        if conn.execute(schema.PUT, (*schema.encode(record), *times)).rowcount != 1:
            (stored,) = conn.execute(schema.CHANGE, key).fetchone()
            raise change_increased(*key, stored, record.change)
        if new:
            conn.execute(schema.UNARCHIVE, key)  # stored again: no longer history
            if record.paid and conn.execute(schema.LOGGED, key).fetchone() is None:
                conn.execute(schema.LOG, (*key, record.payments, record.paid,
                                          record.change, b""))

    def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"") -> None:
        refusal = self.record_payments([(record, amount, info)])[0]
        if refusal is not None:
            raise refusal

    def record_payments(self, batch: Sequence[Payment]) -> list[StoreError | None]:
        what = (f"record {len(batch)} payment(s) (they are not stored, so they must not be "
                "acknowledged)")
        with self._transaction(what) as conn:
            return [_record_one(conn, *payment) for payment in batch]

    def get(self, role: Role, contract_txid: str) -> ChannelRecord | None:
        with self._connection(f"read {role} channel {contract_txid}") as conn:
            sql = f"{schema.SELECT} WHERE role = ? AND contract_txid = ?"
            row = conn.execute(sql, (Role(role).value, contract_txid)).fetchone()
        return None if row is None else schema.decode(row, self._name)

    def channels(
        self, role: Role | None = None, statuses: Iterable[ChannelStatus] | None = None
    ) -> list[ChannelRecord]:
        wanted = None if statuses is None else sorted({ChannelStatus(s).value for s in statuses})
        where, args = _where(role=None if role is None else [Role(role).value], status=wanted)
        source = schema.SELECT
        if role is not None and wanted is not None:  # the planner would walk the whole role
            source += f" INDEXED BY {schema.STATUS_INDEX}"  # for the ORDER BY
        sql = f"{source} WHERE {where} ORDER BY role, contract_txid"
        with self._connection("list channels") as conn:
            rows = conn.execute(sql, args).fetchall()
        return [schema.decode(row, self._name) for row in rows]

    def payments(
        self, role: Role, contract_txid: str | None = None, limit: int | None = None
    ) -> list[PaymentLogEntry]:
        sql, args = f"{schema.PAYMENTS} WHERE role = ?", [Role(role).value]
        if contract_txid is not None:
            sql += " AND contract_txid = ?"
            args.append(contract_txid)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._connection("read the payment log") as conn:
            rows = conn.execute(sql, (*args, -1 if limit is None else max(limit, 0))).fetchall()
        return [PaymentLogEntry(Role(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def modify(
        self, role: Role, contract_txid: str, change: Callable[[ChannelRecord], ChannelRecord]
    ) -> ChannelRecord:
        role = Role(role)
        with self._transaction(f"modify {role} channel {contract_txid}") as conn:
            return self._modify(conn, role, contract_txid, change)

    def modify_many(
        self, role: Role, changes: Mapping[str, Callable[[ChannelRecord], ChannelRecord]]
    ) -> None:
        role = Role(role)
        with self._transaction(f"modify {len(changes)} {role} channels") as conn:
            for contract_txid, change in changes.items():
                self._modify(conn, role, contract_txid, change)

    def _modify(self, conn: sqlite3.Connection, role: Role, contract_txid: str,
                change: Callable[[ChannelRecord], ChannelRecord]) -> ChannelRecord:
        sql = f"{schema.SELECT} WHERE role = ? AND contract_txid = ?"
        row = conn.execute(sql, (role.value, contract_txid)).fetchone()
        if row is None:
            raise unknown_channel(role, contract_txid, "modify the record")
        old = schema.decode(row, self._name)
        new = change(old)
        if (Role(new.role), new.contract_txid) != (role, contract_txid):
            raise other_channel(role, contract_txid, new)
        if new.change > old.change:
            raise change_increased(role, contract_txid, old.change, new.change)
        now = int(time.time())
        conn.execute(schema.PUT, (*schema.encode(new), now, now if new.status.final else None))
        return new

    def chain_state(self, role: Role, contract_txid: str) -> ChainState:
        with self._connection(f"read the chain state of {role} channel {contract_txid}") as conn:
            row = conn.execute(schema.CHAIN, (Role(role).value, contract_txid)).fetchone()
        if row is None:
            raise unknown_channel(role, contract_txid, "read the chain state")
        return schema.decode_chain(row)

    def put_chain_state(self, role: Role, contract_txid: str, state: ChainState) -> None:
        key = (Role(role).value, contract_txid)
        with self._transaction(f"store the chain state of {role} channel {contract_txid}") as c:
            if c.execute(schema.CHANGE, key).fetchone() is None:
                raise unknown_channel(role, contract_txid, "store the chain state")
            c.execute(schema.PUT_CHAIN, schema.encode_chain(role, contract_txid, state))

    def put_chain_states(self, role: Role, states: Mapping[str, ChainState],
                         meta: Mapping[str, str] | None = None) -> None:
        role = Role(role)
        with self._transaction(f"store the chain state of {len(states)} {role} channels") as c:
            stored: set[str] = set()
            txids = list(states)
            for start in range(0, len(txids), _BATCH):
                chunk = txids[start : start + _BATCH]
                sql = (f"SELECT contract_txid FROM channels WHERE role = ? AND contract_txid "
                       f"IN ({', '.join('?' * len(chunk))})")
                stored.update(r[0] for r in c.execute(sql, (role.value, *chunk)))
            c.executemany(schema.PUT_CHAIN, [schema.encode_chain(role, txid, state)
                                             for txid, state in states.items() if txid in stored])
            c.executemany(schema.SET_META, list((meta or {}).items()))

    def watched(self, role: Role, statuses: Iterable[ChannelStatus]) -> list[WatchedChannel]:
        wanted = sorted({ChannelStatus(s).value for s in statuses})
        sql = schema.WATCHED.format(index=schema.STATUS_INDEX,
                                    live=", ".join("?" * len(wanted)))
        with self._connection(f"list the live {role} channels") as conn:
            rows = conn.execute(sql, (Role(role).value, *wanted)).fetchall()
        return [WatchedChannel(txid, index, expiry, ChannelStatus(status),
                               None if tx is None else bytes(tx))
                for txid, index, expiry, status, tx in rows]

    def load(self, role: Role, contract_txids: Iterable[str]
             ) -> dict[str, tuple[ChannelRecord, ChainState]]:
        txids, found = list(dict.fromkeys(contract_txids)), {}
        width = len(schema.CHANNEL_COLUMNS)
        with self._connection(f"read {len(txids)} {role} channels") as conn:
            for start in range(0, len(txids), _BATCH):
                chunk = txids[start : start + _BATCH]
                sql = schema.LOAD.format(keys=", ".join("?" * len(chunk)))
                for row in conn.execute(sql, (Role(role).value, *chunk)):
                    record = schema.decode(row[:width], self._name)
                    found[record.contract_txid] = (record, schema.decode_chain(row[width:]))
        return found

    def chain_heights_from(self, role: Role, height: int) -> list[str]:
        with self._connection(f"list the {role} channels a reorg may touch") as conn:
            rows = conn.execute(schema.HEIGHTS_FROM, (Role(role).value, height, height, height))
            return [r[0] for r in rows]

    def get_meta(self, key: str) -> str | None:
        with self._connection(f"read the setting {key!r}") as conn:
            row = conn.execute(schema.GET_META, (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction(f"store the setting {key!r}") as conn:
            conn.execute(schema.SET_META, (key, value))

    def forget(self, role: Role, contract_txid: str) -> None:
        key = (Role(role).value, contract_txid)
        with self._transaction(f"forget {role} channel {contract_txid}") as conn:
            row = conn.execute(f"{schema.SELECT} WHERE role = ? AND contract_txid = ?",
                               key).fetchone()
            if row is None:
                return
            record = schema.decode(row, self._name)
            if not record.status.final:
                raise not_final(Role(role), contract_txid, record.status)
            state = schema.decode_chain(conn.execute(schema.CHAIN, key).fetchone())
            opened_at, closed_at = conn.execute(schema.TIMES, key).fetchone()
            summary = summarize(record, state, opened_at, closed_at or int(time.time()))
            conn.execute(schema.ARCHIVE, schema.encode_summary(summary))
            conn.execute(schema.DELETE, key)  # the chain state follows (ON DELETE CASCADE)

    def history(
        self, role: Role | None = None, contract_txid: str | None = None
    ) -> list[ChannelSummary]:
        where, args = _where(role=None if role is None else [Role(role).value],
                             contract_txid=None if contract_txid is None else [contract_txid])
        sql = f"{schema.HISTORY} WHERE {where} ORDER BY closed_at DESC, rowid DESC"
        with self._connection("read the history") as conn:
            rows = conn.execute(sql, args).fetchall()
        return [schema.decode_summary(row) for row in rows]

    def prune_history(self, before: int) -> int:
        with self._transaction("prune the history") as conn:
            conn.execute(schema.PRUNE_LOG, (before,))
            return int(conn.execute(schema.PRUNE, (before,)).rowcount)

    def discard(self, role: Role, contract_txid: str) -> None:
        key = (Role(role).value, contract_txid)
        with self._transaction(f"discard {role} channel {contract_txid}") as conn:
            row = conn.execute(schema.STATUS, key).fetchone()
            if row is None:
                return
            state = schema.decode_chain(conn.execute(schema.CHAIN, key).fetchone())
            why = discard_refusal(ChannelStatus(row[0]), state)
            if why:
                raise not_discardable(Role(role), contract_txid, why)
            conn.execute(schema.DELETE_LOG, key)
            conn.execute(schema.DELETE, key)

    @property
    def is_open(self) -> bool:
        """False once `close` was called."""
        return self._conn is not None

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            try:
                if conn is not None:
                    with self._open_errors("close the store"):
                        conn.close()
            finally:
                self._release()

    def _release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _open_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"could not {what} in {self._name}: {e}{_hint(e)}") from e

    @contextmanager
    def _connection(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; sqlite3 errors become StoreErrors."""
        with self._lock, self._open_errors(what):
            if self._conn is None:
                raise closed()
            yield self._conn

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed (and fsynced) on exit, rolled back on any error."""
        with self._connection(what) as conn:
            if self._read_only:
                raise StoreError(f"cannot {what}: {self._name} is open read-only (for looking "
                                 "while its owner runs); only the process that owns it writes")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise


def _record_one(conn: sqlite3.Connection, record: ChannelRecord, amount: int,
                info: bytes) -> StoreError | None:
    """Store one payment of a batch in its own savepoint: a refusal undoes it alone."""
    role, txid, change = Role(record.role).value, record.contract_txid, record.change
    conn.execute("SAVEPOINT payment")
    if conn.execute(schema.PAY, (change, record.signature, record.payments, role, txid)
                    ).rowcount == 1:
        conn.execute(schema.LOG, (role, txid, record.payments, amount, change, info))
        conn.execute("RELEASE payment")
        return None
    conn.execute("ROLLBACK TO payment")
    conn.execute("RELEASE payment")
    row = conn.execute(schema.CHANGE, (role, txid)).fetchone()
    if row is None:
        return not_stored(Role(role), txid)
    return change_increased(Role(role), txid, row[0], change)


def _where(**wanted: list[str] | None) -> tuple[str, list[str]]:
    """A WHERE condition (and its arguments): each column given is one of its values."""
    where, args = ["1"], []
    for column, values in wanted.items():
        if values is not None:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            args.extend(values)
    return " AND ".join(where), args


def _hint(e: sqlite3.Error) -> str:
    name: str = getattr(e, "sqlite_errorname", "")
    for code, hint in _HINTS.items():
        if name == code or name.startswith(code + "_"):
            return f"; {hint}"
    return ""


# -- opening -------------------------------------------------------------------------------


def _connect(name: str, read_only: bool) -> sqlite3.Connection:
    """A configured connection to a store of the current schema."""
    if read_only and name != MEMORY:
        conn = sqlite3.connect(f"{Path(name).resolve().as_uri()}?mode=ro", uri=True,
                               timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(name, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
    try:
        if read_only:
            conn.execute("PRAGMA query_only = ON")
            _check_readable(conn, name)
        else:
            _configure(conn, name)
            _prepare_schema(conn, name)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_readable(conn: sqlite3.Connection, name: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id != schema.APPLICATION_ID and name != MEMORY:
        raise StoreError(f"{name} is not a bitcoind-paychan store; give the path of a store")
    if version != schema.SCHEMA_VERSION:
        raise StoreError(
            f"{name} has store schema version {version}, this bitcoind-paychan reads "
            f"{schema.SCHEMA_VERSION}: open it once read-write (start the daemon) to upgrade it"
            if version < schema.SCHEMA_VERSION else
            f"{name} has store schema version {version}, newer than this bitcoind-paychan "
            f"understands ({schema.SCHEMA_VERSION}); upgrade bitcoind-paychan to read it")


def _configure(conn: sqlite3.Connection, name: str) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal" and name != MEMORY:
        raise StoreError(f"cannot use write-ahead logging for {name} (journal mode {mode}); "
                         "put the store on a local disk")
    conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit
    conn.execute("PRAGMA fullfsync = ON")  # macOS: really flush the disk cache
    conn.execute("PRAGMA foreign_keys = ON")


def _prepare_schema(conn: sqlite3.Connection, name: str) -> None:
    """Create the schema in a new file, upgrade an older one, refuse a newer or foreign one."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"{name} has store schema version {version}, newer than this bitcoind-paychan "
                f"understands ({schema.SCHEMA_VERSION}); upgrade bitcoind-paychan to open it"
            )
        if app_id != schema.APPLICATION_ID and (app_id or version or tables):
            raise StoreError(f"{name} is an SQLite file of some other program, not a "
                             "bitcoind-paychan store; give the path of a new or existing store")
        if version == 0:  # new: version 1's tables, then every migration
            for sql in schema.V1:
                conn.execute(sql)
            conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
            version = 1
        for step in schema.MIGRATIONS[version - 1 :]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
    except BaseException:
        conn.rollback()
        raise
    conn.execute("COMMIT")

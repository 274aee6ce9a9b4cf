"""SQLiteStore: the durable ChannelStore in one SQLite file.

WAL with synchronous=FULL: every committed write is fsynced before the call returns, so it
survives a crash and a power loss. The file holds the client's private channel keys: it (and its
-wal/-shm files) is created mode 0600, and a file that group or others can access is refused.
One connection, guarded by a lock, serves every thread. Schema and codec: `schema.py`;
file protection: `files.py`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import files, schema
from bitcoind_paychan.store.base import (
    PaymentLogEntry,
    change_increased,
    closed,
    discard_refusal,
    not_discardable,
    not_final,
    not_stored,
    other_channel,
    unknown_channel,
)

MEMORY = ":memory:"
BUSY_TIMEOUT = 10.0  # seconds to wait for another process's write lock
_FINAL = tuple(s.value for s in ChannelStatus if s.final)

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
    """The ChannelStore contract in an SQLite file (or ":memory:", for tests)."""

    def __init__(self, path: str | Path) -> None:
        self._name = str(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        created = False
        if self._name != MEMORY:
            created = files.create_private(Path(path))
            for file in (Path(path), *files.sidecars(path)):
                files.check_private(file)
        with self._open_errors("open the store"):
            conn = sqlite3.connect(self._name, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
            try:
                _configure(conn, self._name)
                _prepare_schema(conn, self._name)
            except BaseException:
                conn.close()
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

    # -- the contract ----------------------------------------------------------------------

    def put(self, record: ChannelRecord) -> None:
        key = (Role(record.role), record.contract_txid)
        with self._transaction(f"store {key[0]} channel {key[1]}") as conn:
            if conn.execute(schema.PUT, schema.encode(record)).rowcount != 1:
                (stored,) = conn.execute(schema.CHANGE, key).fetchone()
                raise change_increased(*key, stored, record.change)

    def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"") -> None:
        role, txid, change = Role(record.role).value, record.contract_txid, record.change
        what = (f"record a payment on {role} channel {txid} (it is not stored, so it must not "
                "be acknowledged)")
        with self._transaction(what) as conn:
            pay = (change, record.signature, record.payments, role, txid)
            if conn.execute(schema.PAY, pay).rowcount != 1:
                row = conn.execute(schema.CHANGE, (role, txid)).fetchone()
                if row is None:
                    raise not_stored(Role(role), txid)
                raise change_increased(Role(role), txid, row[0], change)
            conn.execute(schema.LOG, (role, txid, amount, change, info))

    def get(self, role: Role, contract_txid: str) -> ChannelRecord | None:
        with self._connection(f"read {role} channel {contract_txid}") as conn:
            sql = f"{schema.SELECT} WHERE role = ? AND contract_txid = ?"
            row = conn.execute(sql, (Role(role).value, contract_txid)).fetchone()
        return None if row is None else schema.decode(row, self._name)

    def channels(
        self, role: Role | None = None, statuses: Iterable[ChannelStatus] | None = None
    ) -> list[ChannelRecord]:
        where, args, source = ["1"], [], schema.SELECT
        if role is not None:
            where.append("role = ?")
            args.append(Role(role).value)
        if statuses is not None:
            wanted = sorted({ChannelStatus(s).value for s in statuses})
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            args.extend(wanted)
            if role is not None:  # the planner would walk the whole role for the ORDER BY
                source += f" INDEXED BY {schema.STATUS_INDEX}"
        sql = f"{source} WHERE {' AND '.join(where)} ORDER BY role, contract_txid"
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
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._connection("read the payment log") as conn:
            rows = conn.execute(sql, (*args, -1 if limit is None else max(limit, 0))).fetchall()
        return [PaymentLogEntry(Role(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def modify(
        self, role: Role, contract_txid: str, change: Callable[[ChannelRecord], ChannelRecord]
    ) -> ChannelRecord:
        role = Role(role)
        with self._transaction(f"modify {role} channel {contract_txid}") as conn:
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
            conn.execute(schema.PUT, schema.encode(new))
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
            row = conn.execute(schema.STATUS, key).fetchone()
            if row is None:
                return
            if row[0] not in _FINAL:
                raise not_final(Role(role), contract_txid, ChannelStatus(row[0]))
            # The payment log and the chain state follow (ON DELETE CASCADE).
            conn.execute(schema.DELETE, key)

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

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with self._open_errors("close the store"):
                    conn.close()

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
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise


def _hint(e: sqlite3.Error) -> str:
    name: str = getattr(e, "sqlite_errorname", "")
    for code, hint in _HINTS.items():
        if name == code or name.startswith(code + "_"):
            return f"; {hint}"
    return ""


# -- opening -------------------------------------------------------------------------------


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
        if version == 0:
            for sql in schema.CREATE:
                conn.execute(sql)
            conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        else:
            for step in schema.MIGRATIONS[version - 1 :]:
                for sql in step:
                    conn.execute(sql)
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
    except BaseException:
        conn.rollback()
        raise
    conn.execute("COMMIT")

"""SQLiteStore: the durable ChannelStore in one SQLite file.

WAL with synchronous=FULL: every committed write is fsynced before the call returns, so it
survives a crash and a power loss. The file holds the client's private channel keys: it (and its
-wal/-shm files) is created mode 0600, and a file that group or others can access is refused.
One connection, guarded by a lock, serves every thread. One process owns a store: it holds an
exclusive lock on `<store>.lock` (with its pid inside) from open to close, and a second opener is
refused. Others may look at a store while its owner runs by opening it `read_only`. Logic and
statements: `sql.py`; schema: `sqlite_schema.py`; file protection and the lock: `files.py`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import codec, files
from bitcoind_paychan.store import sqlite_schema as schema
from bitcoind_paychan.store.base import Payment, closed, newer_store
from bitcoind_paychan.store.codec import SCHEMA_VERSION
from bitcoind_paychan.store.credit import Take
from bitcoind_paychan.store.sql import (
    CHANGE_AND_STATUS,
    LOG,
    PAY,
    STATUS_INDEX,
    Session,
    SQLStore,
    pay_arguments,
    refusal,
)

MEMORY = ":memory:"
BUSY_TIMEOUT = 10.0  # seconds to wait for another process's write lock
WAL_AUTOCHECKPOINT = 1000  # pages (SQLite's default): a commit past it checkpoints the WAL
# Takes committed at once (on the caller's event loop, no checkpoint) before one is left to
# a thread, whose commit checkpoints the WAL if it is due.
TAKES_AT_ONCE = 256

_HINTS = {
    "SQLITE_FULL": "free some disk space",
    "SQLITE_BUSY": "another process is writing to the store; stop it or try again",
    "SQLITE_READONLY": "the file or its directory is not writable by this user",
    "SQLITE_CANTOPEN": "check that the directory exists and is writable",
    "SQLITE_NOTADB": "the file is not a bitcoind-paychan store",
    "SQLITE_CORRUPT": "the file is damaged: restore it from a backup",
    "SQLITE_IOERR": "the disk failed a read or write: check it",
}


class SQLiteStore(SQLStore):
    """The ChannelStore contract in an SQLite file (or ":memory:", for tests).

    The opener owns the file until `close` (StoreError if another process or store object
    owns it). `read_only=True` takes no ownership, so it works while the owner runs: it sees
    what the owner has committed and refuses every write; it needs an existing store of the
    current schema.
    """

    ENGINE = "sqlite"
    _INDEXED_BY = f" INDEXED BY {STATUS_INDEX}"

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self._name = str(path)
        self._read_only = read_only
        self._schema_version = SCHEMA_VERSION
        self._lock = threading.RLock()  # held by one write at a time (take_credits_now)
        self._takes_at_once = 0  # since one was last left to a thread
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

    def _store_payments(self, conn: Session, batch: Sequence[Payment]
                        ) -> list[StoreError | None]:
        """A channel's consecutive payments (one connection's pipelined batch) update its row
        once; every log entry of the batch is appended by one executemany."""
        outcomes: list[StoreError | None] = []
        log: list[tuple[str, str, int, int, int, bytes]] = []
        for run in _runs(batch):
            if len(run) > 1 and _record_run(conn, run, log):
                outcomes += [None] * len(run)
            else:
                outcomes += [_record_one(conn, *payment, log) for payment in run]
        if log:
            conn.executemany(LOG, log)
        return outcomes

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
    def _transaction(self, what: str, *, synced: bool = True
                     ) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed (and fsynced) on exit, rolled back on any error.
        Not `synced`: its commit is written to the WAL but not fsynced (synchronous =
        NORMAL), so it survives this process's crash, not a power cut or the system's
        crash, until the next fsynced commit or checkpoint makes it (and all before it)
        durable: for what may be forgotten that way, the gateway's takes of credit."""
        with self._connection(what) as conn:
            self._refuse_writes(what)
            if not synced:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
            finally:
                if not synced:
                    conn.execute("PRAGMA synchronous = FULL")

    def _take_transaction(self, what: str) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction(what, synced=False)

    def take_credits_now(self, takes: Sequence[Take]) -> list[tuple[int | None, int]] | None:
        """`take_credits` without waiting: not for this process's other writes (a
        payment's commit, say), nor another connection's write lock, nor a checkpoint of
        the WAL (every TAKES_AT_ONCE takes, one is left to the thread, which may run it)."""
        if self._takes_at_once >= TAKES_AT_ONCE:
            self._takes_at_once = 0
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            conn = self._conn
            if conn is None:
                raise closed()
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            try:
                found = self.take_credits(takes)
            except StoreError as exc:
                cause = exc.__cause__
                if isinstance(cause, sqlite3.Error) and \
                        cause.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                    return None  # another connection writes: the thread waits for it
                raise
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
            self._takes_at_once += 1
            return found
        finally:
            self._lock.release()


LogRow = tuple[str, str, int, int, int, bytes]


def _runs(batch: Sequence[Payment]) -> Iterator[Sequence[Payment]]:
    """`batch` cut into runs of consecutive payments on one channel, each paying more than
    the one before (a lone payment is a run of one)."""
    start = 0
    for at in range(1, len(batch) + 1):
        if at == len(batch) or not _follows(batch[at - 1][0], batch[at][0]):
            yield batch[start:at]
            start = at


def _follows(before: ChannelRecord, after: ChannelRecord) -> bool:
    """`after` pays on from `before`: the same channel, generation and pending re-anchor
    (whose pair the last one's PAY stores), less change."""
    return (after.channel_id == before.channel_id and after.role == before.role
            and after.change < before.change and after.generation == before.generation
            and codec.pending_txid(after.pending) == codec.pending_txid(before.pending))


def _record_run(conn: Session, run: Sequence[Payment], log: list[LogRow]) -> bool:
    """Store a run of payments on one channel with one UPDATE: guarded by the first's change,
    it changes the row exactly when each payment's own guarded UPDATE, in turn, would. False
    (nothing changed): the caller stores them one by one, each refused alone."""
    first, last = run[0][0], run[-1][0]
    role, txid = Role(last.role).value, last.channel_id
    if conn.execute(PAY, pay_arguments(last, guard=first.change)).rowcount != 1:
        return False
    log += [(role, txid, record.payments, amount, record.change, info)
            for record, amount, info in run]
    return True


def _record_one(conn: Session, record: ChannelRecord, amount: int, info: bytes,
                log: list[LogRow]) -> StoreError | None:
    """Store one payment of a batch: its guarded UPDATE changes its row or nothing, so a
    refusal leaves nothing to undo (no savepoint); a failing statement fails the batch. Its
    log entry is added to `log` (appended at the batch's end)."""
    role, txid, change = Role(record.role).value, record.channel_id, record.change
    if conn.execute(PAY, pay_arguments(record)).rowcount == 1:
        log.append((role, txid, record.payments, amount, change, info))
        return None
    row = conn.execute(CHANGE_AND_STATUS, (role, txid)).fetchone()
    return refusal(record, *(row or (None,)))


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
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{name} has store schema version {version}, this bitcoind-paychan reads "
            f"{SCHEMA_VERSION}: open it once read-write (start the daemon) to upgrade it"
            if version < SCHEMA_VERSION else newer_store(name, version, SCHEMA_VERSION))


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
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreError(newer_store(name, found, SCHEMA_VERSION))
        if app_id != schema.APPLICATION_ID and (app_id or found or tables):
            raise StoreError(f"{name} is an SQLite file of some other program, not a "
                             "bitcoind-paychan store; give the path of a new or existing store")
        if found == 0:  # new: schema version 1's tables, then every migration
            for sql in schema.V1:
                conn.execute(sql)
            conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
            found = 1
        for step in schema.MIGRATIONS[found - 1 :]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.rollback()
        raise
    conn.execute("COMMIT")

"""PostgresStore: the ChannelStore contract in a PostgreSQL database that several processes
(instances) may share.

psycopg 3 with a pool of autocommit connections: each write is one transaction (`BEGIN` ...
`COMMIT`), durable when COMMIT returns (the server's `synchronous_commit` on, its default), so a
payment is acknowledged only after it is on the server's disk. Read-modify-writes lock their rows
(`SELECT ... FOR UPDATE`), and a payment only lowers the stored change (`WHERE change >= new`),
so concurrent instances never raise a client's change nor lose a payment. A payment batch is one
pipelined round trip (`PAY_AND_LOG`). Errors never show a password: messages name the database
by host, port, name and user (`describe`). Schema: `postgres_schema.py`.

Every pooled session carries timeouts (`SessionTimeouts`, `store:` in the configuration), so
an instance that is paused (a long GC or VM pause, SIGSTOP) or cut off inside a transaction
holds its rows (a lease read `FOR SHARE`) for at most `idle_in_transaction_session_timeout`:
the server then ends its session, its locks go, and what it had not committed is not stored.
After the server restarts, a pooled connection it closed is noticed before use (no round trip
unless its socket has something to read) and replaced, and the pool retries connecting every
`RECONNECT_DELAY` seconds at most (psycopg_pool backs off up to minutes by default).
"""

from __future__ import annotations

import logging
import re
import select
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import PolicyError, StoreError
from bitcoind_paychan.store import postgres_schema as schema
from bitcoind_paychan.store.base import Payment, closed, newer_store, settlement_decided
from bitcoind_paychan.store.codec import SCHEMA_VERSION
from bitcoind_paychan.store.sql import STATUS, Cursor, SQLStore, pay_arguments, refusal

if TYPE_CHECKING:  # psycopg is imported when first used: SQLite users never pay for it
    import psycopg
    from psycopg_pool import ConnectionPool

POOL_SIZE = 10  # connections at most (the payment writer's, the event loop's threads)
CONNECT_TIMEOUT = 10  # seconds to reach the server (and to wait for a pooled connection)
RECONNECT_DELAY = 0.2  # seconds at most between two attempts to replace a lost connection
QUIET = 10.0  # seconds between two of psycopg_pool's warnings of one kind (while reconnecting)
TABLES = ("channels", "chain_state", "meta", "payment_log", "history", "credit_spent")
INSTALL = "pip install 'bitcoind-paychan[postgresql]' (psycopg 3 and psycopg-pool)"

_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@]*)(@)")


def redact(text: str, dsn: str = "") -> str:
    """`text` with any password (of `dsn`, or that looks like one) replaced by ***."""
    text = _URI_PASSWORD.sub(r"\1***\3", _PASSWORD.sub(r"\1***", text))
    for password in _passwords(dsn):
        text = text.replace(password, "***")
    return text


def _passwords(dsn: str) -> set[str]:
    """The DSN's password, parsed or (for a DSN that does not parse) as it looks."""
    found = {m.group(2).strip("'") for m in _PASSWORD.finditer(dsn)}
    found |= {m.group(2) for m in _URI_PASSWORD.finditer(dsn)}
    with suppress(Exception):  # any failure to parse: the patterns above did what they could
        found.add(str(_settings(dsn).get("password") or "") if dsn else "")
    return {p for p in found if len(p) >= 4}


def _driver() -> Any:
    """The psycopg module (ValueError if the postgresql extra is not installed)."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 - the pool, needed as soon as a store opens
    except ImportError:
        raise ValueError(f"the postgresql engine needs psycopg: {INSTALL}") from None
    return psycopg


def _settings(dsn: str) -> dict[str, Any]:
    settings: dict[str, Any] = _driver().conninfo.conninfo_to_dict(dsn)
    return settings


def _parse(dsn: str) -> dict[str, Any]:
    driver = _driver()
    try:
        return _settings(dsn)
    except driver.Error as e:
        raise ValueError(redact(str(e).strip(), dsn)) from None


def check_dsn(dsn: str) -> dict[str, Any]:
    """The DSN's settings; ValueError (without the password) if it is no valid DSN."""
    settings = _parse(dsn)
    port = str(settings.get("port", "5432"))
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        raise ValueError(f"port {port!r} is not a port number (1-65535)")
    return settings


def password_of(dsn: str) -> str | None:
    """The password the DSN itself holds, if any (None if it does not parse)."""
    try:
        value = _parse(dsn).get("password")
    except ValueError:
        return None
    return None if value is None else str(value)


def describe(dsn: str) -> str:
    """The database as messages name it: never its password."""
    try:
        s = _parse(dsn)
    except ValueError:
        return "the PostgreSQL database of store.dsn"
    host = s.get("host") or s.get("hostaddr") or "the local socket"
    return (f"PostgreSQL database {s.get('dbname') or s.get('user') or '(default)'!s} on "
            f"{host}:{s.get('port') or 5432} as {s.get('user') or '(default user)'}")


@dataclass(frozen=True)
class SessionTimeouts:
    """What bounds a session of this store (seconds; PostgreSQL's settings of those names).

    `idle_in_transaction_session_timeout`: a session idle inside a transaction that long (its
    process paused or cut off) is ended by the server, which releases its locks: how long a
    resume elsewhere may wait for a frozen instance. `lock_timeout`: the longest wait for a
    row lock (longer than the former, so a resume outlasts a frozen holder rather than fail).
    `statement_timeout`: the longest any statement runs."""

    statement_timeout: float = 30.0
    lock_timeout: float = 5.0
    idle_in_transaction_session_timeout: float = 2.0

    def __post_init__(self) -> None:
        for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"):
            value = getattr(self, name)
            if not 0.01 <= value <= 3600:
                raise PolicyError(name, f"found {value}, expected seconds ≥ 0.01 and ≤ 3600")
        if self.lock_timeout <= self.idle_in_transaction_session_timeout:
            raise PolicyError("lock_timeout", f"found {self.lock_timeout}, expected more than "
                              "idle_in_transaction_session_timeout "
                              f"({self.idle_in_transaction_session_timeout}): a resume must "
                              "outwait a frozen instance's transaction, not give up first")
        if self.statement_timeout < self.lock_timeout:
            raise PolicyError("statement_timeout", f"found {self.statement_timeout}, expected "
                              f"at least lock_timeout ({self.lock_timeout})")

    def configure(self, conn: psycopg.Connection[Any]) -> None:
        """Set the timeouts on a new session (the pool's `configure`)."""
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('lock_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false)",
            [f"{round(1000 * value)}ms" for value in (
                self.statement_timeout, self.lock_timeout,
                self.idle_in_transaction_session_timeout)])


class PostgresStore(SQLStore):
    """The ChannelStore contract in a PostgreSQL database (created or upgraded on open).

    Unlike an SQLite file, a database is shared: several processes may open it at once.
    `read_only=True` refuses every write and needs a database of the current schema.
    `timeouts` bound each pooled session (`SessionTimeouts`: its defaults).
    """

    ENGINE = "postgresql"
    _HISTORY_ORDER = "id"
    _FOR_UPDATE = " FOR UPDATE"

    def __init__(self, dsn: str, *, read_only: bool = False, pool_size: int = POOL_SIZE,
                 timeouts: SessionTimeouts | None = None) -> None:
        try:
            driver = _driver()
        except ValueError as e:
            raise StoreError(str(e)) from None
        self._dsn = dsn
        self.timeouts = timeouts or SessionTimeouts()
        self._name = describe(dsn)
        self._read_only = read_only
        try:
            check_dsn(dsn)
        except ValueError as e:
            raise StoreError(f"store.dsn is not a PostgreSQL connection string: {e}; give "
                             "e.g. postgresql://paychan:${PGPASSWORD}@127.0.0.1/paychan") from None
        with self._connect_errors():
            with driver.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                _check_privileges(conn, self._name, read_only)
                self._schema_version = _prepare_schema(conn, self._name, read_only)
            self._pool: ConnectionPool[Any] | None = _pool_class()(
                dsn, min_size=1, max_size=pool_size, kwargs={"autocommit": True},
                configure=self.timeouts.configure, timeout=CONNECT_TIMEOUT,
                name="paychan-store", open=False)
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)

    def _store_payments(self, conn: Any, batch: Sequence[Payment]) -> list[StoreError | None]:
        rows = [(*pay_arguments(r), r.payments, amount, info, Role(r.role).value, r.channel_id)
                for r, amount, info in batch]
        outcomes: list[StoreError | None] = []
        with conn.cursor() as cur:
            cur.executemany(schema.PAY_AND_LOG, rows, returning=True)  # pipelined
            for record, _, _ in batch:
                stored, *before = cur.fetchone()
                outcomes.append(None if stored else refusal(record, *before))
                cur.nextset()
        for at, (record, _, _) in enumerate(batch):
            if outcomes[at] is not None:  # rare: was it a settlement committed meanwhile? (the
                # statement saw the row as it began, before the settlement its UPDATE waited for)
                row = conn.execute(STATUS, (Role(record.role).value, record.channel_id)
                                   ).fetchone()
                if row is not None and row[0] != ChannelStatus.OPEN:
                    outcomes[at] = settlement_decided(Role(record.role), record.channel_id,
                                                      ChannelStatus(row[0]))
        return outcomes

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _connect_errors(self) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if not _driver_failure(e):
                raise
            raise StoreError(f"cannot open the store, {self._name}: "
                             f"{_explain(e, self._dsn)}") from None

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if not _driver_failure(e):
                raise
            raise StoreError(f"could not {what} in {self._name}: {_explain(e, self._dsn)}"
                             ) from None

    @contextmanager
    def _connection(self, what: str) -> Iterator[_Session]:
        pool = self._pool
        if pool is None:
            raise closed()
        with self._errors(what), _pooled(pool) as conn:
            yield _Session(conn)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[_Session]:
        self._refuse_writes(what)
        with self._connection(what) as session, session.conn.transaction():
            yield session


@contextmanager
def _pooled(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection, as `pool.connection()`, but never one the server closed (it
    restarted): such a one is dropped and the next taken, without the pool's backoff."""
    for _ in range(pool.max_size):  # at most every pooled one is stale
        conn = pool.getconn()
        if not _closed_by_server(conn):
            break
        conn.close()
        pool.putconn(conn)  # the pool sees it closed and connects a new one
    else:
        conn = pool.getconn()  # a new one
    try:
        with conn:
            yield conn
    finally:
        pool.putconn(conn)


def _closed_by_server(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection was closed under us. An idle session has nothing to read;
    if it has (the server's goodbye, or end of file), one empty query says whether it lives."""
    if conn.closed:
        return True
    idle = select.poll()  # not select(): a busy server's descriptors pass 1024
    idle.register(conn.pgconn.socket, select.POLLIN)
    if not idle.poll(0):
        return False
    try:
        conn.execute("")
    except Exception as e:
        if not _driver_failure(e):
            raise
        return True
    return False


@lru_cache(maxsize=1)
def _pool_class() -> type[ConnectionPool[Any]]:
    """psycopg_pool's ConnectionPool, retrying a lost connection every RECONNECT_DELAY s at
    most instead of backing off to minutes: a restarted server is used again within it."""
    from psycopg_pool import ConnectionPool
    from psycopg_pool.pool import AddConnection

    logging.getLogger("psycopg.pool").addFilter(_OncePer(QUIET))
    class Pool(ConnectionPool[Any]):
        def schedule_task(self, task: Any, delay: float) -> None:
            if isinstance(task, AddConnection):
                delay = min(delay, RECONNECT_DELAY)
            super().schedule_task(task, delay)

    return Pool


class _OncePer(logging.Filter):
    """At most one record of each kind (its message's format) per `interval` seconds: the
    pool warns at each attempt to reconnect, every RECONNECT_DELAY while the server is down."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now, kind = time.monotonic(), str(record.msg)
        if now - self._last.get(kind, float("-inf")) < self.interval:
            return False
        self._last[kind] = now
        return True


class _Session:
    """A pooled connection as `sql.SQLStore` uses it: `?` placeholders become `%s`."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self.conn.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_placeholders(sql), parameters)

    def cursor(self) -> psycopg.Cursor[Any]:
        return self.conn.cursor()


@lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


# -- opening -------------------------------------------------------------------------------


def _prepare_schema(conn: psycopg.Connection[Any], name: str, read_only: bool) -> int:
    """Create the schema in a new database, upgrade an older one, refuse a newer one; the
    version it is at."""
    if not read_only:  # before the transaction, so that it sees what the last holder made
        conn.execute("SELECT pg_advisory_lock(%s)", (schema.MIGRATION_LOCK,))
    try:
        return _migrate(conn, name, read_only)
    finally:
        if not read_only:
            conn.execute("SELECT pg_advisory_unlock(%s)", (schema.MIGRATION_LOCK,))


def _migrate(conn: psycopg.Connection[Any], name: str, read_only: bool) -> int:
    with conn.transaction():
        found = conn.execute("SELECT to_regclass('schema_version'), to_regclass('channels')"
                             ).fetchone()
        if found is None or found[0] is None:
            if found is not None and found[1] is not None:
                raise StoreError(f"{name} has a table 'channels' but no 'schema_version': it "
                                 "is not a bitcoind-paychan store; give another database")
            if read_only:
                raise StoreError(f"{name} holds no bitcoind-paychan store yet; start the "
                                 "daemon once to create it")
            for statement in schema.CREATE:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (%s)", (schema.FIRST_VERSION,))
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(newer_store(name, version, SCHEMA_VERSION))
        if version < SCHEMA_VERSION and read_only:
            raise StoreError(f"{name} has store schema version {version}, this "
                             f"bitcoind-paychan reads {SCHEMA_VERSION}: start the daemon once "
                             "to upgrade it")
        for step in schema.MIGRATIONS[version - schema.FIRST_VERSION :]:
            for statement in step:
                conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = %s", (max(version, SCHEMA_VERSION),))
    return max(version, SCHEMA_VERSION)


def _check_privileges(conn: psycopg.Connection[Any], name: str, read_only: bool) -> None:
    """Refuse now, not at the first payment, a role that may not read and write every table
    of the store (those that exist: a new database has none)."""
    wanted = "SELECT" if read_only else "SELECT, INSERT, UPDATE, DELETE"
    for table in (*TABLES, "schema_version"):
        row = conn.execute("SELECT to_regclass(%s) IS NULL OR has_table_privilege(%s, %s)",
                           (table, table, wanted)).fetchone()
        if not (row and row[0]):
            raise StoreError(
                f"{name}: the role may not {wanted} on table {table}; as the database owner "
                f"run: GRANT {wanted} ON ALL TABLES IN SCHEMA public TO <role>")


_CAUSES = (  # (what the server or libpq said, what to do), first match wins
    ("password authentication failed", "wrong user or password in store.dsn: fix them"),
    ("no password supplied", "the server wants a password: put it in store.dsn "
                             "(password=${PGPASSWORD}) or in ~/.pgpass"),
    ("does not exist", "create it (createdb/createuser as the server's admin) or fix store.dsn"),
    ("no pg_hba.conf entry", "the server refuses this host/user: add a pg_hba.conf line"),
    ("connection refused", "the server is not running or not listening there: start it or "
                           "fix host/port in store.dsn"),
    ("could not translate host name", "unknown host: fix host in store.dsn"),
    ("timeout", "the server did not answer: check the host, port and firewall"),
    ("no such file or directory", "no server on that local socket: start it or give "
                                  "host=127.0.0.1 in store.dsn"),
    ("permission denied", "the role lacks a privilege: GRANT it as the database owner"),
    ("must be owner", "only the tables' owner may upgrade the schema: start this release once "
                      "with the owner's store.dsn"),
    ("disk full", "free some disk space on the database server"),
)


def _driver_failure(e: Exception) -> bool:
    """Whether `e` is psycopg's or the pool's (not ours: a StoreError passes through)."""
    from psycopg import Error
    from psycopg_pool import PoolTimeout

    return isinstance(e, Error | PoolTimeout)


def _explain(e: BaseException, dsn: str) -> str:
    """One line: what the server or libpq said (password removed) and what to do."""
    from psycopg import errors
    from psycopg_pool import PoolTimeout

    if isinstance(e, PoolTimeout):
        return ("no database connection within "
                f"{CONNECT_TIMEOUT} s; check that the server is up and reachable")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    said = redact(lines[0] if lines else type(e).__name__, dsn)
    said = said.removeprefix("connection failed: ")
    text = str(e).lower()
    for cause, hint in _CAUSES:
        if cause in text:
            return f"{said}; {hint}"
    if isinstance(e, errors.InsufficientPrivilege):
        return f"{said}; GRANT the privilege as the database owner"
    return said

"""SQLStore: the ChannelStore contract over any SQL engine, in portable SQL.

An engine (`SQLiteStore`, `PostgresStore`) supplies connections (`_connection`, `_transaction`),
its schema and its dialect (the few class attributes below); the logic, the statements and the
codec (`codec.py`) are shared, so every engine keeps the same promises. Statements use `?`
placeholders; an engine whose driver wants another style translates them in its `Session`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import codec
from bitcoind_paychan.store.base import (
    ChannelSummary,
    Closable,
    Generation,
    Payment,
    PaymentLogEntry,
    StoreInfo,
    WatchedChannel,
    change_increased,
    check_generation,
    check_move,
    discard_refusal,
    not_discardable,
    not_final,
    not_stored,
    other_channel,
    other_generation,
    settlement_decided,
    summarize,
    unknown_channel,
)
from bitcoind_paychan.store.credit import PaymentTake, SQLCredit

BATCH = 500  # contract txids per query (below every engine's limit on bound parameters)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Session(Protocol):
    """One connection, as the shared logic uses it (sqlite3.Connection is one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


_COLS = ", ".join(codec.CHANNEL_COLUMNS)
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in codec.CHANNEL_COLUMNS
                     if c not in codec.KEY_COLUMNS)
_KEY = "role = ? AND contract_txid = ?"

# Upsert, not delete-and-insert: that would delete the row's chain state with it. The change
# only goes down within a generation (a promotion's is on the next contract).
# After the record's columns come opened_at and closed_at (now if the status is final, else
# NULL): an update keeps opened_at and the first closed_at, and clears it if a reorg undid it.
PUT = (
    f"INSERT INTO channels ({_COLS}, opened_at, closed_at) "
    f"VALUES ({', '.join('?' * (len(codec.CHANNEL_COLUMNS) + 2))}) "
    f"ON CONFLICT (role, contract_txid) DO UPDATE SET {_UPDATES}, closed_at = CASE WHEN "
    "excluded.closed_at IS NULL THEN NULL ELSE coalesce(channels.closed_at, excluded.closed_at) "
    "END WHERE channels.change >= excluded.change OR channels.generation < excluded.generation"
)
# Arguments: `pay_arguments`. Only on an open channel (once its settlement is decided, CLOSING,
# no payment is stored, whoever holds its lease) of the payment's generation, and while a
# stored re-anchor binds (signed or complete) only with the payment's signature on its
# contract, stored in the same statement: the pair is stored whole or not at all.
PAY_SET = ("change = ?, signature = ?, payments = ?, "
           "next_change = CASE WHEN next_txid = ? THEN ? ELSE next_change END, "
           "next_signature = CASE WHEN next_txid = ? THEN ? ELSE next_signature END")
PAY_WHERE = (f"{_KEY} AND change >= ? AND status = 'open' AND generation = ? "
             f"AND (next_state IN ('', '{codec.REFUSED}') OR next_txid = ?)")
PAY = f"UPDATE channels SET {PAY_SET} WHERE {PAY_WHERE}"
LOG = (
    "INSERT INTO payment_log (role, contract_txid, seq, amount, change_after, info) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
LOGGED = f"SELECT 1 FROM payment_log WHERE {_KEY} LIMIT 1"
SELECT = f"SELECT {_COLS} FROM channels"
CHANGE = f"SELECT change FROM channels WHERE {_KEY}"
CHANGE_AND_STATUS = ("SELECT change, status, generation, next_txid FROM channels "
                     f"WHERE {_KEY}")
STATUS = f"SELECT status FROM channels WHERE {_KEY}"
STORED = f"SELECT status, generation, next_txid FROM channels WHERE {_KEY}"
# Arguments: promoted_at, role, channel id. The stored generation, kept before its
# promotion overwrites the row.
KEEP_GENERATION = (
    f"INSERT INTO generations ({', '.join(codec.GENERATION_COLUMNS)}) "
    "SELECT role, contract_txid, generation, CASE WHEN current_txid = '' THEN contract_txid "
    "ELSE current_txid END, contract_tx, expiry, value, next_txid, next_payout, ? "
    f"FROM channels WHERE {_KEY}"
)
GENERATIONS = (f"SELECT {', '.join(codec.GENERATION_COLUMNS)} FROM generations "
               "WHERE role = ? AND channel_id = ? ORDER BY generation")
PRUNE_GENERATIONS = (
    "DELETE FROM generations WHERE (role, channel_id) IN "
    "(SELECT role, contract_txid FROM history WHERE closed_at < ?)"
)
DELETE = f"DELETE FROM channels WHERE {_KEY}"
DELETE_LOG = f"DELETE FROM payment_log WHERE {_KEY}"
PAYMENTS = ("SELECT role, contract_txid, amount, change_after, info, seq, stored_at "
            "FROM payment_log")
PER_SECOND = ("SELECT stored_at, count(*), sum(amount) FROM payment_log WHERE stored_at >= ? "
              "AND role = ? GROUP BY stored_at ORDER BY stored_at")
TIMES = f"SELECT opened_at, closed_at FROM channels WHERE {_KEY}"

_SUMMARY = ", ".join(codec.SUMMARY_COLUMNS)
ARCHIVE = (f"INSERT INTO history ({_SUMMARY}) "
           f"VALUES ({', '.join('?' * len(codec.SUMMARY_COLUMNS))}) "
           "ON CONFLICT (role, contract_txid) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in codec.SUMMARY_COLUMNS
                       if c not in codec.KEY_COLUMNS))
HISTORY = f"SELECT {_SUMMARY} FROM history"
UNARCHIVE = f"DELETE FROM history WHERE {_KEY}"
PRUNE_LOG = (
    "DELETE FROM payment_log WHERE (role, contract_txid) IN "
    "(SELECT role, contract_txid FROM history WHERE closed_at < ?)"
)
PRUNE = "DELETE FROM history WHERE closed_at < ?"

_CHAIN_VALUES = [c for c in codec.CHAIN_COLUMNS if c not in codec.KEY_COLUMNS]
PUT_CHAIN = (
    f"INSERT INTO chain_state ({', '.join(codec.CHAIN_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(codec.CHAIN_COLUMNS))}) "
    "ON CONFLICT (role, contract_txid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _CHAIN_VALUES)
)
# One row per stored channel: all NULL after the key when it has no chain state yet.
CHAIN = (
    f"SELECT {', '.join(f's.{c}' for c in _CHAIN_VALUES)} FROM channels AS c "
    "LEFT JOIN chain_state AS s USING (role, contract_txid) "
    "WHERE c.role = ? AND c.contract_txid = ?"
)
# The autopilot's index: live channels (through the status index), with the contract while
# it is unconfirmed.
WATCHED = (
    "SELECT c.contract_txid, c.outpoint_index, c.expiry, c.status, "
    "CASE WHEN coalesce(s.contract_height, 0) = 0 THEN c.contract_tx END, c.current_txid, "
    "CASE WHEN c.next_state <> '' THEN c.next_tx END "
    "FROM channels AS c{indexed} "
    "LEFT JOIN chain_state AS s USING (role, contract_txid) "
    "WHERE c.role = ? AND c.status IN ({live})"
)
LOAD = (
    f"SELECT {', '.join(f'c.{c}' for c in codec.CHANNEL_COLUMNS)}, "
    f"{', '.join(f's.{c}' for c in _CHAIN_VALUES)} FROM channels AS c "
    "LEFT JOIN chain_state AS s USING (role, contract_txid) "
    "WHERE c.role = ? AND c.contract_txid IN ({keys})"
)
HEIGHTS_FROM = (
    "SELECT contract_txid FROM chain_state WHERE role = ? AND "
    "(contract_height >= ? OR spender_height >= ? OR conflict_height >= ?) "
    "ORDER BY contract_txid"
)
GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
STATUS_INDEX = "channels_by_status"


def reanchor_statements(blob: str, empty: str) -> tuple[str, ...]:
    """Schema version 7 for an engine whose byte string type is `blob`, written `empty` when
    empty (integers are BIGINT, SQLite's INTEGER affinity): the channel's generation and
    pending re-anchor columns (codec.REANCHOR_COLUMNS), and the `generations` table."""
    columns = (("generation", "BIGINT NOT NULL DEFAULT 0"),
               ("current_txid", "TEXT NOT NULL DEFAULT ''"),
               ("next_txid", "TEXT NOT NULL DEFAULT ''"),
               ("next_state", "TEXT NOT NULL DEFAULT ''"),
               ("next_tx", f"{blob} NOT NULL DEFAULT {empty}"),
               *((name, "BIGINT NOT NULL DEFAULT 0") for name in (
                   "next_expiry", "next_value", "next_payout", "next_fee_rate", "next_change")),
               ("next_signature", f"{blob} NOT NULL DEFAULT {empty}"),
               ("next_spent", f"{blob} NOT NULL DEFAULT {empty}"))  # R's other inputs'
    # spent outputs (tx.serialize_outputs), for a kind whose signatures commit to them (v4)
    assert tuple(name for name, _ in columns) == codec.REANCHOR_COLUMNS
    return (*(f"ALTER TABLE channels ADD COLUMN {name} {kind}" for name, kind in columns),
            f"""CREATE TABLE generations (  -- a re-anchored channel's superseded contracts
        role TEXT NOT NULL,
        channel_id TEXT NOT NULL,  -- the channels row's key (generation 0's contract txid)
        generation BIGINT NOT NULL,
        contract_txid TEXT NOT NULL,
        contract_tx {blob} NOT NULL,
        expiry BIGINT NOT NULL,
        value BIGINT NOT NULL,
        reanchor_txid TEXT NOT NULL,  -- R, which spent it (its output 0: the next contract)
        payout BIGINT NOT NULL,  -- gross sat R paid the server
        promoted_at BIGINT NOT NULL,  -- when the next generation replaced it
        PRIMARY KEY (role, channel_id, generation)
    )""")


def marks(n: int) -> str:
    return ", ".join("?" * n)


class SQLStore(SQLCredit, Closable):
    """The ChannelStore contract in SQL; subclasses are the engines."""

    ENGINE = ""
    _name = ""  # where the store is, for messages (never a password)
    _read_only = False
    _schema_version = 0
    # Dialect: the status index hint (SQLite's planner needs it), the column that orders the
    # history by insertion, and the row lock a read-modify-write takes.
    _INDEXED_BY = ""
    _HISTORY_ORDER = "rowid"
    _FOR_UPDATE = ""

    def _connection(self, what: str) -> AbstractContextManager[Session]:
        """A connection for reads; driver errors become StoreErrors naming `what`."""
        raise NotImplementedError

    def _transaction(self, what: str) -> AbstractContextManager[Session]:
        """A write transaction, durable when the block exits, rolled back on any error."""
        raise NotImplementedError

    def info(self) -> StoreInfo:
        return StoreInfo(self.ENGINE, self._name, self._schema_version)

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _refuse_writes(self, what: str) -> None:
        if self._read_only:
            raise StoreError(f"cannot {what}: {self._name} is open read-only (for looking "
                             "while its owner runs); only the process that owns it writes")

    # -- the contract ----------------------------------------------------------------------

    def put(self, record: ChannelRecord) -> None:
        key = (Role(record.role), record.channel_id)
        with self._transaction(f"store {key[0]} channel {key[1]}") as conn:
            self._put(conn, record, int(time.time()))

    def put_many(self, records: Iterable[ChannelRecord]) -> None:
        now = int(time.time())
        with self._transaction("store channels") as conn:
            for record in records:
                self._put(conn, record, now)

    def _put(self, conn: Session, record: ChannelRecord, now: int) -> None:
        key = (Role(record.role).value, record.channel_id)
        times = (now, now if record.status.final else None)
        stored = conn.execute(f"{STORED}{self._FOR_UPDATE}", key).fetchone()
        new = stored is None
        if stored is not None:
            self._check_stored(conn, record, stored, now)
        if conn.execute(PUT, (*codec.encode(record), *times)).rowcount != 1:
            (stored,) = conn.execute(CHANGE, key).fetchone()
            raise change_increased(Role(record.role), key[1], stored, record.change)
        if new:
            conn.execute(UNARCHIVE, key)  # stored again: no longer history
            if record.paid and conn.execute(LOGGED, key).fetchone() is None:
                conn.execute(LOG, (*key, record.payments, record.paid, record.change, b""))

    def _check_stored(self, conn: Session, record: ChannelRecord,
                      stored: tuple[Any, ...], now: int) -> None:
        """Refuse a move of `record` over the `stored` (status, generation, next txid) row,
        or keep the stored generation as history if `record` promotes it."""
        role, status = Role(record.role), ChannelStatus(stored[0])
        check_move(role, record.channel_id, status, record.status,
                   record.settlement_tx is not None)
        if check_generation(role, record.channel_id, stored[1], stored[2], status, record):
            conn.execute(KEEP_GENERATION, (now, role.value, record.channel_id))

    def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"") -> None:
        refusal = self.record_payments([(record, amount, info)])[0]
        if refusal is not None:
            raise refusal

    def record_payments(self, batch: Sequence[Payment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        what = (f"record {len(batch)} payment(s) (they are not stored, so they must not be "
                "acknowledged)")
        with self._transaction(what) as conn:
            outcomes = self._store_payments(conn, batch)
            self._takes_after(conn, outcomes, takes)
            return outcomes

    def _store_payments(self, conn: Session, batch: Sequence[Payment]
                        ) -> list[StoreError | None]:
        """Store each payment of `batch` in order; per payment, None (stored) or why it was
        refused (it alone is left out). Each engine does it its fastest way."""
        raise NotImplementedError

    def get(self, role: Role, contract_txid: str) -> ChannelRecord | None:
        with self._connection(f"read {role} channel {contract_txid}") as conn:
            row = conn.execute(f"{SELECT} WHERE {_KEY}", (Role(role).value, contract_txid)
                               ).fetchone()
        return None if row is None else codec.decode(row, self._name)

    def channels(
        self, role: Role | None = None, statuses: Iterable[ChannelStatus] | None = None
    ) -> list[ChannelRecord]:
        wanted = None if statuses is None else sorted({ChannelStatus(s).value for s in statuses})
        where, args = _where(role=None if role is None else [Role(role).value], status=wanted)
        source = SELECT
        if role is not None and wanted is not None:  # the planner would walk the whole role
            source += self._INDEXED_BY  # for the ORDER BY
        sql = f"{source} WHERE {where} ORDER BY role, contract_txid"
        with self._connection("list channels") as conn:
            rows = conn.execute(sql, args).fetchall()
        return [codec.decode(row, self._name) for row in rows]

    def payments(
        self, role: Role, contract_txid: str | None = None, limit: int | None = None,
        since: int | None = None,
    ) -> list[PaymentLogEntry]:
        sql, args = f"{PAYMENTS} WHERE role = ?", [Role(role).value]
        if contract_txid is not None:
            sql += " AND contract_txid = ?"
            args.append(contract_txid)
        if since is not None:
            sql += " AND stored_at >= ?"
            args.append(str(int(since)))
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(str(max(limit, 0)))
        with self._connection("read the payment log") as conn:
            rows = conn.execute(sql, args).fetchall()
        return [PaymentLogEntry(Role(r[0]), r[1], r[2], r[3], bytes(r[4]), r[5], r[6])
                for r in rows]

    def payments_per_second(self, role: Role, since: int) -> list[tuple[int, int, int]]:
        with self._connection("read the payment log") as conn:
            rows = conn.execute(PER_SECOND, (int(since), Role(role).value)).fetchall()
        return [(int(second), int(count), int(amount)) for second, count, amount in rows]

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

    def _modify(self, conn: Session, role: Role, contract_txid: str,
                change: Callable[[ChannelRecord], ChannelRecord]) -> ChannelRecord:
        sql = f"{SELECT} WHERE {_KEY}{self._FOR_UPDATE}"
        row = conn.execute(sql, (role.value, contract_txid)).fetchone()
        if row is None:
            raise unknown_channel(role, contract_txid, "modify the record")
        old = codec.decode(row, self._name)
        new = change(old)
        if (Role(new.role), new.channel_id) != (role, contract_txid):
            raise other_channel(role, contract_txid, new)
        if new.change > old.change and new.generation == old.generation:
            raise change_increased(role, contract_txid, old.change, new.change)
        now = int(time.time())
        self._check_stored(conn, new, (old.status, old.generation,
                                       codec.pending_txid(old.pending)), now)
        conn.execute(PUT, (*codec.encode(new), now, now if new.status.final else None))
        return new

    def chain_state(self, role: Role, contract_txid: str) -> ChainState:
        with self._connection(f"read the chain state of {role} channel {contract_txid}") as conn:
            row = conn.execute(CHAIN, (Role(role).value, contract_txid)).fetchone()
        if row is None:
            raise unknown_channel(role, contract_txid, "read the chain state")
        return codec.decode_chain(row)

    def put_chain_state(self, role: Role, contract_txid: str, state: ChainState) -> None:
        key = (Role(role).value, contract_txid)
        with self._transaction(f"store the chain state of {role} channel {contract_txid}") as c:
            if c.execute(CHANGE, key).fetchone() is None:
                raise unknown_channel(role, contract_txid, "store the chain state")
            c.execute(PUT_CHAIN, codec.encode_chain(role, contract_txid, state))

    def put_chain_states(self, role: Role, states: Mapping[str, ChainState],
                         meta: Mapping[str, str] | None = None) -> None:
        role = Role(role)
        with self._transaction(f"store the chain state of {len(states)} {role} channels") as c:
            stored: set[str] = set()
            txids = list(states)
            for start in range(0, len(txids), BATCH):
                chunk = txids[start : start + BATCH]
                sql = (f"SELECT contract_txid FROM channels WHERE role = ? AND contract_txid "
                       f"IN ({marks(len(chunk))})")
                stored.update(r[0] for r in c.execute(sql, (role.value, *chunk)))
            rows = [codec.encode_chain(role, txid, state) for txid, state in states.items()
                    if txid in stored]
            if rows:
                c.executemany(PUT_CHAIN, rows)
            if meta:
                c.executemany(SET_META, list(meta.items()))

    def watched(self, role: Role, statuses: Iterable[ChannelStatus]) -> list[WatchedChannel]:
        wanted = sorted({ChannelStatus(s).value for s in statuses})
        if not wanted:
            return []
        sql = WATCHED.format(indexed=self._INDEXED_BY, live=marks(len(wanted)))
        with self._connection(f"list the live {role} channels") as conn:
            rows = conn.execute(sql, (Role(role).value, *wanted)).fetchall()
        return [WatchedChannel(txid, index, expiry, ChannelStatus(status),
                               None if tx is None else bytes(tx), current,
                               None if r_tx is None else bytes(r_tx))
                for txid, index, expiry, status, tx, current, r_tx in rows]

    def load(self, role: Role, contract_txids: Iterable[str]
             ) -> dict[str, tuple[ChannelRecord, ChainState]]:
        txids, found = list(dict.fromkeys(contract_txids)), {}
        width = len(codec.CHANNEL_COLUMNS)
        with self._connection(f"read {len(txids)} {role} channels") as conn:
            for start in range(0, len(txids), BATCH):
                chunk = txids[start : start + BATCH]
                sql = LOAD.format(keys=marks(len(chunk)))
                for row in conn.execute(sql, (Role(role).value, *chunk)):
                    record = codec.decode(row[:width], self._name)
                    found[record.channel_id] = (record, codec.decode_chain(row[width:]))
        return found

    def chain_heights_from(self, role: Role, height: int) -> list[str]:
        with self._connection(f"list the {role} channels a reorg may touch") as conn:
            rows = conn.execute(HEIGHTS_FROM, (Role(role).value, height, height, height))
            return [r[0] for r in rows]

    def get_meta(self, key: str) -> str | None:
        with self._connection(f"read the setting {key!r}") as conn:
            row = conn.execute(GET_META, (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction(f"store the setting {key!r}") as conn:
            conn.execute(SET_META, (key, value))

    def forget(self, role: Role, contract_txid: str) -> None:
        key = (Role(role).value, contract_txid)
        with self._transaction(f"forget {role} channel {contract_txid}") as conn:
            row = conn.execute(f"{SELECT} WHERE {_KEY}{self._FOR_UPDATE}", key).fetchone()
            if row is None:
                return
            record = codec.decode(row, self._name)
            if not record.status.final:
                raise not_final(Role(role), contract_txid, record.status)
            state = codec.decode_chain(conn.execute(CHAIN, key).fetchone())
            opened_at, closed_at = conn.execute(TIMES, key).fetchone()
            summary = summarize(record, state, opened_at, closed_at or int(time.time()))
            conn.execute(ARCHIVE, codec.encode_summary(summary))
            conn.execute(DELETE, key)  # the chain state follows (ON DELETE CASCADE)

    def history(
        self, role: Role | None = None, contract_txid: str | None = None
    ) -> list[ChannelSummary]:
        where, args = _where(role=None if role is None else [Role(role).value],
                             contract_txid=None if contract_txid is None else [contract_txid])
        sql = f"{HISTORY} WHERE {where} ORDER BY closed_at DESC, {self._HISTORY_ORDER} DESC"
        with self._connection("read the history") as conn:
            rows = conn.execute(sql, args).fetchall()
        return [codec.decode_summary(row) for row in rows]

    def prune_history(self, before: int) -> int:
        with self._transaction("prune the history") as conn:
            conn.execute(PRUNE_LOG, (before,))
            conn.execute(PRUNE_GENERATIONS, (before,))
            return int(conn.execute(PRUNE, (before,)).rowcount)

    def generations(self, role: Role, contract_txid: str) -> list[Generation]:
        with self._connection(f"read the generations of {role} channel {contract_txid}") as c:
            rows = c.execute(GENERATIONS, (Role(role).value, contract_txid)).fetchall()
        return [Generation(Role(r[0]), r[1], r[2], r[3], bytes(r[4]), *r[5:]) for r in rows]

    def discard(self, role: Role, contract_txid: str) -> None:
        key = (Role(role).value, contract_txid)
        with self._transaction(f"discard {role} channel {contract_txid}") as conn:
            row = conn.execute(f"{STATUS}{self._FOR_UPDATE}", key).fetchone()
            if row is None:
                return
            state = codec.decode_chain(conn.execute(CHAIN, key).fetchone())
            why = discard_refusal(ChannelStatus(row[0]), state)
            if why:
                raise not_discardable(Role(role), contract_txid, why)
            conn.execute(DELETE_LOG, key)
            conn.execute(DELETE, key)


def pay_arguments(record: ChannelRecord, guard: int | None = None) -> tuple[Any, ...]:
    """The arguments of PAY (PAY_SET's, then PAY_WHERE's) storing the payment of `record`;
    the stored change must be at least `guard` (default: the payment's own change; a run of
    payments on one channel stored by its last: the first's)."""
    pending = record.pending
    txid = codec.pending_txid(pending)
    change, signature = (pending.change, pending.signature) if pending else (0, b"")
    return (record.change, record.signature, record.payments, txid, change, txid, signature,
            Role(record.role).value, record.channel_id,
            record.change if guard is None else guard, record.generation, txid)


def refusal(record: ChannelRecord, stored_change: int | None, stored_status: str = "open",
            stored_generation: int = 0, stored_next: str = "") -> StoreError:
    """Why a payment on `record`'s channel, whose stored change, status, generation and
    pending re-anchor were `stored_change` (None: not stored), `stored_status`, ..., was
    refused."""
    role, txid = Role(record.role), record.channel_id
    if stored_change is None:
        return not_stored(role, txid)
    if stored_status != ChannelStatus.OPEN:
        return settlement_decided(role, txid, ChannelStatus(stored_status))
    if stored_generation != record.generation or stored_next != codec.pending_txid(
            record.pending):
        return other_generation(record, stored_generation, stored_next)
    return change_increased(role, txid, stored_change, record.change)


def _where(**wanted: list[str] | None) -> tuple[str, list[str]]:
    """A WHERE condition (and its arguments): each column given is one of its values."""
    where, args = ["TRUE"], []
    for column, values in wanted.items():
        if values is not None:
            where.append(f"{column} IN ({marks(len(values))})" if values else "FALSE")
            args.extend(values)
    return " AND ".join(where), args

"""The SQLite schema, its migrations, and the ChannelRecord <-> row and ChainState <-> row codecs.

A new file gets version 1's tables (V1) and then every step of MIGRATIONS, exactly as an old file
is upgraded, so both end with the same schema. To change the schema: append a step to MIGRATIONS
and bump SCHEMA_VERSION. To store a new ChannelRecord field: add its column to CHANNEL_COLUMNS,
`encode` and `decode`, and its `ALTER TABLE channels ADD COLUMN ... DEFAULT ...` as a step. A new
ChainState field likewise: CHAIN_COLUMNS, `encode_chain`, `decode_chain`, `ALTER TABLE
chain_state ...`. A step that reshapes data is a function of the connection (as `_to_v4`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import DecodeError, StoreError
from bitcoind_paychan.store.base import ChannelSummary

SCHEMA_VERSION = 4  # in PRAGMA user_version
APPLICATION_ID = 0x50434831  # "PCH1" in PRAGMA application_id: marks the file as ours

KEY_COLUMNS = ("role", "contract_txid")
CHANNEL_COLUMNS = (
    *KEY_COLUMNS,
    "version",
    "client_pub",
    "server_pub",
    "expiry",
    "outpoint_index",
    "value",
    "contract_tx",
    "key_secret",
    "change",
    "signature",
    "status",
    "refund_tx",
    "settlement_tx",
    "peer",
    "payments",
)
CHAIN_COLUMNS = (
    *KEY_COLUMNS,
    "contract_height",
    "spender",
    "spender_height",
    "conflict_height",
    "broadcast_height",
    "fee_rate",
)

# Version 2 added the chain watcher's tables.
V2_TABLES = (
    """CREATE TABLE chain_state (  -- the chain watcher's view of a channel (ChainState)
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        contract_height INTEGER NOT NULL,
        spender BLOB NOT NULL,
        spender_height INTEGER NOT NULL,
        conflict_height INTEGER NOT NULL,
        broadcast_height INTEGER NOT NULL,
        fee_rate INTEGER NOT NULL,
        PRIMARY KEY (role, contract_txid),
        FOREIGN KEY (role, contract_txid) REFERENCES channels ON DELETE CASCADE
    ) WITHOUT ROWID""",
    """CREATE TABLE meta (  -- small durable settings, e.g. the last block the watcher processed
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
)

# Version 3: the autopilot lists the channels it still watches by status (indexed), so rows
# that need no more watching cost nothing per block.
STATUS_INDEX = "channels_by_status"
V3_INDEXES = (f"CREATE INDEX {STATUS_INDEX} ON channels (role, status)",)

V1 = (
    """CREATE TABLE channels (
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,  -- display-order hex; the contract outpoint's txid
        version INTEGER NOT NULL,
        client_pub BLOB NOT NULL,
        server_pub BLOB NOT NULL,
        expiry INTEGER NOT NULL,
        outpoint_index INTEGER NOT NULL,
        value INTEGER NOT NULL,
        contract_tx BLOB NOT NULL,
        key_secret BLOB NOT NULL,
        change INTEGER NOT NULL,
        signature BLOB NOT NULL,
        status TEXT NOT NULL,
        refund_tx BLOB NOT NULL,
        settlement_tx BLOB NOT NULL,
        peer TEXT NOT NULL,
        payments INTEGER NOT NULL,
        PRIMARY KEY (role, contract_txid)
    ) WITHOUT ROWID""",
    """CREATE TABLE payment_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after forget
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        amount INTEGER NOT NULL,
        change_after INTEGER NOT NULL,
        info BLOB NOT NULL,
        FOREIGN KEY (role, contract_txid) REFERENCES channels ON DELETE CASCADE
    )""",
    "CREATE INDEX payment_log_by_channel ON payment_log (role, contract_txid, seq)",
)

# Version 4 keeps history: when a channel opened and closed; a summary of each forgotten
# channel; a payment log that outlives its channel's record (no cascade), numbers payments
# within their channel (`seq`; the initial payment is 1) and is ordered by `id`.
V4_STATEMENTS = (
    "ALTER TABLE channels ADD COLUMN opened_at INTEGER",  # NULL: stored before version 4
    "ALTER TABLE channels ADD COLUMN closed_at INTEGER",  # when its money was first final
    """CREATE TABLE history (  -- what stays of a forgotten channel (ChannelSummary)
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        value INTEGER NOT NULL,
        paid INTEGER NOT NULL,
        payments INTEGER NOT NULL,
        peer TEXT NOT NULL,
        expiry INTEGER NOT NULL,
        closing_txid TEXT,
        to_client INTEGER NOT NULL,
        to_server INTEGER NOT NULL,
        fee INTEGER NOT NULL,
        opened_at INTEGER,
        closed_at INTEGER NOT NULL,
        contract_tx BLOB NOT NULL,
        closing_tx BLOB NOT NULL,
        PRIMARY KEY (role, contract_txid)
    )""",
    "DROP INDEX payment_log_by_channel",
    "ALTER TABLE payment_log RENAME TO payment_log_v3",
    """CREATE TABLE payment_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- orders the log; never reused
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        seq INTEGER NOT NULL,  -- the payment's number in its channel; 1: the initial payment
        amount INTEGER NOT NULL,
        change_after INTEGER NOT NULL,
        info BLOB NOT NULL
    )""",
    "CREATE INDEX payment_log_by_channel ON payment_log (role, contract_txid, id)",
)


def _to_v4(conn: sqlite3.Connection) -> None:
    """Version 4's tables, and the older log copied: numbered within each channel, with the
    initial payment (which versions 1 to 3 did not log) put back in front of it."""
    for sql in V4_STATEMENTS:
        conn.execute(sql)
    channels = {(role, txid): (payments, value, change) for role, txid, payments, value, change
                in conn.execute("SELECT role, contract_txid, payments, value, change "
                                "FROM channels")}
    logs: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in conn.execute("SELECT seq, role, contract_txid, amount, change_after, info "
                            "FROM payment_log_v3 ORDER BY seq"):
        logs.setdefault((row[1], row[2]), []).append(row)
    rows: list[tuple[float, int, tuple[Any, ...]]] = []  # (order, before/after, new row)
    for key in sorted(channels.keys() | logs.keys()):
        logged = logs.get(key, [])
        payments, value, change = channels.get(key, (len(logged), 0, 0))
        initial = value - change - sum(row[3] for row in logged)
        number = max(payments - len(logged), 0)
        if number >= 1 and initial > 0:
            order = float(logged[0][0]) if logged else float("inf")
            rows.append((order, 0, (*key, number, initial, value - initial, b"")))
        for seq, role, txid, amount, change_after, info in logged:
            number += 1
            rows.append((float(seq), 1, (role, txid, number, amount, change_after, info)))
    rows.sort(key=lambda r: (r[0], r[1]))
    conn.executemany("INSERT INTO payment_log (role, contract_txid, seq, amount, change_after, "
                     "info) VALUES (?, ?, ?, ?, ?, ?)", [r[2] for r in rows])
    conn.execute("DROP TABLE payment_log_v3")


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)
    return run


# MIGRATIONS[v] upgrades a file from schema v + 1 to v + 2 (so MIGRATIONS[0]: 1 -> 2).
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _statements(*V2_TABLES), _statements(*V3_INDEXES), _to_v4)
assert len(MIGRATIONS) == SCHEMA_VERSION - 1

_COLS = ", ".join(CHANNEL_COLUMNS)
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in CHANNEL_COLUMNS if c not in KEY_COLUMNS)

# Upsert, not INSERT OR REPLACE: a replace deletes the row first (and its chain state with it).
# After the record's columns come opened_at and closed_at (now if the status is final, else
# NULL): an update keeps opened_at and the first closed_at, and clears it if a reorg undid it.
PUT = (
    f"INSERT INTO channels ({_COLS}, opened_at, closed_at) "
    f"VALUES ({', '.join('?' * (len(CHANNEL_COLUMNS) + 2))}) "
    f"ON CONFLICT (role, contract_txid) DO UPDATE SET {_UPDATES}, closed_at = CASE WHEN "
    "excluded.closed_at IS NULL THEN NULL ELSE coalesce(channels.closed_at, excluded.closed_at) "
    "END WHERE channels.change >= excluded.change"
)
PAY = (
    "UPDATE channels SET change = ?1, signature = ?2, payments = ?3 "
    "WHERE role = ?4 AND contract_txid = ?5 AND change >= ?1"
)
LOG = (
    "INSERT INTO payment_log (role, contract_txid, seq, amount, change_after, info) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
LOGGED = "SELECT 1 FROM payment_log WHERE role = ? AND contract_txid = ? LIMIT 1"
SELECT = f"SELECT {_COLS} FROM channels"
CHANGE = "SELECT change FROM channels WHERE role = ? AND contract_txid = ?"
STATUS = "SELECT status FROM channels WHERE role = ? AND contract_txid = ?"
DELETE = "DELETE FROM channels WHERE role = ? AND contract_txid = ?"
DELETE_LOG = "DELETE FROM payment_log WHERE role = ? AND contract_txid = ?"
PAYMENTS = "SELECT role, contract_txid, amount, change_after, info, seq FROM payment_log"
TIMES = "SELECT opened_at, closed_at FROM channels WHERE role = ? AND contract_txid = ?"

SUMMARY_COLUMNS = (*KEY_COLUMNS, "version", "status", "value", "paid", "payments", "peer",
                   "expiry", "closing_txid", "to_client", "to_server", "fee", "opened_at",
                   "closed_at", "contract_tx", "closing_tx")
ARCHIVE = (f"INSERT OR REPLACE INTO history ({', '.join(SUMMARY_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(SUMMARY_COLUMNS))})")
HISTORY = f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM history"
UNARCHIVE = "DELETE FROM history WHERE role = ? AND contract_txid = ?"
PRUNE_LOG = (
    "DELETE FROM payment_log WHERE (role, contract_txid) IN "
    "(SELECT role, contract_txid FROM history WHERE closed_at < ?)"
)
PRUNE = "DELETE FROM history WHERE closed_at < ?"

_CHAIN_VALUES = [c for c in CHAIN_COLUMNS if c not in KEY_COLUMNS]
PUT_CHAIN = (
    f"INSERT INTO chain_state ({', '.join(CHAIN_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(CHAIN_COLUMNS))}) "
    "ON CONFLICT (role, contract_txid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _CHAIN_VALUES)
)
# One row per stored channel: all NULL after the key when it has no chain state yet.
CHAIN = (
    f"SELECT {', '.join(f's.{c}' for c in _CHAIN_VALUES)} FROM channels AS c "
    "LEFT JOIN chain_state AS s USING (role, contract_txid) "
    "WHERE c.role = ? AND c.contract_txid = ?"
)
GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def encode(record: ChannelRecord) -> tuple[Any, ...]:
    """The row of `record`, in CHANNEL_COLUMNS order."""
    c = record.contract
    return (
        Role(record.role).value,
        c.txid,
        c.version,
        c.client_pub,
        c.server_pub,
        c.expiry,
        c.outpoint.index,
        c.value,
        record.contract_tx,
        record.key.secret,
        record.change,
        record.signature,
        ChannelStatus(record.status).value,
        record.refund_tx,
        record.settlement_tx,
        record.peer,
        record.payments,
    )


def decode(row: tuple[Any, ...], source: str) -> ChannelRecord:
    """The ChannelRecord of a row in CHANNEL_COLUMNS order; StoreError if it does not decode."""
    (role, txid, version, client_pub, server_pub, expiry, index, value, contract_tx, secret,
     change, signature, status, refund_tx, settlement_tx, peer, payments) = row
    try:
        contract = Contract(version, client_pub, server_pub, expiry,
                            OutPoint.from_hex(txid, index), value)
        return ChannelRecord(Role(role), contract, contract_tx, PrivateKey(secret), change,
                             signature, ChannelStatus(status), refund_tx, settlement_tx, peer,
                             payments)
    except (DecodeError, ValueError) as e:
        raise StoreError(
            f"{role} channel {txid} in {source} does not decode ({e}); the file is damaged or "
            "was edited by hand: restore it from a backup"
        ) from e


def encode_chain(role: Role, contract_txid: str, state: ChainState) -> tuple[Any, ...]:
    """The chain_state row of `state`, in CHAIN_COLUMNS order."""
    return (
        Role(role).value,
        contract_txid,
        int(state.contract_height),
        bytes(state.spender),
        int(state.spender_height),
        int(state.conflict_height),
        int(state.broadcast_height),
        int(state.fee_rate),
    )


def decode_chain(row: tuple[Any, ...]) -> ChainState:
    """The ChainState of a CHAIN row (no chain_state row yet: the default)."""
    if row[0] is None:
        return ChainState()
    contract_height, spender, spender_height, conflict_height, broadcast_height, fee_rate = row
    return ChainState(contract_height, bytes(spender), spender_height, conflict_height,
                      broadcast_height, fee_rate)


def encode_summary(summary: ChannelSummary) -> tuple[Any, ...]:
    """The history row of `summary`, in SUMMARY_COLUMNS order."""
    return tuple(Role(summary.role).value if name == "role" else
                 ChannelStatus(summary.status).value if name == "status" else
                 getattr(summary, name) for name in SUMMARY_COLUMNS)


def decode_summary(row: tuple[Any, ...]) -> ChannelSummary:
    """The ChannelSummary of a history row in SUMMARY_COLUMNS order."""
    values = dict(zip(SUMMARY_COLUMNS, row, strict=True))
    values["role"], values["status"] = Role(values["role"]), ChannelStatus(values["status"])
    values["contract_tx"], values["closing_tx"] = (bytes(values["contract_tx"]),
                                                   bytes(values["closing_tx"]))
    return ChannelSummary(**values)

"""The SQLite schema and the ChannelRecord <-> row and ChainState <-> row codecs.

To store a new ChannelRecord field: add its column to CHANNEL_COLUMNS, `encode` and `decode`,
bump SCHEMA_VERSION and append its `ALTER TABLE channels ADD COLUMN ... DEFAULT ...` to
MIGRATIONS (so files of the previous version are upgraded in place when opened). A new ChainState
field likewise: CHAIN_COLUMNS, `encode_chain`, `decode_chain`, `ALTER TABLE chain_state ...`.
To add a table: put its CREATE statements in a tuple that both CREATE and a new MIGRATIONS step
include (as V2_TABLES), so new files and upgraded files end up with the same schema.
"""

from __future__ import annotations

from typing import Any

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import DecodeError, StoreError

SCHEMA_VERSION = 3  # in PRAGMA user_version
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

# Version 2 added the chain watcher's tables. No version-1 files were ever deployed, but the
# migration costs two statements and keeps the rule "every schema change is a MIGRATIONS step"
# (and its test) honest.
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

CREATE = (
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
    *V2_TABLES,
    *V3_INDEXES,
)

# MIGRATIONS[v] upgrades a file from schema v + 1 to v + 2 (so MIGRATIONS[0]: 1 -> 2).
MIGRATIONS: tuple[tuple[str, ...], ...] = (V2_TABLES, V3_INDEXES)
assert len(MIGRATIONS) == SCHEMA_VERSION - 1

_COLS = ", ".join(CHANNEL_COLUMNS)
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in CHANNEL_COLUMNS if c not in KEY_COLUMNS)

# Upsert, not INSERT OR REPLACE: a replace deletes the row first, which would cascade to the log.
PUT = (
    f"INSERT INTO channels ({_COLS}) VALUES ({', '.join('?' * len(CHANNEL_COLUMNS))}) "
    f"ON CONFLICT (role, contract_txid) DO UPDATE SET {_UPDATES} "
    "WHERE channels.change >= excluded.change"
)
PAY = (
    "UPDATE channels SET change = ?1, signature = ?2, payments = ?3 "
    "WHERE role = ?4 AND contract_txid = ?5 AND change >= ?1"
)
LOG = (
    "INSERT INTO payment_log (role, contract_txid, amount, change_after, info) "
    "VALUES (?, ?, ?, ?, ?)"
)
SELECT = f"SELECT {_COLS} FROM channels"
CHANGE = "SELECT change FROM channels WHERE role = ? AND contract_txid = ?"
STATUS = "SELECT status FROM channels WHERE role = ? AND contract_txid = ?"
DELETE = "DELETE FROM channels WHERE role = ? AND contract_txid = ?"
DELETE_LOG = "DELETE FROM payment_log WHERE role = ? AND contract_txid = ?"
PAYMENTS = "SELECT role, contract_txid, amount, change_after, info, seq FROM payment_log"

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

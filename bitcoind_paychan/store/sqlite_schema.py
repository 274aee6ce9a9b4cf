"""The SQLite engine's schema and its migrations (the codec is `codec.py`, the statements
`sql.py`).

A new file gets version 1's tables (V1) and then every step of MIGRATIONS, exactly as an old file
is upgraded, so both end with the same schema. To change the schema: append a step to MIGRATIONS
(and the same change to `postgres_schema.py`) and bump SCHEMA_VERSION in `codec.py`. A step that
reshapes data is a function of the connection (as `_to_v4`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from bitcoind_paychan.store.codec import SCHEMA_VERSION
from bitcoind_paychan.store.sql import STATUS_INDEX, reanchor_statements

APPLICATION_ID = 0x50434831  # "PCH1" in PRAGMA application_id: marks the file as ours
# The version is in PRAGMA user_version.

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

# The payment log of version 4 (`stamp` empty) and 5 (`stamp`: its stored_at column).
PAYMENT_LOG = """CREATE TABLE payment_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- orders the log; never reused
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        seq INTEGER NOT NULL,  -- the payment's number in its channel; 1: the initial payment
        amount INTEGER NOT NULL,
        change_after INTEGER NOT NULL,
        info BLOB NOT NULL{stamp}
    )"""

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
    PAYMENT_LOG.format(stamp=""),
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


# Version 5 stamps each logged payment with when it was stored (Unix seconds; the column's
# default, so every write gets it; NULL: logged before version 5), indexed for "since".
STORED_AT = "CAST(strftime('%s', 'now') AS INTEGER)"
V5_STATEMENTS = (
    "DROP INDEX payment_log_by_channel",
    "ALTER TABLE payment_log RENAME TO payment_log_v4",
    PAYMENT_LOG.format(stamp=f",\n        stored_at INTEGER DEFAULT ({STORED_AT})"),
    "INSERT INTO payment_log (id, role, contract_txid, seq, amount, change_after, info, "
    "stored_at) SELECT id, role, contract_txid, seq, amount, change_after, info, NULL "
    "FROM payment_log_v4",
    # Ids are never reused: the sequence goes on from the old table's (rows pruned at its end
    # included), not from the highest id copied.
    "DELETE FROM sqlite_sequence WHERE name = 'payment_log'",
    "UPDATE sqlite_sequence SET name = 'payment_log' WHERE name = 'payment_log_v4'",
    "DROP TABLE payment_log_v4",
    "CREATE INDEX payment_log_by_channel ON payment_log (role, contract_txid, id)",
    "CREATE INDEX payment_log_by_time ON payment_log (stored_at)",
)


# Version 6: what the gateway took of each server channel's payments (store/credit.py: its
# credit is what the channel paid less this). Self-contained: it touches no other table.
V6_TABLES = (
    """CREATE TABLE credit_spent (
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        spent INTEGER NOT NULL CHECK (spent >= 0),
        PRIMARY KEY (role, contract_txid),
        FOREIGN KEY (role, contract_txid) REFERENCES channels ON DELETE CASCADE
    ) WITHOUT ROWID""",
)


# Version 7: re-anchoring (docs/design/reanchoring.md 9). A channel keeps its key (its channel
# id, generation 0's contract txid); its current generation, a re-anchor in flight, and every
# generation it left behind (never deleted with the channel: history). One self-contained step
# (`reanchor_statements`, shared with PostgreSQL) so it can be renumbered at a merge.
V7_STATEMENTS = reanchor_statements("BLOB", "x''")


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)
    return run


# MIGRATIONS[v] upgrades a file from schema v + 1 to v + 2 (so MIGRATIONS[0]: 1 -> 2).
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _statements(*V2_TABLES), _statements(*V3_INDEXES), _to_v4,
    _statements(*V5_STATEMENTS), _statements(*V6_TABLES), _statements(*V7_STATEMENTS))
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


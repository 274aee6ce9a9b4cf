"""The PostgreSQL engine's schema and its migrations (codec: `codec.py`, statements: `sql.py`).

PostgreSQL stores start at store schema version FIRST_VERSION (the first version this engine
existed at): a new database gets CREATE, then every step of MIGRATIONS, exactly as an older one
is upgraded. To change the schema: append a step here (and the same change to
`sqlite_schema.py`) and bump SCHEMA_VERSION in `codec.py`. The version is the one row of
`schema_version`. Migrations run in one transaction, under an advisory lock, so instances
starting together upgrade a shared database once.
"""

from __future__ import annotations

from bitcoind_paychan.store.codec import SCHEMA_VERSION
from bitcoind_paychan.store.sql import PAY_SET, PAY_WHERE, STATUS_INDEX, reanchor_statements

FIRST_VERSION = 4
MIGRATION_LOCK = 0x50434831  # pg_advisory_lock key ("PCH1"): one migrator at a time

CREATE = (
    """CREATE TABLE channels (
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,  -- display-order hex; the contract outpoint's txid
        version INTEGER NOT NULL,
        client_pub BYTEA NOT NULL,
        server_pub BYTEA NOT NULL,
        expiry BIGINT NOT NULL,
        outpoint_index INTEGER NOT NULL,
        value BIGINT NOT NULL,
        contract_tx BYTEA NOT NULL,
        key_secret BYTEA NOT NULL,
        change BIGINT NOT NULL,
        signature BYTEA NOT NULL,
        status TEXT NOT NULL,
        refund_tx BYTEA NOT NULL,
        settlement_tx BYTEA NOT NULL,
        peer TEXT NOT NULL,
        payments BIGINT NOT NULL,
        opened_at BIGINT,
        closed_at BIGINT,  -- when its money was first final
        PRIMARY KEY (role, contract_txid)
    )""",
    f"CREATE INDEX {STATUS_INDEX} ON channels (role, status)",
    """CREATE TABLE chain_state (  -- the chain watcher's view of a channel (ChainState)
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        contract_height BIGINT NOT NULL,
        spender BYTEA NOT NULL,
        spender_height BIGINT NOT NULL,
        conflict_height BIGINT NOT NULL,
        broadcast_height BIGINT NOT NULL,
        fee_rate BIGINT NOT NULL,
        PRIMARY KEY (role, contract_txid),
        FOREIGN KEY (role, contract_txid) REFERENCES channels ON DELETE CASCADE
    )""",
    """CREATE TABLE meta (  -- small durable settings, e.g. the last block the watcher processed
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE payment_log (  -- outlives its channel's record (no cascade)
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- orders the log; never reused
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        seq BIGINT NOT NULL,  -- the payment's number in its channel; 1: the initial payment
        amount BIGINT NOT NULL,
        change_after BIGINT NOT NULL,
        info BYTEA NOT NULL
    )""",
    "CREATE INDEX payment_log_by_channel ON payment_log (role, contract_txid, id)",
    """CREATE TABLE history (  -- what stays of a forgotten channel (ChannelSummary)
        id BIGINT GENERATED ALWAYS AS IDENTITY,  -- orders channels closed the same second
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        value BIGINT NOT NULL,
        paid BIGINT NOT NULL,
        payments BIGINT NOT NULL,
        peer TEXT NOT NULL,
        expiry BIGINT NOT NULL,
        closing_txid TEXT,
        to_client BIGINT NOT NULL,
        to_server BIGINT NOT NULL,
        fee BIGINT NOT NULL,
        opened_at BIGINT,
        closed_at BIGINT NOT NULL,
        contract_tx BYTEA NOT NULL,
        closing_tx BYTEA NOT NULL,
        PRIMARY KEY (role, contract_txid)
    )""",
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
)

# MIGRATIONS[i] upgrades a database from FIRST_VERSION + i to FIRST_VERSION + i + 1: each a
# tuple of statements.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 4 -> 5: each logged payment stamped with when it was stored (Unix seconds; the column's
    # default, so every write gets it; NULL: logged before version 5), indexed for "since".
    ("ALTER TABLE payment_log ADD COLUMN stored_at BIGINT",
     "ALTER TABLE payment_log ALTER COLUMN stored_at SET DEFAULT "
     "floor(extract(epoch FROM now()))::bigint",
     "CREATE INDEX payment_log_by_time ON payment_log (stored_at)"),
    # 5 -> 6: what the gateway took of each server channel's payments (store/credit.py).
    # Self-contained: it touches no other table.
    ("""CREATE TABLE credit_spent (
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        spent BIGINT NOT NULL CHECK (spent >= 0),
        PRIMARY KEY (role, contract_txid),
        FOREIGN KEY (role, contract_txid) REFERENCES channels ON DELETE CASCADE
    )""",),
    # 6 -> 7: re-anchoring's generation chain and pending re-anchor (as sqlite_schema's V7).
    reanchor_statements("BYTEA", "''::bytea"),
)
assert FIRST_VERSION + len(MIGRATIONS) == SCHEMA_VERSION

# Store one payment (the arguments of sql.PAY, then seq, amount, info, role, channel id) and
# say, in one round trip, whether it was stored and the change, status, generation and pending
# re-anchor stored before it (NULL: no such channel): the outer SELECTs see the table as it was
# before the UPDATE. As sql.PAY: only on an open channel of the payment's generation, with its
# signature on a stored re-anchor's contract.
PAY_AND_LOG = (
    f"WITH paid AS (UPDATE channels SET {PAY_SET} WHERE {PAY_WHERE} "
    "RETURNING role, contract_txid, change), "
    "logged AS (INSERT INTO payment_log (role, contract_txid, seq, amount, change_after, info) "
    "SELECT role, contract_txid, ?, ?, change, ? FROM paid) "
    "SELECT (SELECT count(*) FROM paid), c.change, c.status, c.generation, c.next_txid "
    "FROM (SELECT 1) AS one LEFT JOIN channels AS c ON c.role = ? AND c.contract_txid = ?"
).replace("?", "%s")

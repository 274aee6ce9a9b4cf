"""The durable store: what each side must remember about its channels to refund or settle them.

`open_store(...)` is the way in (it picks the engine); `ChannelStore` is the contract every
engine meets. Engines: `SQLiteStore` (one file, one process), `PostgresStore` (a database that
several processes share), `MemoryStore` (tests only). The SQL engines share their logic
(`sql.py`) and the record codec (`codec.py`); each has its own schema and migrations.
"""

from __future__ import annotations

from pathlib import Path

from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store.base import (
    ChannelStore,
    ChannelSummary,
    Generation,
    PaymentLogEntry,
    StoreInfo,
    WatchedChannel,
)
from bitcoind_paychan.store.memory import MemoryStore
from bitcoind_paychan.store.postgres import PostgresStore, SessionTimeouts
from bitcoind_paychan.store.sqlite import SQLiteStore

__all__ = ["ENGINES", "ChannelStore", "ChannelSummary", "Generation", "MemoryStore",
           "PaymentLogEntry",
           "PostgresStore", "SQLiteStore", "SessionTimeouts", "StoreInfo", "WatchedChannel",
           "open_store"]

ENGINES = ("sqlite", "postgresql")


def open_store(path: str | Path | None = None, *, engine: str = "sqlite",
               dsn: str | None = None, read_only: bool = False,
               timeouts: SessionTimeouts | None = None) -> ChannelStore:
    """The durable store of `engine`: an SQLite file at `path` (created 0600 if missing), owned
    by this process until closed; or the PostgreSQL database `dsn` (its schema created or
    upgraded), which other processes may share. `read_only`: a look at a store another
    process may own. `timeouts`: what bounds each PostgreSQL session (its defaults)."""
    if engine == "sqlite" and path is not None:
        return SQLiteStore(path, read_only=read_only)
    if engine == "postgresql" and dsn is not None:
        return PostgresStore(dsn, read_only=read_only, timeouts=timeouts)
    raise StoreError(f"cannot open a store of engine {engine!r} with path={path!r} and a "
                     f"{'' if dsn else 'missing '}dsn: use engine sqlite with a path, or "
                     "postgresql with a dsn")

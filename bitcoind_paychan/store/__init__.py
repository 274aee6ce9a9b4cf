"""The durable store: what each side must remember about its channels to refund or settle them.

`open_store(path)` is the way in; `ChannelStore` is the contract every engine meets.
"""

from __future__ import annotations

from pathlib import Path

from bitcoind_paychan.store.base import ChannelStore, PaymentLogEntry, WatchedChannel
from bitcoind_paychan.store.memory import MemoryStore
from bitcoind_paychan.store.sqlite import SQLiteStore

__all__ = ["ChannelStore", "MemoryStore", "PaymentLogEntry", "SQLiteStore", "WatchedChannel",
           "open_store"]


def open_store(path: str | Path) -> ChannelStore:
    """The durable store at `path` (an SQLite file, created 0600 if missing)."""
    return SQLiteStore(path)

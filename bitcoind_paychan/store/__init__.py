"""The durable store: what each side must remember about its channels to refund or settle them.

`open_store(path)` is the way in; `ChannelStore` is the contract every engine meets.
"""

from __future__ import annotations

from pathlib import Path

from bitcoind_paychan.store.base import ChannelStore, ChannelSummary, PaymentLogEntry
from bitcoind_paychan.store.memory import MemoryStore
from bitcoind_paychan.store.sqlite import SQLiteStore

__all__ = ["ChannelStore", "ChannelSummary", "MemoryStore", "PaymentLogEntry", "SQLiteStore",
           "open_store"]


def open_store(path: str | Path, *, read_only: bool = False) -> ChannelStore:
    """The durable store at `path` (an SQLite file, created 0600 if missing), owned by this
    process until closed; or, `read_only`, a look at a store another process may own."""
    return SQLiteStore(path, read_only=read_only)

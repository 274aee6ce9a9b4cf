"""Which channel a log line is about: its contract txid and peer, as fields of the record.

    with channel_logging(txid, peer):        # every line logged inside carries both
        log.info("payment received")
    log.info("settled %s", txid, extra=channel_fields(txid, peer))   # one line
    bind_channel(txid)                       # the rest of this task (a connection's task)

The daemon's formatters (`daemon/logs.py`) write them as `contract_txid` and `peer` fields
(JSON) or a `[channel=<txid> peer=<host:port>]` prefix (human). Unset: neither.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Concatenate, ParamSpec, TypeVar

_CHANNEL: ContextVar[tuple[str, str]] = ContextVar("paychan_log_channel", default=("", ""))

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


def channel_fields(txid: str = "", peer: str = "") -> dict[str, str]:
    """`extra=` for one log line about a channel."""
    return {"contract_txid": txid, "peer": peer}


def bind_channel(txid: str | None = None, peer: str | None = None) -> None:
    """Attach the channel (and/or peer) to every later line of the current task."""
    current_txid, current_peer = _CHANNEL.get()
    _CHANNEL.set((current_txid if txid is None else txid,
                  current_peer if peer is None else peer))


@contextlib.contextmanager
def channel_logging(txid: str, peer: str = "") -> Iterator[None]:
    token = _CHANNEL.set((txid, peer))
    try:
        yield
    finally:
        _CHANNEL.reset(token)


def about_channel(method: Callable[Concatenate[S, Any, P], Awaitable[R]]
                  ) -> Callable[Concatenate[S, Any, P], Awaitable[R]]:
    """A coroutine method whose first argument is a channel record logs about that channel."""

    @functools.wraps(method)
    async def wrapper(self: S, record: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with channel_logging(record.contract_txid, getattr(record, "peer", "")):
            return await method(self, record, *args, **kwargs)

    return wrapper


class ChannelFields(logging.Filter):
    """Gives every record `contract_txid` and `peer` (from `extra=`, else the context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        txid, peer = _CHANNEL.get()
        if not getattr(record, "contract_txid", ""):
            record.contract_txid = txid
        if not getattr(record, "peer", ""):
            record.peer = peer
        return True

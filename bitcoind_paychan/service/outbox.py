"""Carrying out a machine's effects in order, with its messages batched onto the wire."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bitcoind_paychan.channel.effects import Effect, Send
from bitcoind_paychan.wire import MessageStream, pb


async def effects_in_order(queue: list[Effect], stream: MessageStream | None,
                           hold: tuple[type, ...] = ()) -> AsyncIterator[Effect]:
    """Yield each effect that is not a Send, in order, once every Send before it is written
    (consecutive Sends go out in one write). Sends before a `hold` effect wait and go out
    with later ones (a send may always come later, never earlier). The caller may push
    effects onto the front of `queue` (answers) or replace its contents while iterating. With
    no stream, Sends are dropped (a settlement decided with no client connected)."""
    outbox: list[pb.TwoWayChannelMessage] = []
    while queue:
        effect = queue.pop(0)
        if isinstance(effect, Send):
            outbox.append(effect.message)
            continue
        if not isinstance(effect, hold):
            if outbox and stream is not None:
                await send_all(stream, outbox)
            outbox = []
        yield effect
    if outbox and stream is not None:
        await send_all(stream, outbox)


async def send_all(stream: MessageStream, messages: list[pb.TwoWayChannelMessage]) -> None:
    """Write `messages`; a peer that already left is no error (the chain tells the rest)."""
    with contextlib.suppress(ConnectionError):
        await stream.send_many(messages)

"""Carrying out a machine's effects in order, with its messages batched onto the wire."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bitcoind_paychan.channel.effects import Effect, Send
from bitcoind_paychan.transport.base import Link, encode
from bitcoind_paychan.wire import pb


async def effects_in_order(queue: list[Effect], stream: Link | None,
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


async def send_all(link: Link, messages: list[pb.TwoWayChannelMessage]) -> None:
    """Send `messages`; a peer that already left is no error (the chain tells the rest)."""
    frames = encode(messages)
    with contextlib.suppress(ConnectionError):
        await link.send_frames(frames)

"""What a server tells its application: the events its `on_event` hears and the
callbacks' types."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    ClosingSeen,
    PaymentReceived,
    PeerError,
    ReanchorSigned,
)

ServerEvent = (ChannelOpened | PaymentReceived | ChannelClosed | PeerError | ClosingSeen
               | ChannelFinished | ReanchorSigned)
"""What a server's `on_event` hears (their order: docs/events.md)."""
PaymentHandler = Callable[[PaymentReceived], bytes | Awaitable[bytes | None] | None]
"""`on_payment`: called once a payment is verified and stored, before its ack; what it returns
(bytes, or a coroutine's bytes) goes to the client in the ack."""
EventHandler = Callable[[ServerEvent], object]

"""What a client's application hears through `on_event`, each channel's events in their
documented order (docs/events.md): ChannelOpened (each open or resume), PaymentAcknowledged
(each payment), the closing once (ChannelClosed, or ClosingSeen if the chain showed it
first), ChannelFinished last."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    ClosingSeen,
    PaymentAcknowledged,
)
from bitcoind_paychan.service.callbacks import Callbacks

log = logging.getLogger(__name__)
ClientEvent = ChannelOpened | PaymentAcknowledged | ChannelClosed | ClosingSeen | ChannelFinished
"""What a client's `on_event` hears (docs/events.md gives their order)."""
ClientEventHandler = Callable[[ClientEvent], object]
"""A client's `on_event`: its return value is ignored, an exception it raises is logged and
counted."""
FINISHED_KEPT = 4096  # finished channels remembered, to drop their late events


class ClientEvents:
    """Passes a client's events to the application's `on_event` (isolated by `callbacks`),
    keeping each channel's order: its closing is told once (a ChannelClosed after the
    ClosingSeen of the same settlement, or the other way round, is dropped), and nothing
    after its ChannelFinished (an event racing the block that finished it is dropped: the
    ChannelFinished's record and amounts already say it)."""

    def __init__(self, callbacks: Callbacks) -> None:
        self.callbacks = callbacks
        self.on_event: ClientEventHandler | None = None
        self._closing: set[str] = set()  # channels whose closing was told, not finished yet
        self._finished: dict[str, None] = {}  # the last FINISHED_KEPT, oldest first

    def tell(self, event: ClientEvent) -> None:
        txid = event.record.channel_id
        if txid in self._finished:
            log.debug("channel %s finished already: %s not told", txid, type(event).__name__)
            return
        if isinstance(event, ChannelClosed | ClosingSeen):
            if txid in self._closing:
                return
            self._closing.add(txid)
        elif isinstance(event, ChannelFinished):
            self._closing.discard(txid)
            self._finished[txid] = None
            if len(self._finished) > FINISHED_KEPT:
                del self._finished[next(iter(self._finished))]
        self.callbacks.event(self.on_event, event)

"""ClientEvents keeps each channel's order for a client's `on_event`: the closing is told
once, nothing after ChannelFinished, other channels untouched (the races it covers are a
block or the mempool reaching the autopilot before the connection's message)."""

from __future__ import annotations

from bitcoind_paychan import (
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    ChannelStatus,
    ClientEvent,
    ClosingSeen,
    PaymentAcknowledged,
    Role,
    Transaction,
)
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.clientevents import FINISHED_KEPT, ClientEvents
from tests.store.helpers import Channel


def test_the_closing_is_told_once_and_nothing_after_the_finish() -> None:
    heard: list[ClientEvent] = []
    events = ClientEvents(Callbacks())
    events.on_event = heard.append
    one, other = Channel().record(Role.CLIENT), Channel(value=200_000).record(Role.CLIENT)
    settlement = Transaction.parse(Channel().contract_tx)  # any tx stands for it here
    told: list[ClientEvent] = [
        ChannelOpened(one, resumed=False),
        PaymentAcknowledged(one, 2_000, b""),
        ClosingSeen(one, settlement, refund=False),  # the mempool was first
        ChannelClosed(one, settlement),  # the same closing again: not told
        ChannelOpened(other, resumed=False),
        ChannelFinished(one, ChannelStatus.SETTLED, settlement, 3_000, 97_000),
        PaymentAcknowledged(one, 1_000, b""),  # raced the block: not told
        ChannelClosed(other, settlement),
        ClosingSeen(other, settlement, refund=False),
    ]
    for event in told:
        events.tell(event)
    assert heard == [told[0], told[1], told[2], told[4], told[5], told[7]]


def test_a_raising_handler_is_counted_and_finished_channels_are_remembered_boundedly() -> None:
    def broken(event: ClientEvent) -> None:
        raise RuntimeError("the application's bug")

    callbacks = Callbacks()
    events = ClientEvents(callbacks)
    events.on_event = broken
    record = Channel().record(Role.CLIENT)
    events.tell(ChannelFinished(record, ChannelStatus.REFUNDED, None, 0, record.value))
    events.tell(ChannelOpened(record, resumed=True))  # after its finish: dropped, not called
    assert callbacks.errors == 1
    for value in range(FINISHED_KEPT):  # enough others finish: the first is let go
        later = Channel(value=100_000 + value).record(Role.CLIENT)
        events.tell(ChannelFinished(later, ChannelStatus.SETTLED, None, 0, 0))
    events.tell(ChannelOpened(record, resumed=True))
    assert callbacks.errors == FINISHED_KEPT + 2

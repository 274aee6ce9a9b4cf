"""The fast lane: an open channel's payments handled as they arrive, in the TCP protocol's
callback (no task woken per frame), handed to the group commit together, and acknowledged in
the callback that reports their commit (one loop wake-up per commit, not per payment).

It takes what the machine turns into stored payments and acks only: UPDATE_PAYMENTs (not one
using the channel up) on an open, confirmed channel whose application answers nothing (no
`on_payment`). The machine checks each (every signature verified) as ever; each ack is sent
only after the commit holding its payment, fenced by the connection's lease like any. What
else comes (another message, a payment the machine refuses, one the store refuses) goes back
to the connection's task, in order, once every hand-over before it is answered: the general
path (`_carry_out`) does it, as for any connection.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING

from bitcoind_paychan.channel.effects import Effect, PaymentReceived, Send, StorePayment
from bitcoind_paychan.channel.server import PAYMENT_WINDOW
from bitcoind_paychan.errors import RemoteProtocolError
from bitcoind_paychan.store.writer import Outcomes
from bitcoind_paychan.transport.base import Tappable, decode
from bitcoind_paychan.wire import pb
from bitcoind_paychan.wire.codec import encode_message
from bitcoind_paychan.wire.framing import encode_frame

if TYPE_CHECKING:
    from bitcoind_paychan.service.server.connection import ServerConnection

UPDATE_PAYMENT = pb.TwoWayChannelMessage.UPDATE_PAYMENT
PAYMENT_ACK = pb.TwoWayChannelMessage.PAYMENT_ACK


def _carried(effect: Effect) -> bool:
    """Does the lane carry `effect` out itself (a payment stored, reported, acknowledged)?"""
    return isinstance(effect, StorePayment | PaymentReceived) or (
        isinstance(effect, Send) and effect.message.type == PAYMENT_ACK)


def _framed(message: pb.TwoWayChannelMessage) -> bytes:
    return encode_frame(encode_message(message))  # a bare PAYMENT_ACK: serialized once


class FastLane:
    """One run of a connection's fast lane over `stream` (built when the connection may
    take payments this way: `ServerConnection.fast`)."""

    def __init__(self, connection: ServerConnection, stream: Tappable) -> None:
        self.connection, self.stream = connection, stream
        self._inflight = 0  # hand-overs awaiting their commit
        self._deferred: list[tuple[list[Effect], Outcomes | None]] = []  # the general path's
        self._drained: asyncio.Future[None] | None = None

    async def run(self) -> bool:
        """Take payments as they arrive until something needs the general path; then, once
        every hand-over is answered, carry that out. False once the connection must end."""
        try:
            await self.stream.run_tapped(self._take)
        finally:
            while self._inflight:  # each ack goes out in its commit's callback
                self._drained = asyncio.get_running_loop().create_future()
                await self._drained
        connection = self.connection
        for effects, outcomes in self._deferred:
            connection.manager._busy.add(connection)
            try:
                if not await connection.manager._carry_out(connection.machine, connection.link,
                                                           effects, stored=outcomes):
                    return False
            finally:
                connection.manager._busy.discard(connection)
        return True

    def _take(self, frames: list[bytes]) -> int:
        """The payments leading `frames` (up to the window), checked by the machine and
        handed to the writer; how many frames were taken."""
        connection = self.connection
        if self._deferred or not connection.fast or self.stream.backed_up:
            return 0  # the task takes them (its sends wait for a peer that does not read)
        received: list[pb.TwoWayChannelMessage] = []
        for payload in frames[:PAYMENT_WINDOW]:
            try:
                message = decode(payload)
            except RemoteProtocolError:  # the task refuses it
                break
            if message.type != UPDATE_PAYMENT or not message.update_payment.client_change_value:
                break
            received.append(message)
        if not received:
            return 0
        effects, taken = connection.machine.receive_pipelined(received,
                                                              int(connection.manager.clock()))
        stores = [(e.record, e.amount, e.info) for e in effects if isinstance(e, StorePayment)]
        if not stores or not all(_carried(e) for e in effects):
            self._deferred.append((effects, None))  # a refusal, a re-sent payment: in order
            self.stream.untap()
            return taken
        manager = connection.manager
        manager._busy.add(connection)
        self._inflight += 1
        manager.payments.submit(stores, manager._held.get(id(connection.link)),
                                functools.partial(self._committed, effects,
                                                  time.perf_counter()))
        return taken

    def _committed(self, effects: list[Effect], started: float, outcomes: Outcomes) -> None:
        """A hand-over's commit is done: its acks sent now, or, if a payment was not stored
        (or something before it went to the general path), all of it to the general path."""
        self._inflight -= 1
        try:
            if self._deferred or any(outcome is not None for outcome in outcomes):
                self._deferred.append((effects, outcomes))
                self.stream.untap()
            else:
                self._acknowledge(effects, started)
        finally:
            if not self._inflight:
                self.connection.manager._busy.discard(self.connection)
                if self._drained is not None and not self._drained.done():
                    self._drained.set_result(None)

    def _acknowledge(self, effects: list[Effect], started: float) -> None:
        """Every payment of `effects` is stored: the application told, the machine answered,
        the acks written in one write."""
        manager, machine = self.connection.manager, self.connection.machine
        sent: list[bytes] = []
        for effect in effects:
            if isinstance(effect, PaymentReceived):
                manager.callbacks.event(manager.on_event, effect)
                sent += [_framed(answer.message) for answer in
                         machine.payment_answered(effect, b"") if isinstance(answer, Send)]
            elif isinstance(effect, Send):
                sent.append(_framed(effect.message))
        self.stream.post_framed(b"".join(sent))
        if manager.on_payment_latency is not None:
            elapsed = time.perf_counter() - started
            for _ in range(sum(isinstance(e, StorePayment) for e in effects)):
                manager.callbacks.event(manager.on_payment_latency, elapsed)

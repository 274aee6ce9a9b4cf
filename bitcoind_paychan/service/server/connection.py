"""ServerConnection: one client's connection to a ServerManager, frames in, the
manager's effects out, in order."""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import Effect
from bitcoind_paychan.channel.server import (
    PAYMENT_WINDOW,
    ServerChannel,
    ServerPolicy,
    ServerState,
)
from bitcoind_paychan.errors import RemoteProtocolError
from bitcoind_paychan.logcontext import bind_channel
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.outbox import send_all
from bitcoind_paychan.service.server.events import EventHandler, PaymentHandler
from bitcoind_paychan.service.server.fastlane import FastLane
from bitcoind_paychan.service.server.settlement import Settling
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store.leases import Lease
from bitcoind_paychan.store.writer import Outcomes, PaymentWriter
from bitcoind_paychan.transport.base import Link, Tappable, decode
from bitcoind_paychan.wire import pb

# The "server" subsystem's lines (daemon/logs.py), as before the server had its package.
log = logging.getLogger("bitcoind_paychan.service.server")
UPDATE_PAYMENT = pb.TwoWayChannelMessage.UPDATE_PAYMENT
PAYING = (UPDATE_PAYMENT, pb.TwoWayChannelMessage.PROVIDE_CONTRACT)  # messages that pay


class Manager(Protocol):
    """What a connection asks of its ServerManager."""

    policy: ServerPolicy
    clock: Callable[[], float]
    min_confirmations: int
    handshake_timeout: float
    resume_timeout: float
    watcher: ChainWatcher
    callbacks: Callbacks
    on_payment_latency: Callable[[float], None] | None
    on_payment: PaymentHandler | None
    on_event: EventHandler | None
    payments: PaymentWriter
    _busy: set[ServerConnection]
    _held: dict[int, Lease]
    _stopping: bool

    async def _carry_out(self, machine: ServerChannel, stream: Link | None,
                         effects: list[Effect], settling: Settling | None = None,
                         stored: Outcomes | None = None) -> bool: ...

    def _ended(self, connection: ServerConnection) -> None: ...

    async def _reanchor_unasked(self, connection: ServerConnection) -> None: ...


class ServerConnection:
    """One client's connection to a ServerManager. Hand it each frame (or decoded message)
    received, one call at a time, in order: `await receive(frame)` returns once that frame's
    effects are carried out (stored, the replies sent through the link). Call
    `connection_lost()` when the connection ends. A peer's protocol error is answered with
    ERROR and the link closed (`closed` is then true); nothing is raised."""

    def __init__(self, manager: Manager, link: Link, peer: str) -> None:
        self.manager = manager
        self.link = link
        self.peer = peer or "unknown peer"
        self.machine = ServerChannel(manager.policy, PrivateKey.generate(), int(manager.clock()),
                                     peer)
        self._confirmed = manager.min_confirmations == 0
        # The autopilot's last unasked quote: (not again before, the generation it was on).
        self.quoted = (0.0, -1)
        bind_channel(peer=self.peer)  # the task that carries it logs its peer

    @property
    def closed(self) -> bool:
        return self.machine.state is ServerState.CLOSED

    @property
    def handshake_over(self) -> bool:
        """The channel is open (or settling): the handshake's limits no longer apply."""
        return self.machine.state in (ServerState.OPEN, ServerState.SETTLING)

    @property
    def idle_timeout(self) -> float | None:
        """How long the peer may stay silent now: the handshake timeout until the channel is
        open; resumed but not yet proven, the (longer) resume timeout (a bitcoinj client
        proves it with its next payment, whenever its application pays); open, no limit, as
        bitcoinj."""
        if self.machine.state is ServerState.OPEN:
            return None
        if self.machine.state is ServerState.RESUMED:
            return self.manager.resume_timeout
        return self.manager.handshake_timeout

    @property
    def contract_txid(self) -> str | None:
        record = self.machine.record
        return record.channel_id if record else None

    def takes_more(self, count: int) -> bool:
        """Would `count` + 1 pipelined payments be handled together now?"""
        return (self._confirmed and self.machine.state is ServerState.OPEN
                and count < PAYMENT_WINDOW)

    @property
    def fast(self) -> bool:
        """May payments take the fast lane now (`fastlane.py`): open, confirmed, no
        application answer to wait for, the manager not stopping, and no re-anchoring
        autopilot of ours to ask after each payment (`payout_above`, `renew_before`: the
        general path quotes after payments)?"""
        manager = self.manager
        policy = manager.policy
        autopilot = self.machine.reanchoring and bool(policy.payout_above
                                                      or policy.renew_before)
        return (self.takes_more(0) and manager.on_payment is None and not manager._stopping
                and not autopilot)

    async def run_fast_lane(self, stream: Tappable) -> None:
        """Take payments in the stream's callback until something needs this task (then
        carried out here, in order)."""
        if not await FastLane(self, stream).run():
            self.connection_lost()

    async def receive(self, frame: bytes | pb.TwoWayChannelMessage) -> None:
        """Handle one frame from the client."""
        await self.receive_many([frame])

    async def receive_many(self, frames: Iterable[bytes | pb.TwoWayChannelMessage]) -> None:
        """Handle frames received together: pipelined payments are verified in order, stored
        in one commit and acknowledged in one send."""
        pending: collections.deque[pb.TwoWayChannelMessage] = collections.deque()
        for frame in frames:
            try:
                pending.append(decode(frame))
            except RemoteProtocolError as exc:
                await self._handle(pending)
                await self.refuse(exc)
                return
        await self._handle(pending)

    async def refuse(self, exc: RemoteProtocolError) -> None:
        """The peer broke the rules outside the machine's view (a bad frame, silence):
        answer ERROR and hang up."""
        if self.closed:
            return
        log.info("%s: %s", self.peer, exc)
        await send_all(self.link, [messages.error(exc.code, str(exc))])
        await self.link.close()
        self.connection_lost()

    def connection_lost(self) -> None:
        """The connection has ended (idempotent)."""
        if not self.closed:
            log.info("%s left (%s)", self.peer, self.machine.state.value)
            self.machine.connection_lost()
        self.manager._ended(self)

    async def _handle(self, pending: collections.deque[pb.TwoWayChannelMessage]) -> None:
        manager, machine = self.manager, self.machine
        while pending and not self.closed:
            message = pending.popleft()
            record = machine.record
            if message.type == UPDATE_PAYMENT and record is not None and not self._confirmed:
                # Payments beyond the first wait until the contract is buried deep enough.
                await manager.watcher.until_confirmed(record.channel_id,
                                                      manager.min_confirmations)
                self._confirmed = True
            manager._busy.add(self)
            started = time.perf_counter()
            stored_before = record.payments if record is not None else 0
            if self.takes_more(0):  # pipelined: this and those already here, checked together
                batch = [message, *itertools.islice(pending, PAYMENT_WINDOW - 1)]
                effects, taken = machine.receive_pipelined(batch, int(manager.clock()))
                received = batch[:taken]
                for _ in range(taken - 1):
                    pending.popleft()
            else:
                received, effects = [message], machine.receive(message,
                                                               int(manager.clock()))
            try:
                if not await manager._carry_out(machine, self.link, effects):
                    self.connection_lost()
                    return
            finally:
                manager._busy.discard(self)
            if any(done.type == UPDATE_PAYMENT for done in received):
                await manager._reanchor_unasked(self)  # a payout or renewal due?
            if manager.on_payment_latency and machine.record is not None and any(
                    done.type in PAYING for done in received):
                # One per payment stored (the opening payment with its contract), as counted
                # by the PaymentReceived events; a resume's loaded payments are not new.
                elapsed = time.perf_counter() - started
                for _ in range(machine.record.payments - stored_before):
                    manager.callbacks.event(manager.on_payment_latency, elapsed)

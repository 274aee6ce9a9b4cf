"""Channel: one channel on a live connection to its server: payments (overlapping,
up to the window), close, and the machine driven by what the connection reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Literal, Protocol, cast

from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import (
    ClientChannel,
    ClientPolicy,
    ClientState,
)
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelOpened,
    Disconnect,
    Effect,
    FundContract,
    FundReanchor,
    PaymentAcknowledged,
    PeerError,
    ReanchorEnded,
    ReanchorLocked,
    ReanchorOffered,
    ReanchorSigned,
    ResumeRefused,
    Send,
    StoreChannel,
    StorePayment,
    VersionRefused,
)
from bitcoind_paychan.channel.reanchor_autopilot import client_wish, deposited
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import (
    ChannelFailed,
    ChannelGone,
    InvalidParameter,
    LocalProtocolError,
    NodeError,
    PaychanError,
    PaymentTimeout,
    ProtocolError,
    ReanchorRefused,
    RemoteProtocolError,
    StoreError,
)
from bitcoind_paychan.node.ports import Broadcaster, ChainSource, Wallet
from bitcoind_paychan.service.client.reanchoring import (
    fund_reanchor,
    reanchor_ended,
    reanchor_locked,
)
from bitcoind_paychan.service.clientevents import ClientEvents
from bitcoind_paychan.service.outbox import effects_in_order
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.writer import PaymentWriter
from bitcoind_paychan.transport.base import CarriedStream, Stream, Tappable, encode
from bitcoind_paychan.wire import pb
from bitcoind_paychan.wire.framing import encode_frame

# The "client" subsystem's lines (daemon/logs.py), as before the client had its package.
log = logging.getLogger("bitcoind_paychan.service.client")
PAY_TIMEOUT = 60.0  # seconds `pay` waits for its PAYMENT_ACK by default
REPROPOSE_AFTER = 60.0  # s before the autopilot asks again for a re-anchor that did not happen
USED_UP = (ClientState.CLOSE_AFTER_ACK, ClientState.CLOSING)  # no more payments: closing


class Manager(Protocol):
    """What a channel asks of its ClientManager."""

    wallet: Wallet
    chain: ChainSource
    broadcaster: Broadcaster
    store: ChannelStore
    payments: PaymentWriter
    network: Network
    handshake_timeout: float
    clock: Callable[[], float]
    policy: ClientPolicy
    watcher: ChainWatcher
    events: ClientEvents
    on_peer_error: Callable[[PeerError], object] | None
    background: set[asyncio.Task[None]]  # channels' re-anchoring work: awaited by stop()


class Channel:
    """An open channel on a live connection. Payments may overlap: up to the machine's window
    (what the server accepts, at most the policy's `payment_window`) are in flight at once.
    `open_channel` returns the live channel to a server as this same object to every caller;
    nothing in it changes for that."""

    def __init__(self, client: Manager, machine: ClientChannel, stream: Stream) -> None:
        self.client = client
        self.machine = machine
        self.stream = stream
        self.funded_inputs: tuple[tuple[str, int], ...] = ()
        self._events: list[Effect] = []
        self._lock = asyncio.Lock()  # payments and CLOSE go out one at a time, in call order
        self._reading = asyncio.Lock()  # one task reads the connection at a time
        self._acks: deque[asyncio.Future[bytes]] = deque()  # pay() calls awaiting acks
        self._sent: asyncio.Future[None] | None = None  # the last payment's turn on the wire
        self._outgoing: list[pb.TwoWayChannelMessage] = []  # payments posted, not yet written
        self._sending: asyncio.Future[None] | None = None  # the last posted payments' send
        # An R just signed, being stored and sent: payments signed after it (on both
        # contracts) are stored and sent after it.
        self._signing: asyncio.Future[None] | None = None
        self._reanchoring = False  # a reanchor() awaits the server's answer
        self._server_error: PeerError | None = None  # the ERROR the server ended with
        # The autopilot's last wish: (not again before, the generation it was made on).
        self._proposed = (0.0, -1)
        self._woken = asyncio.Event()  # background work ended: `reanchor()` looks again
        self._working = 0  # background work in flight (started by this connection's reader)
        self._lagging: ReanchorLocked | None = None  # the server's lock our node lagged
        self._writes_now = isinstance(stream, Tappable)  # TCP: posted payments written at once

    @property
    def resumed(self) -> bool:
        """This connection continues a channel opened earlier (on another connection, maybe
        before a restart), rather than one it opened."""
        return self.machine.resumed

    @property
    def record(self) -> ChannelRecord:
        if self.machine.record is None:
            raise LocalProtocolError("the channel has no contract yet")
        return self.machine.record

    @property
    def contract_txid(self) -> str:
        """The current contract's txid (the channel's id until a re-anchor confirms)."""
        return self.record.contract_txid

    @property
    def channel_id(self) -> str:
        """The channel's identity for life: its first contract's txid (the store's key)."""
        return self.record.channel_id

    @property
    def version(self) -> int:
        return self.machine.version

    @property
    def remaining(self) -> int:
        """What the client can still pay."""
        return self.record.change

    @property
    def paid(self) -> int:
        return self.record.paid

    @property
    def connected(self) -> bool:
        return self.machine.state is not ClientState.CLOSED

    async def pay(self, amount: int, info: bytes = b"", timeout: float | None = PAY_TIMEOUT
                  ) -> bytes:
        """Pay `amount` sat more; returns once the server acknowledged it (with its info).
        The payment is stored before it is sent; calls made while others await their acks are
        sent at once while the window has room. On a channel that can no longer be paid
        through: ChannelGone (closed, settled, used up, forgotten) or ChannelFailed (failed,
        or its connection ended), saying what to do; nothing is stored or sent then.
        No ack within `timeout` seconds (default 60; None: wait as long as it takes):
        PaymentTimeout, and the connection is closed; the payment stays stored, and resuming
        the channel sends it again."""
        machine, loop = self.machine, asyncio.get_running_loop()
        if not self.connected:
            raise await self._unpayable()
        if self._spent():
            raise ChannelGone(self._used_up())
        async with self._lock:  # signed, queued for the store and for the wire in call order
            await self._reanchor_due()
            while machine.state is ClientState.WAITING_FOR_ACK and not machine.can_pay:
                await self._read_one(lambda: machine.can_pay)  # an ack makes room
            if self._spent() or not self.connected:
                raise ChannelGone(self._used_up()) if self.connected else (
                    await self._unpayable())
            effects = machine.pay(amount, info)
            if self._signing is not None:  # R signed just before this payment: R first
                await asyncio.shield(self._signing)
            writes = self.client.payments.start(effects)  # pipelined ones share a commit
            acked: asyncio.Future[bytes] = loop.create_future()
            self._acks.append(acked)
            turn, self._sent = self._sent, loop.create_future()
            sent = self._sent
        try:
            for effect in effects:
                if isinstance(effect, StorePayment):
                    try:
                        await writes.stored(effect)  # durable before it is sent
                    except StoreError as exc:  # the autopilot finished the channel meanwhile
                        raise await self._unpayable(exc) from exc
            if turn is not None:  # after the store: payments committed together wake together
                await turn  # the payment before this one is on the wire (one write for all)
            if not self.connected:
                raise ChannelFailed(self._ended())
            for effect in effects:
                if isinstance(effect, Send):
                    self._post(effect.message)
                elif not isinstance(effect, StorePayment):
                    await self._run([effect])
        except BaseException:
            await self.disconnect()  # a later payment must not go out before this one
            raise
        finally:
            sent.set_result(None)
            await writes.finish()
        try:
            async with asyncio.timeout(timeout):
                while not acked.done():
                    await self._read_one(acked.done)
        except TimeoutError:
            await self.disconnect()
            raise PaymentTimeout(
                f"{self.machine.peer} did not acknowledge the payment of {amount} sat on channel "
                f"{self.channel_id} within {timeout:g} s; the connection is closed and the "
                "payment stays stored: resume the channel to send it again") from None
        return acked.result()

    async def reanchor(self, top_up: int = 0, time_window: int = 0, timeout: float = 60.0
                       ) -> ChannelRecord:
        """Re-anchor the channel (docs/design/reanchoring.md): add `top_up` sat from our
        wallet, renew its expiry to `time_window` s from now (0: keep it), and let the server
        take a payout of what it was acknowledged. Returns the stored record once the server
        completed R (the channel moves to the new contract when R confirms); payments go on
        meanwhile (never paused: this waits for no payment's turn). ReanchorRefused if it
        did not happen (the channel goes on as it was). Only on a channel whose server
        offered re-anchoring to a client whose policy enables it, one re-anchor at a time."""
        if not self.connected:
            raise await self._unpayable()
        if self._reanchoring:
            raise LocalProtocolError(f"channel {self.channel_id} has a re-anchor in flight")
        if top_up:
            await self._within_deposit(top_up)
        self._reanchoring = True  # from now on the server's answer is this call's
        try:
            try:
                estimate = await self.client.watcher.fee_rate()  # the quote's: near it at most
            except NodeError as exc:
                raise ReanchorRefused(f"channel {self.channel_id} was not re-anchored: our "
                                      f"node gives no fee estimate ({exc}); it goes on as it "
                                      "was") from exc
            for effect in self.machine.reanchor(top_up, time_window, int(self.client.clock()),
                                                estimate):
                assert isinstance(effect, Send)  # REANCHOR_PROPOSE, in turn with payments
                self._post(effect.message)
            # Payments go on while the server quotes and checks: this waits on their reads,
            # and wakes when the wallet's funding ends with no message from the server.
            ended = await self._until((ReanchorSigned, ReanchorEnded), timeout,
                                      woken=self._woken)
        finally:
            self._reanchoring = False
        if isinstance(ended, ReanchorEnded):
            raise ReanchorRefused(f"channel {self.channel_id} was not re-anchored: "
                                  f"{ended.reason}; it goes on as it was")
        assert isinstance(ended, ReanchorSigned)
        return ended.record

    async def _deposited(self) -> int:
        """Sat this channel was ever funded with: its opening value plus every top-up."""
        record = self.record
        generations = await asyncio.to_thread(self.client.store.generations, Role.CLIENT,
                                              record.channel_id)
        return deposited(record, generations)

    async def _within_deposit(self, top_up: int) -> None:
        """InvalidParameter if `top_up` would fund the channel above `max_deposit` (when
        set: the autopilot's top-ups always are within one)."""
        cap = self.client.policy.max_deposit
        if not cap:  # none set: the application's (operator's) own top-up, as asked
            return
        funded = await self._deposited()
        if funded + top_up > cap:
            raise InvalidParameter(
                f"a top-up of {top_up} sat would fund channel {self.record.channel_id} with "
                f"{funded + top_up} sat in all, above client.max_deposit ({cap}); nothing "
                "was asked")

    async def _reanchor_due(self) -> None:
        """The autopilot (`refill_below`, `renew_before`): ask for a top-up and/or renewal
        when one is due (REANCHOR_PROPOSE; the outcome arrives as payments go on): at once
        on a new generation, else at most once per REPROPOSE_AFTER seconds (the server may
        have refused, or its own quote crossed ours)."""
        now, record = self.client.clock(), self.machine.record
        if (not self.machine.reanchoring or record is None
                or (now < self._proposed[0] and record.generation == self._proposed[1])
                or record.pending is not None
                or self.machine.state not in (ClientState.OPEN, ClientState.WAITING_FOR_ACK)):
            return
        wish = await self._autopilot_wish(record, now)
        if wish is None:
            return
        self._proposed = (now + REPROPOSE_AFTER, record.generation)
        try:
            estimate = await self.client.watcher.fee_rate()  # its quote's rate: near it at most
            await self._run(self.machine.reanchor(*wish, int(now), estimate))
        except NodeError as exc:
            log.info("the autopilot does not re-anchor channel %s now: no fee estimate (%s)",
                     record.channel_id, exc)
        except LocalProtocolError as exc:  # one in flight, or a refused one not yet dead
            log.info("the autopilot does not re-anchor channel %s now: %s",
                     record.channel_id, exc)

    async def _autopilot_wish(self, record: ChannelRecord, now: float
                              ) -> tuple[int, int] | None:
        """(top-up, time window) our autopilot asks for on `record` now, or None."""
        policy = self.client.policy
        if client_wish(policy, record, int(now), 0) is None:
            return None  # nothing due (the hot path: no store read)
        funded = await self._deposited() if policy.refill_below else record.value
        return client_wish(policy, record, int(now), funded)

    async def _answer_offer(self) -> None:
        """The server quoted a payout unasked (ReanchorOffered): our autopilot proposes its
        own top-up or renewal instead when one is due (the server's answer pays the payout
        too, in one R), else the payout alone is signed (`accept_offer` checks it again)."""
        record, now = self.record, self.client.clock()
        effects: list[Effect] | None = None
        try:
            wish = await self._autopilot_wish(record, now)
            if wish is not None:
                estimate = await self.client.watcher.fee_rate()
                effects = self.machine.reanchor(*wish, int(now), estimate)
                self._proposed = (now + REPROPOSE_AFTER, record.generation)
        except (NodeError, StoreError, LocalProtocolError) as exc:
            log.info("the autopilot signs the server's payout on channel %s alone: %s",
                     record.channel_id, exc)
        await self._run(effects if effects is not None else self.machine.accept_offer())

    async def _fund_reanchor(self, effect: FundReanchor) -> None:
        """The wallet funds a top-up; its answer, or its failure, goes to the machine."""
        try:
            effects = await fund_reanchor(self.client.wallet, self.client.chain,
                                          self.machine, effect)
        except PaychanError as exc:
            log.warning("channel %s: our wallet did not fund the re-anchor: %s",
                        self.machine.peer, exc)
            effects = self.machine.reanchor_unfunded(str(exc))
        await self._run(effects)

    def _in_background(self, work: Coroutine[object, object, None]) -> None:
        """Re-anchoring work that waits on the wallet, the store or the node, done beside
        the connection's reader (which may hold the payment lock), so acknowledgements keep
        flowing. Its events wake a `reanchor()` waiting for them; an unexpected failure
        ends the connection (the channel stays stored; a resume goes on from the store)."""
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("re-anchoring on channel %s failed; hanging up",
                              self.machine.peer)
                await self.disconnect()
            finally:
                self._working -= 1
                self._woken.set()

        self._working += 1

        task = asyncio.ensure_future(guarded())
        self.client.background.add(task)
        task.add_done_callback(self.client.background.discard)

    def _spent(self) -> bool:
        """No payment can go through any more: closing, or nothing left (change below dust
        goes to the server, so a channel paid down to dust is used up)."""
        record = self.machine.record
        return self.machine.state in USED_UP or (record is not None and record.change == 0)

    def _used_up(self) -> str:
        why = ("is used up: nothing is left to pay" if self.record.change == 0
               else "is closing: its close was asked for")
        return (f"channel {self.channel_id} {why}; the server settles it; open a new "
                "channel to pay")

    async def close(self, timeout: float = 60.0) -> Transaction:
        """Ask the server to settle (after the payment in flight, if any, is acknowledged or
        lost); return the settlement once received and checked, or once a valid spender of
        the contract appears on our node (a bitcoinj server may never send CLOSE, and may lose
        it as it hangs up). Closing a closing or closed channel returns its settlement;
        closing a failed or forgotten one raises ChannelFailed (ChannelGone) at once."""
        if self.record.settlement_tx:
            return Transaction.parse(self.record.settlement_tx)
        if not self.connected:
            stored = await self._stored()
            if stored is not None and stored.settlement_tx:
                return Transaction.parse(stored.settlement_tx)
            if stored is None or stored.status is ChannelStatus.FAILED:
                raise await self._unpayable()
        async with self._lock:
            if self.connected:
                await self._run(self.machine.close())
            wire = asyncio.ensure_future(self._until(ChannelClosed, timeout))
            chain = asyncio.ensure_future(self._settlement_from_chain(timeout))
            try:
                done, _ = await asyncio.wait({wire, chain}, return_when=asyncio.FIRST_COMPLETED)
                if wire in done and wire.exception() is None:
                    closed = wire.result()
                    assert isinstance(closed, ChannelClosed)
                    return closed.settlement
                if wire in done and self._server_error is not None:
                    # The server said why it does not settle: no settlement is coming.
                    raise ChannelFailed(f"{self._explain(self._server_error)}; the channel "
                                        "stays open unless the server settles it on its own "
                                        "(the watcher reports that when it reaches the "
                                        "chain): close it again later (it is refunded after "
                                        "its expiry if the server never settles)")
                return await chain  # the connection ended: the chain tells
            finally:
                for task in (wire, chain):
                    task.cancel()
                await asyncio.gather(wire, chain, return_exceptions=True)
                await self.disconnect()

    def receive(self, frame: bytes | pb.TwoWayChannelMessage) -> None:
        """A frame from the server, on a connection the application carries (its dialer
        returned a CarriedStream); the channel handles it when it next reads."""
        if not isinstance(self.stream, CarriedStream):
            raise LocalProtocolError("this channel's transport reads its connection itself")
        self.stream.feed(frame)

    async def disconnect(self) -> None:
        """Hang up without closing: the channel stays stored and `open` resumes it."""
        if self.connected:
            self.machine.connection_lost()
        await self.stream.close()

    async def promote_lagging(self) -> None:
        """Our watcher finds R buried: if the server's REANCHOR_LOCKED came before our node
        showed R deep enough, the live channel moves now (as the lock would have), in the
        order of the payments handed to the writer. The server sends its lock only once."""
        lock = self._lagging
        if lock is None or not self.connected:
            return
        try:
            moved = await reanchor_locked(self.client.chain, self.machine, lock,
                                          self.client.watcher.policy.forget_depth)
        except LocalProtocolError as exc:  # no longer this channel's pending re-anchor
            self._lagging = None
            log.info("channel %s: the lagged lock is stale: %s", self.channel_id, exc)
            return
        if moved:
            self._lagging = None
            await self._run(moved)

    # -- driving the machine ---------------------------------------------------------------

    async def _handshake(self) -> VersionRefused | ChannelClosed | ResumeRefused | None:
        """Open (or resume) the channel; None on success, else why not."""
        try:
            await self._run(self.machine.start())
            opened = await self._until((ChannelOpened, VersionRefused, ChannelClosed,
                                        ResumeRefused), self.client.handshake_timeout)
        except ChannelFailed as exc:
            await self.stream.close()
            if self.machine.resumed:
                raise
            if self.machine.record is None:
                raise ChannelFailed(f"{exc}; nothing was stored or spent") from exc
            if not self.machine.opened:
                raise ChannelFailed(f"{exc}; {await self._unopened()}") from exc
            raise
        except BaseException:
            await self.stream.close()
            raise
        if isinstance(opened, VersionRefused | ChannelClosed | ResumeRefused):
            await self.stream.close()
            return opened
        if isinstance(opened, ChannelOpened) and opened.resumed:
            await self._until(PaymentAcknowledged, self.client.handshake_timeout)
        elif isinstance(opened, ChannelOpened):
            # The server broadcast it; telling our own node too lets our wallet spend the
            # contract's change at once (say, for the next channel). Best effort.
            try:
                await self.client.broadcaster.broadcast(
                    Transaction.parse(opened.record.contract_tx))
            except PaychanError as exc:
                log.warning("our node did not take contract %s: %s",
                            opened.record.contract_txid, exc)
        return None

    async def _unopened(self) -> str:
        """The server never said CHANNEL_OPEN for the contract we sent it. If the contract is
        neither in our node's mempool nor on chain (its coins are unspent), release them and
        keep the record as FAILED (never broadcast by us; if it shows up on chain after all,
        the autopilot treats it as funded and refunds it). Returns what happened, in words."""
        record = self.record
        try:
            spent = [await self.client.chain.is_spent(txid, index)
                     for txid, index in self.funded_inputs]
        except PaychanError as exc:
            return (f"contract {record.contract_txid} may have been broadcast (our node cannot "
                    f"tell: {exc}); the channel stays stored and is refunded after its expiry")
        if any(spent):
            return (f"contract {record.contract_txid} reached the network; the channel stays "
                    "stored and is refunded after its expiry if the server does not settle")
        await self._run(self.machine.abandon())
        await self.client.wallet.release(self.funded_inputs)
        return (f"nothing was spent: contract {record.contract_txid} is not on chain nor in our "
                "node's mempool; its coins are released to the wallet (the record is kept as "
                "failed, in case the contract appears on chain after all)")

    async def _until(self, wanted: type | tuple[type, ...], timeout: float | None = None,
                     woken: asyncio.Event | None = None) -> Effect:
        """Read and handle messages until the machine reports a `wanted` event (which
        background work may report too: it sets `woken`)."""
        while True:
            for event in self._events:
                if isinstance(event, wanted):
                    self._events.remove(event)
                    return event
            await self._read_one(lambda: any(isinstance(e, wanted) for e in self._events),
                                 timeout, woken)

    async def _read_one(self, done: Callable[[], bool], timeout: float | None = None,
                        woken: asyncio.Event | None = None) -> None:
        """Read and handle one message, unless `done()` became true while another task read
        (or, with `woken`, while this one waited); ChannelFailed if the connection is
        over."""
        async with self._reading:
            if woken is not None:
                woken.clear()
            if done():
                return
            for event in self._events:
                if isinstance(event, PeerError):
                    self._events.clear()
                    if event.remote:
                        self._server_error = event
                    raise ChannelFailed(self._explain(event))
            if self.machine.state is ClientState.CLOSED:
                raise ChannelFailed(self._ended())
            try:
                received = await (self.stream.receive(timeout) if woken is None
                                  or not self._working
                                  else self._receive_unless(woken, timeout))
                if received is False:
                    return  # woken: the caller looks at its events again
                if received is None:
                    await self._run(self.machine.connection_lost())
                    return
                await self._handle(received)
                while (self.machine.state is ClientState.WAITING_FOR_ACK
                       and (message := self.stream.receive_buffered()) is not None):
                    await self._handle(message)  # the acks of that read (a window's)
            except RemoteProtocolError as exc:
                self.machine.connection_lost()
                await self.stream.close()
                raise ChannelFailed(f"{self.machine.peer}: {exc}") from exc

    async def _handle(self, message: pb.TwoWayChannelMessage) -> None:
        """One message from the server, handled; a pay() call's ack answered at once."""
        effects = self.machine.receive(message, int(self.client.clock()))
        if len(effects) == 1 and isinstance(ack := effects[0], PaymentAcknowledged) and (
                self._acks):
            self.client.events.tell(ack)
            self._acks.popleft().set_result(ack.info)
            return
        await self._run(effects)

    async def _receive_unless(self, woken: asyncio.Event, timeout: float | None
                              ) -> pb.TwoWayChannelMessage | Literal[False] | None:
        """The next message (None: the peer left), or False once `woken` is set first (the
        streams' receive takes nothing from the connection until a whole message is
        there, so cancelling it loses none)."""
        receiving = asyncio.ensure_future(self.stream.receive(timeout))
        waking = asyncio.ensure_future(woken.wait())
        try:
            await asyncio.wait((receiving, waking), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waking.cancel()
            if not receiving.done():
                receiving.cancel()
            await asyncio.wait((receiving,))
        if receiving.cancelled():
            return False
        return receiving.result()

    async def _stored(self) -> ChannelRecord | None:
        return await asyncio.to_thread(self.client.store.get, Role.CLIENT, self.channel_id)

    async def _unpayable(self, cause: StoreError | None = None) -> ChannelFailed:
        """Why no payment can go through this channel, from what the store says of it."""
        txid, stored = self.channel_id, None
        with contextlib.suppress(StoreError):
            stored = await self._stored()
        new = "open a new channel to pay"
        if stored is None:
            return ChannelGone(f"channel {txid} is closed and forgotten: its money was settled "
                               f"on chain and it is in the history only; {new}")
        if stored.status is ChannelStatus.FAILED:
            return ChannelFailed(f"channel {txid} failed: its contract never made it on chain "
                                 f"(double-spent or abandoned), so nothing can be paid through "
                                 f"it; {new}")
        if stored.status is not ChannelStatus.OPEN:
            return ChannelGone(f"channel {txid} is {stored.status}: the server settled it (or "
                               f"it was refunded); {new}")
        if cause is not None:
            return ChannelFailed(f"cannot store the payment on channel {txid}: {cause}; "
                                 "nothing was sent")
        return ChannelFailed(f"{self._ended()}: resume it (open or resume) to pay "
                             "(nothing was stored or sent)")

    def _ended(self) -> str:
        """Why the connection is over, true to what was stored."""
        peer = self.machine.peer
        if self.machine.record is None:
            return f"the connection to {peer} ended before a channel was set up"
        if not self.machine.opened and not self.machine.resumed:
            return f"the connection to {peer} ended before the server said CHANNEL_OPEN"
        return (f"the connection to {peer} ended; channel {self.channel_id} stays stored "
                "and can be resumed, or refunded after its expiry")

    def _explain(self, event: PeerError) -> str:
        who = "the server said" if event.remote else "we refused the server"
        code = "" if event.code.name in event.explanation else f" ({event.code.name})"
        return f"{who}: {event.explanation}{code}"

    def _post(self, message: pb.TwoWayChannelMessage) -> None:
        """Send `message` with the others posted in this turn of the event loop: payments
        committed together go out in one write."""
        self._outgoing.append(message)
        if len(self._outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outgoing = encode(self._outgoing), []
        if not self.connected:
            return
        if self._writes_now and (self._sending is None or self._sending.done()):
            # Nothing before them still draining: written now, no task (the window bounds
            # what a server that does not read leaves in the buffer).
            cast(Tappable, self.stream).post_framed(b"".join(map(encode_frame, frames)))
            return
        self._sending = asyncio.ensure_future(self._send(self._sending, frames))

    async def _send(self, before: asyncio.Future[None] | None, frames: list[bytes]) -> None:
        if before is not None:
            await before  # in order
        with contextlib.suppress(ConnectionError):  # the next read tells the connection ended
            await self.stream.send_frames(frames)

    async def _run(self, effects: list[Effect]) -> None:
        signing: list[asyncio.Future[None]] = []
        try:
            await self._carry_out(list(effects), signing)
        finally:
            for turn in signing:  # R stored and sent: the payments signed after it go on
                turn.set_result(None)
                self._signing = None

    def _signed_reanchor(self, record: ChannelRecord) -> asyncio.Future[None] | None:
        """A just-signed R about to be stored (then sent): the turn payments signed after it
        wait for. Taken before anything is awaited after the machine signed it."""
        pending = record.pending
        if pending is None or pending.complete or pending.refused or self._signing:
            return None
        self._signing = asyncio.get_running_loop().create_future()
        return self._signing

    async def _payments_out(self) -> None:
        """Every payment signed so far stored and written to the server."""
        if self._sent is not None:
            await self._sent
        if self._outgoing:
            self._flush()
        if self._sending is not None:
            await self._sending

    async def _carry_out(self, queue: list[Effect], signing: list[asyncio.Future[None]]
                         ) -> None:
        async for effect in effects_in_order(queue, self.stream):
            match effect:
                case StoreChannel(record) if record.generation or record.pending:
                    if (turn := self._signed_reanchor(record)) is not None:
                        signing.append(turn)
                        await self._payments_out()  # R after the payments before it
                    # Re-anchoring: in the order of the payments handed to the writer (a
                    # promotion after those signed for the old generation, before later ones).
                    await self.client.payments.in_order(partial(self.client.store.put, record))
                    if record.pending is None:  # promoted (REANCHOR_LOCKED), or later
                        await self.client.watcher.moved(record)
                    else:
                        self.client.watcher.watch_reanchor(record)
                case StoreChannel(record):
                    await asyncio.to_thread(self.client.store.put, record)
                    self.client.watcher.watch(record)
                case StorePayment(record, amount, info):
                    await self.client.payments.record_payment(record, amount, info)
                case PaymentAcknowledged(info=info) if self._acks:  # a pay()'s, not a resume's
                    self.client.events.tell(effect)
                    self._acks.popleft().set_result(info)
                case ChannelClosed():
                    self.client.events.tell(effect)
                    self._events.append(effect)
                case FundContract(script, value):
                    queue[:0] = await self._fund(script, value)
                case FundReanchor():
                    self._in_background(self._fund_reanchor(effect))
                case ReanchorOffered():
                    self._in_background(self._answer_offer())
                case ReanchorLocked():
                    moved = await reanchor_locked(self.client.chain, self.machine, effect,
                                                  self.client.watcher.policy.forget_depth)
                    self._lagging = None if moved else effect  # our node lags: the watcher
                    queue[:0] = moved  # moves it once it finds R buried (promote_lagging)
                case ReanchorEnded():
                    await reanchor_ended(self.client.wallet, self.client.broadcaster,
                                         await self._reclaim_rate(), self.machine, effect)
                    if self._reanchoring:  # else the autopilot's, or unasked terms: nobody
                        self._events.append(effect)  # waits for it
                case ReanchorSigned():
                    log.info("channel %s re-anchored: %s", effect.record.channel_id,
                             effect.record.pending and effect.record.pending.txid)
                    if self._reanchoring:
                        self._events.append(effect)
                case Disconnect(reason):
                    log.info("%s: %s", self.machine.peer, reason)
                    await self.stream.close()
                    self._events.append(effect)
                case PeerError():
                    self._events.append(effect)
                    if self.client.on_peer_error is not None:
                        self.client.on_peer_error(effect)
                case _:
                    self._events.append(effect)

    async def _reclaim_rate(self) -> int:
        """The rate to spend a dead R's coin back at: the node's estimate, else our cap."""
        try:
            return await self.client.watcher.fee_rate()
        except NodeError:
            return self.machine.policy.max_fee_rate

    async def _fund(self, script: bytes, value: int) -> list[Effect]:
        key = self.machine.key
        await self.client.wallet.watch_key(key.to_wif(self.client.network))
        funded = await self.client.wallet.fund(script, value,
                                               await self.client.watcher.fee_rate())
        self.funded_inputs = funded.inputs
        try:
            return self.machine.contract_funded(funded.tx)
        except BaseException:
            await self.client.wallet.release(funded.inputs)
            raise

    async def _settlement_from_chain(self, timeout: float) -> Transaction:
        """Watch our node's mempool and chain for a spender of the contract; finish the close
        with it once it checks out as our settlement."""
        record = self.record
        deadline = time.monotonic() + timeout
        while True:
            spender = await self.client.chain.spender(record.contract_txid, 0)
            if spender is None:  # mined already? the watcher records spenders in blocks
                try:
                    mined = self.client.watcher.chain_state(record.channel_id).spender
                except StoreError:  # forgotten meanwhile: buried, in the history only
                    raise await self._unpayable() from None
                spender = Transaction.parse(mined) if mined else None
            if spender is not None:
                try:
                    effects = self.machine.settlement_seen(spender)
                except ProtocolError as exc:
                    raise ChannelFailed(f"the contract was spent by {spender.txid_hex}, which "
                                        f"is not a settlement we accept: {exc}") from exc
                await self._run(effects)
                return spender
            if time.monotonic() > deadline:
                raise ChannelFailed("the server did not settle in time; the channel stays "
                                    "stored and is refunded after its expiry")
            await asyncio.sleep(0.2)

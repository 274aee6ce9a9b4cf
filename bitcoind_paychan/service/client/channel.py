"""Channel: one channel on a live connection to its server: payments (overlapping,
up to the window), close, and the machine driven by what the connection reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import (
    ClientChannel,
    ClientState,
)
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelOpened,
    Disconnect,
    Effect,
    FundContract,
    PaymentAcknowledged,
    PeerError,
    ResumeRefused,
    Send,
    StoreChannel,
    StorePayment,
    VersionRefused,
)
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import (
    ChannelFailed,
    ChannelGone,
    LocalProtocolError,
    PaychanError,
    PaymentTimeout,
    ProtocolError,
    RemoteProtocolError,
    StoreError,
)
from bitcoind_paychan.node.ports import Broadcaster, ChainSource, Wallet
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
    watcher: ChainWatcher
    events: ClientEvents
    on_peer_error: Callable[[PeerError], object] | None


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
        self._server_error: PeerError | None = None  # the ERROR the server ended with
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
        return self.record.contract_txid

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
            while machine.state is ClientState.WAITING_FOR_ACK and not machine.can_pay:
                await self._read_one(lambda: machine.can_pay)  # an ack makes room
            if self._spent() or not self.connected:
                raise ChannelGone(self._used_up()) if self.connected else (
                    await self._unpayable())
            effects = machine.pay(amount, info)
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
                f"{self.contract_txid} within {timeout:g} s; the connection is closed and the "
                "payment stays stored: resume the channel to send it again") from None
        return acked.result()

    def _spent(self) -> bool:
        """No payment can go through any more: closing, or nothing left (change below dust
        goes to the server, so a channel paid down to dust is used up)."""
        record = self.machine.record
        return self.machine.state in USED_UP or (record is not None and record.change == 0)

    def _used_up(self) -> str:
        why = ("is used up: nothing is left to pay" if self.record.change == 0
               else "is closing: its close was asked for")
        return (f"channel {self.contract_txid} {why}; the server settles it; open a new "
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

    async def _until(self, wanted: type | tuple[type, ...], timeout: float | None = None
                     ) -> Effect:
        """Read and handle messages until the machine reports a `wanted` event."""
        while True:
            for event in self._events:
                if isinstance(event, wanted):
                    self._events.remove(event)
                    return event
            await self._read_one(lambda: any(isinstance(e, wanted) for e in self._events),
                                 timeout)

    async def _read_one(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        """Read and handle one message, unless `done()` became true while another task read;
        ChannelFailed if the connection is over."""
        async with self._reading:
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
                message = await self.stream.receive(timeout)
                if message is None:
                    await self._run(self.machine.connection_lost())
                    return
                await self._handle(message)
                while (self.machine.state is ClientState.WAITING_FOR_ACK
                       and (message := self.stream.receive_buffered()) is not None):
                    await self._handle(message)  # the acks of that read (a window's)
            except RemoteProtocolError as exc:
                self.machine.connection_lost()
                await self.stream.close()
                raise ChannelFailed(f"{self.machine.peer}: {exc}") from exc

    async def _handle(self, message: pb.TwoWayChannelMessage) -> None:
        """One message from the server, handled; a pay() call's ack answered at once."""
        effects = self.machine.receive(message)
        if len(effects) == 1 and isinstance(ack := effects[0], PaymentAcknowledged) and (
                self._acks):
            self.client.events.tell(ack)
            self._acks.popleft().set_result(ack.info)
            return
        await self._run(effects)

    async def _stored(self) -> ChannelRecord | None:
        return await asyncio.to_thread(self.client.store.get, Role.CLIENT, self.contract_txid)

    async def _unpayable(self, cause: StoreError | None = None) -> ChannelFailed:
        """Why no payment can go through this channel, from what the store says of it."""
        txid, stored = self.contract_txid, None
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
        return (f"the connection to {peer} ended; channel {self.contract_txid} stays stored "
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
        queue = list(effects)
        async for effect in effects_in_order(queue, self.stream):
            match effect:
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
                    mined = self.client.watcher.chain_state(record.contract_txid).spender
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

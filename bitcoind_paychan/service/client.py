"""The client side: ClientManager opens (or resumes) channels and pays through them over any
connection; PaymentClient is it dialing TCP (host:port) or WebSocket (ws://…) itself.

    client = PaymentClient(AsyncBitcoind(node), SQLiteStore("client.db"))
    channel = await client.open("127.0.0.1", 4242, value=1_000_000)
    await channel.pay(1_000, b"article 17")
    settlement = await channel.close()

An application that carries frames itself gives the manager a `dial(peer, timeout)` that
returns a `transport.CarriedStream` over its own Link, and feeds it what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from bitcoind_paychan.bitcoin.keys import PrivateKey
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
    PaymentAcknowledged,
    PeerError,
    ResumeRefused,
    Send,
    StoreChannel,
    StorePayment,
    VersionRefused,
)
from bitcoind_paychan.channel.kinds.registry import DEFAULT_VERSION, FALLBACK
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import (
    ChannelExists,
    ChannelFailed,
    ChannelGone,
    LocalProtocolError,
    PaychanError,
    PaymentTimeout,
    ProtocolError,
    RemoteProtocolError,
    StoreError,
    TLSError,
    TransactionRejected,
)
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.reasons import connection_failure
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.clientevents import ClientEvent, ClientEventHandler, ClientEvents
from bitcoind_paychan.service.outbox import effects_in_order
from bitcoind_paychan.service.turns import OpenTurns
from bitcoind_paychan.service.watcher import ChainWatcher, ChannelView
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.writer import PaymentWriter
from bitcoind_paychan.transport import dial as transports
from bitcoind_paychan.transport.base import CarriedStream, Stream, encode
from bitcoind_paychan.transport.tls import ClientTLS
from bitcoind_paychan.wire import pb

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 15.0
PAY_TIMEOUT = 60.0  # seconds `pay` waits for its PAYMENT_ACK by default
USED_UP = (ClientState.CLOSE_AFTER_ACK, ClientState.CLOSING)  # no more payments: closing
VERSION_KEY = "client.version:"  # store meta key prefix: the major a server speaks
Dialer = Callable[[str, float | None], Awaitable[Stream]]
"""Connect to a peer (as stored in its channels' records) within a timeout."""
__all__ = [  # what integrators import from here (the errors: their old home)
    "Channel", "ChannelExists", "ChannelFailed", "ChannelGone", "ClientEvent",
    "ClientEventHandler", "ClientManager", "Dialer", "PaymentClient",
]


class ClientManager:
    """Opens channels from this node's wallet over connections `dial` makes (by default TCP
    for host:port, WebSocket for ws://host:port/path). The open channel to a server is resumed
    by `open_channel` (same value) or `resume`; `open_channel(..., new=True)` opens another.

    `policy` is what channels ask for and accept (its `value` is the size `open_channel` uses
    when given none); `autopilot` is when to act and its `fees` what every refund and contract
    pays. `tls` says, per peer (as dialled: host:port or URL), how to verify its TLS
    (`ClientTLS`: a CA file or a pinned fingerprint); other TCP peers are plain, as bitcoinj's.
    `network` (for the channel keys) is the chain source's chain unless given. `wallet` is the
    node's ports: one `Node` (an `AsyncBitcoind`) or `NodePorts`; `watcher`, if given, is a
    client `ChainWatcher` of `store`, which replaces `autopilot` and the polling options.
    `on_event` hears each channel's events in order (ClientEvent: ChannelOpened,
    PaymentAcknowledged, ChannelClosed or ClosingSeen, ChannelFinished; docs/events.md); an
    exception it raises is logged and counted in `callback_errors`.
    """

    def __init__(
        self,
        wallet: Node | NodePorts,
        store: ChannelStore,
        *,
        network: Network | None = None,
        policy: ClientPolicy | None = None,
        clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        autopilot: WatchPolicy | None = None,
        on_event: ClientEventHandler | None = None,
        zmq_endpoint: str | None = None,
        poll_interval: float = 5.0,
        review_interval: float = 60.0,
        dial: Dialer | None = None,
        tls: Mapping[str, ClientTLS] | None = None,
        watcher: ChainWatcher | None = None,
    ) -> None:
        self.ports = ports = NodePorts.of(wallet)
        self.wallet, self.chain, self.broadcaster = ports.wallet, ports.chain, ports.broadcaster
        self.tls = dict(tls or {})  # peer → how to verify its TLS; others: plain TCP
        self.dial = dial or self._dial
        self.store = store
        self.payments = PaymentWriter(store)  # group commit of every channel's payments
        self.network = network or Network.from_chain(ports.chain.chain)
        self.policy = policy or ClientPolicy()
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.live: dict[str, Channel] = {}  # contract txid → its channel on a live connection
        self.unresumable: set[str] = set()  # channels their server no longer has open
        self.turns = OpenTurns()  # one open or resume at a time per peer
        self.callbacks = Callbacks()  # the application's `on_event`, isolated
        self.events = ClientEvents(self.callbacks)  # each channel's, in order
        self.events.on_event = on_event
        # Told each protocol error on a channel's connection (sent or received): the daemon
        # counts them in paychan_errors_total{role="client"}.
        self.on_peer_error: Callable[[PeerError], object] | None = None
        # How ChannelExists tells its reader to open another channel beside the open one (the
        # daemon tells its operator the CLI's way).
        self.open_new_hint = "open_channel(..., new=True)"
        self.watcher = watcher or ChainWatcher(Role.CLIENT, ports, store, autopilot,
                                               zmq_endpoint=zmq_endpoint,
                                               poll_interval=poll_interval,
                                               review_interval=review_interval)
        self.watcher.attach(Role.CLIENT, store, on_event=self.events.tell,
                            callbacks=self.callbacks)
        self._started = False

    @property
    def on_event(self) -> ClientEventHandler | None:
        """The application's callback for each channel's events (may be set later)."""
        return self.events.on_event

    @on_event.setter
    def on_event(self, handler: ClientEventHandler | None) -> None:
        self.events.on_event = handler

    @property
    def callback_errors(self) -> int:
        """How many times `on_event` raised (each logged, then ignored)."""
        return self.callbacks.errors

    async def start(self) -> None:
        """Start the autopilot: refunds, settlements seen on chain, forgetting. `open` starts
        it if needed."""
        if not self._started:
            self._started = True
            await self.watcher.start()

    async def stop(self) -> None:
        """Stop the autopilot and hang up every live channel (they stay stored)."""
        for channel in list(self.live.values()):
            if channel.connected:
                await channel.disconnect()
        if self._started:
            self._started = False
            await self.watcher.stop()

    async def __aenter__(self) -> ClientManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def channels(self, statuses: tuple[ChannelStatus, ...] | None = None) -> list[ChannelRecord]:
        return self.store.channels(Role.CLIENT, statuses)

    def views(self) -> list[ChannelView]:
        """Every stored channel's state, deadline, txids and confirmations."""
        return [self.watcher.view(record) for record in self.channels()]

    def resumable(self, peer: str) -> list[ChannelRecord]:
        """Stored open channels to `peer` (host:port) with money left and no live connection
        here, that its server has not refused to resume."""
        return [record for record in self.store.channels(Role.CLIENT, (ChannelStatus.OPEN,))
                if record.peer == peer and record.change > 0
                and not self._connected(record.contract_txid)
                and record.contract_txid not in self.unresumable]

    def spoken_version(self, peer: str) -> int | None:
        """The major the server at `peer` (host:port) last opened a channel with (stored, so
        a restart does not ask again with a major it hangs up on)."""
        known = self.store.get_meta(f"{VERSION_KEY}{peer}")
        return int(known) if known else None

    def _connected(self, contract_txid: str) -> Channel | None:
        live = self.live.get(contract_txid)
        return live if live is not None and live.connected else None

    async def refund(self, contract_txid: str) -> Transaction:
        """Broadcast the refund of a stored channel (and its contract, if the server never
        did). Valid only once the chain's median-time-past has passed the channel's expiry;
        before that the node refuses it as non-final and TransactionRejected says so."""
        record = self.store.get(Role.CLIENT, contract_txid)
        if record is None or record.status.final:
            raise LocalProtocolError(f"no unsettled client channel with contract {contract_txid}")
        refund = await self.refund_tx(record)
        await self.broadcaster.broadcast(Transaction.parse(record.contract_tx))
        try:
            await self.broadcaster.broadcast(refund)
        except TransactionRejected as exc:
            if "non-final" in exc.reason:
                raise TransactionRejected(
                    f"the refund of {contract_txid} is not valid yet: it waits for the chain's "
                    f"median-time-past to pass {record.contract.expiry}", exc.reason) from exc
            raise
        signed = refund.serialize()  # stored on the current record (the watcher may have moved it)
        await asyncio.to_thread(self.store.modify, Role.CLIENT, contract_txid,
                                lambda current: replace(current, refund_tx=signed))
        return refund

    async def refund_tx(self, record: ChannelRecord) -> Transaction:
        """The signed refund of `record`, paying the fee policy's rate (`autopilot.fees`)."""
        fee_rate = await self.watcher.fee_rate()
        return record.contract.refund(record.key, fee_rate, record.refund_tx)

    async def open_channel(
        self, peer: str, value: int | None = None, *, version: int | None = None,
        new: bool = False,
    ) -> Channel:
        """A channel of `value` sat (default: the policy's) to `peer`: the one already
        open to it (live here: that same `Channel` object, as it is; or stored and resumed),
        else a new one. Never a channel of another value: if the open one holds a different
        value, ChannelExists says so (pass `new=True` to open another beside it). A new
        channel offers `version`, by default what the server spoke last time, else 3 (falling
        back to 2 if refused).

        One open (or resume) runs at a time per peer: a call made while another is under way
        waits for it, then finds its channel (so two calls never fund two channels, nor take
        each other's connection). Opening makes the channel's first payment: the server's
        `min_payment` (its INITIATE says it; ours: 1,000 sat by default), which the client
        accepts up to `ClientPolicy.max_min_payment`."""
        await self.start()
        policy = self.policy if value is None else replace(self.policy, value=value)
        async with self.turns.turn(peer):
            if not new:
                found = await self._open_to(peer, policy.value)
                if found is not None:
                    return found
            known = await asyncio.to_thread(self.spoken_version, peer)
            return await self._open_new(peer, policy, version or known or DEFAULT_VERSION)

    async def _open_to(self, peer: str, value: int) -> Channel | None:
        """The open channel of `value` to `peer` (live, else resumed), if any; ChannelExists
        if the open one holds another value."""
        live = [c for c in self.live.values()
                if c.connected and c.machine.peer == peer and c.remaining]
        candidates = [c.record for c in live] + self.resumable(peer)
        for record in (r for r in candidates if r.value == value):
            channel = self._connected(record.contract_txid)
            if channel is not None:
                return channel
            try:
                return await self._resume(record.contract_txid)
            except ChannelGone as exc:
                log.warning("%s; opening a new channel", exc)
        others = [r for r in candidates if r.value != value]
        if others:
            other = others[0]
            raise ChannelExists(
                f"channel {other.contract_txid} to {peer} is open with {other.value} sat "
                f"({other.change} left), not {value}: pay through it, close it, or open "
                f"another beside it ({self.open_new_hint})")
        return None

    async def resume(self, contract_txid: str) -> Channel:
        """Reconnect a stored open channel to its server (a live one is returned as it is).
        ChannelGone if the server no longer has it open (it settled it, maybe just now
        because its expiry is near). Waits for an open or resume to the same server under
        way."""
        await self.start()
        record = self.store.get(Role.CLIENT, contract_txid)
        async with self.turns.turn(record.peer if record else contract_txid):
            return await self._resume(contract_txid)

    async def _resume(self, contract_txid: str) -> Channel:
        live = self._connected(contract_txid)
        if live is not None:
            return live
        record = self.store.get(Role.CLIENT, contract_txid)
        if record is None or record.status is not ChannelStatus.OPEN:
            status = record.status.value if record else "unknown"
            raise LocalProtocolError(f"client channel {contract_txid} is {status}, not open")
        policy = replace(self.policy, value=record.value)
        machine = ClientChannel.resuming(record, policy, int(self.clock()))
        channel, outcome = await self._connect(machine)
        if isinstance(outcome, ChannelClosed):
            raise ChannelGone(f"{record.peer} settled channel {contract_txid} on reconnect "
                              "(its expiry is near)")
        if isinstance(outcome, ResumeRefused):
            self.unresumable.add(contract_txid)
            raise ChannelGone(f"{record.peer} no longer has channel {contract_txid} open (the "
                              "chain will settle or refund it)")
        if isinstance(outcome, VersionRefused):
            raise ChannelFailed(f"{record.peer} refused version {record.version} of channel "
                                f"{contract_txid}: {outcome.explanation}; it stays stored and "
                                "is refunded after its expiry")
        return channel

    async def _open_new(self, peer: str, policy: ClientPolicy, version: int) -> Channel:
        """Open a new channel, falling back to an older major when the server refuses ours
        (with ERROR, or, as bitcoinj does, by hanging up before SERVER_VERSION)."""
        while True:
            machine = ClientChannel(policy, PrivateKey.generate(), int(self.clock()), version,
                                    peer)
            channel, outcome = await self._connect(machine)
            if outcome is None:
                await asyncio.to_thread(self.store.set_meta, f"{VERSION_KEY}{peer}",
                                        str(version))
                return channel
            if not isinstance(outcome, VersionRefused):
                raise ChannelFailed(f"{peer} closed the new channel at once: {outcome}")
            if version not in FALLBACK:
                raise ChannelFailed(f"{peer} refused protocol version {version}: "
                                    f"{outcome.explanation}; nothing was stored or spent")
            log.info("%s: %s; trying version %s", peer, outcome.explanation, FALLBACK[version])
            version = FALLBACK[version]

    async def _connect(self, machine: ClientChannel
                       ) -> tuple[Channel, VersionRefused | ChannelClosed | ResumeRefused | None]:
        """Connect and run the handshake; the channel is live when the outcome is None."""
        stored = (f"channel {machine.record.contract_txid} stays stored" if machine.record
                  else "nothing was stored or spent")
        try:
            stream = await self.dial(machine.peer, self.handshake_timeout)
        except TLSError as exc:
            raise ChannelFailed(f"{exc} ({stored})") from exc
        except (OSError, TimeoutError) as exc:
            raise ChannelFailed(f"cannot reach the server at {machine.peer}: "
                                f"{connection_failure(exc)}; is it "
                                f"running and listening there? ({stored})") from exc
        channel = Channel(self, machine, stream)
        outcome = await channel._handshake()
        if outcome is None:
            self.live[channel.contract_txid] = channel
            self.watcher.schedule_deadline(channel.record)
            self.events.tell(ChannelOpened(channel.record, channel.resumed))
        return channel, outcome

    async def _dial(self, peer: str, timeout: float | None) -> Stream:
        """The default dialer: TCP or WebSocket by the peer's form, TLS as `tls` says."""
        return await transports.dial(peer, timeout, self.tls.get(peer))


class PaymentClient(ClientManager):
    """A ClientManager that dials its servers itself: TCP (the protocol's own transport,
    bitcoinj's) or WebSocket (ws://host:port/path, for servers behind HTTP proxies)."""

    async def open(
        self, host: str, port: int | None = None, value: int | None = None, *,
        version: int | None = None, new: bool = False,
    ) -> Channel:
        """`open_channel` to host:port, or to a WebSocket URL given as `host` alone."""
        peer = host if port is None else f"{host}:{port}"
        return await self.open_channel(peer, value, version=version, new=new)


class Channel:
    """An open channel on a live connection. Payments may overlap: up to the machine's window
    (what the server accepts, at most the policy's `payment_window`) are in flight at once.
    `open_channel` returns the live channel to a server as this same object to every caller;
    nothing in it changes for that."""

    def __init__(self, client: ClientManager, machine: ClientChannel, stream: Stream) -> None:
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
                                        "stays open: close it again later (it is refunded "
                                        "after its expiry if the server never settles)")
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
            except RemoteProtocolError as exc:
                self.machine.connection_lost()
                await self.stream.close()
                raise ChannelFailed(f"{self.machine.peer}: {exc}") from exc
            if message is None:
                await self._run(self.machine.connection_lost())
                return
            await self._run(self.machine.receive(message))

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
        if self.connected:
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

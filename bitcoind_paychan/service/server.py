"""The server side: ServerManager runs channels over any connection; PaymentServer is it
listening on TCP.

The manager carries out the machines' effects in order — store, broadcast, send — with the
durable store written before any message that acknowledges what was stored. An application
that has its own connections (WebSocket, HTTP, a queue) hands it each frame received on one
(`ServerConnection.receive`); the manager answers through the connection's `Link`. A
connection that claims a channel (opened, or resumed with its proof) takes the channel's lease
first (`store/leases.py`): its payments are stored only while it holds it, wherever (on
whichever instance) the client resumes next. A settlement, whichever path asks for it (the
client's CLOSE, a resume near expiry, the autopilot, the application), claims the channel's
settling duty (`settle:<txid>`), then takes the lease, re-reads the channel, and stores it
CLOSING only while that lease is current and the channel still OPEN: one settlement per channel.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import resource
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    CheckContract,
    ClaimChannel,
    ClosingSeen,
    Disconnect,
    Effect,
    FundSettlement,
    LoadChannel,
    PaymentReceived,
    PeerError,
    PrepareSettlement,
    Purpose,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import (
    PAYMENT_WINDOW,
    ServerChannel,
    ServerPolicy,
    ServerState,
)
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import (
    ErrorCode,
    LeaseLost,
    LocalProtocolError,
    NodeError,
    NodeUnreachable,
    NotStarted,
    RemoteProtocolError,
    SettlementDecided,
    StoreError,
    TransactionRejected,
)
from bitcoind_paychan.logcontext import bind_channel
from bitcoind_paychan.node.ports import Node, NodePorts, minimum_confirmations
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.outbox import effects_in_order, send_all
from bitcoind_paychan.service.settlement import Settlements, Settling
from bitcoind_paychan.service.watcher import ChainWatcher, ChannelView
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.leases import Lease, Leases, leases_for
from bitcoind_paychan.store.writer import PaymentWriter, Writes
from bitcoind_paychan.transport import tcp
from bitcoind_paychan.transport.base import Link, Stream, decode
from bitcoind_paychan.transport.limits import Admission, PeerGate, PeerLimits
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.stream import MessageStream
from bitcoind_paychan.transport.tls import ServerTLS
from bitcoind_paychan.transport.tlsdoor import TLSDoor
from bitcoind_paychan.wire import pb

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 15.0  # bitcoinj's idle timeout while a channel is being set up
# How long a resumed connection may stay silent before proving the channel is its own: bitcoinj
# proves it with its next payment, whenever its application pays, so this is generous; it
# only bounds how long someone who knows a contract txid can hold a connection.
RESUME_TIMEOUT = 600.0
UPDATE_PAYMENT = pb.TwoWayChannelMessage.UPDATE_PAYMENT
PAYING = (UPDATE_PAYMENT, pb.TwoWayChannelMessage.PROVIDE_CONTRACT)  # messages that pay

ServerEvent = (ChannelOpened | PaymentReceived | ChannelClosed | PeerError | ClosingSeen
               | ChannelFinished)
"""What a server's `on_event` hears (their order: docs/events.md)."""
PaymentHandler = Callable[[PaymentReceived], bytes | Awaitable[bytes | None] | None]
"""`on_payment`: called once a payment is verified and stored, before its ack; what it returns
(bytes, or a coroutine's bytes) goes to the client in the ack."""
EventHandler = Callable[[ServerEvent], object]


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (as bitcoind does), so
    each connected channel can have its socket; log it. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open files limit raised from %s to %s", soft, hard)
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit %s (%s): at most about that "
                        "many channels can be connected at once", soft, exc)
    else:
        log.info("open files limit: %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return int(soft)


class ServerManager(Settlements):
    """Accepts payment channels over connections the application (or a transport) carries:
    `accept(link)` per connection, then `receive` each frame on it. Storage, resume, the
    autopilot (settlement before expiry), events and limits are the manager's.
    `await start()` first (the autopilot; a transport's `listen` does it): until then
    `accept` raises NotStarted, since nothing would settle a channel before its expiry.

    `on_payment` may return bytes to attach to the ack. `on_payment` and `on_event` are the
    application's: an exception in either is logged and counted (`callback_errors`), and the
    channel goes on (the payment is acknowledged all the same). `peer` given to `accept` is
    stored with the channel (`ChannelRecord.peer`) and shown in views, events and logs.

    Settlements pay the node's fee estimate within the autopilot's fee policy
    (`autopilot.fees`: target, floor and cap), from the server's share, or from a wallet
    input when the share is too small.
    Payments after the first wait until the contract has `min_confirmations` (default: 0 on
    regtest, 1 elsewhere, by the chain source's `chain`). `wallet` is the node's ports: one
    `Node` (an `AsyncBitcoind`) or `NodePorts`; `watcher`, if given, is a server
    `ChainWatcher` of `store`, whose policy is the autopilot's (the manager binds its hooks).
    `handshake_timeout`: how long a connection may be silent before its channel is open
    (transports that read for themselves apply it; `idle_timeout` says it);
    `resume_timeout`: how long a resumed one may be silent before its first payment proves it.
    `tls`: the certificate its listeners present (`tls_door()`), if any; `proxy_protocol`:
    the balancers whose PROXY header names the client on the TCP listener (off by default).
    """

    def __init__(
        self,
        wallet: Node | NodePorts,
        store: ChannelStore,
        policy: ServerPolicy | None = None,
        *,
        on_payment: PaymentHandler | None = None,
        on_event: EventHandler | None = None,
        clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        resume_timeout: float = RESUME_TIMEOUT,
        autopilot: WatchPolicy | None = None,
        zmq_endpoint: str | None = None,
        poll_interval: float = 5.0,
        review_interval: float = 60.0,
        min_confirmations: int | None = None,
        payout_script: bytes | None = None,
        on_payment_latency: Callable[[float], None] | None = None,
        limits: PeerLimits | None = None,
        leases: Leases | None = None,
        tls: ServerTLS | None = None,
        proxy_protocol: TrustedProxies | None = None,
        watcher: ChainWatcher | None = None,
    ) -> None:
        self.ports = ports = NodePorts.of(wallet)
        self.wallet, self.broadcaster = ports.wallet, ports.broadcaster
        self.tls = tls  # for the listeners that serve it (tls_door)
        self.proxy_protocol = proxy_protocol  # balancers whose PROXY header names the client
        self.store = store
        # Which connection may store each channel's payments (shared by instances, or not).
        self.leases: Leases = leases or leases_for(store)
        # Group commit of every channel's payments, each fenced by its connection's lease.
        self.payments = PaymentWriter(store, self.leases)
        autopilot = watcher.policy if watcher is not None else autopilot or WatchPolicy()
        # One settle margin: the machines stop taking resumes when the autopilot settles.
        policy = policy or ServerPolicy()
        if policy.settle_margin != autopilot.settle_margin:
            policy = replace(policy, settle_margin=autopilot.settle_margin)
        self.policy = policy
        self.on_payment = on_payment
        self.on_event = on_event
        self.callbacks = Callbacks()  # the application's, isolated (errors counted)
        self.clock = clock
        if min_confirmations is None:
            min_confirmations = minimum_confirmations(ports.chain.chain)
        self.min_confirmations = min_confirmations
        self.payout_script = payout_script  # None: a fresh wallet address per settlement
        self.on_payment_latency = on_payment_latency  # seconds from UPDATE_PAYMENT to its ack
        self.handshake_timeout = handshake_timeout
        self.resume_timeout = resume_timeout
        self.gate = PeerGate(limits)  # per-address connection rate and handshakes (transports)
        # Offered contracts checked with the node at once, all connections together.
        self.contract_checks = asyncio.Semaphore(self.gate.limits.max_contract_checks)
        self._owners: dict[str, Link] = {}  # contract txid → its current connection
        self._held: dict[int, Lease] = {}  # a connection's (its Link's id) → its lease
        self._connections: set[ServerConnection] = set()
        self._busy: set[ServerConnection] = set()  # connections handling a message right now
        self._stopping = False
        self._started = False
        self.watcher = watcher or ChainWatcher(
            Role.SERVER, ports, store, autopilot, zmq_endpoint=zmq_endpoint,
            poll_interval=poll_interval, review_interval=review_interval)
        self.watcher.attach(Role.SERVER, store, settle=self._settle_claimed,
                            on_event=self._finished, leases=self.leases)

    @property
    def callback_errors(self) -> int:
        """How many times `on_payment` or `on_event` raised (each logged, then ignored)."""
        return self.callbacks.errors

    @property
    def started(self) -> bool:
        """The autopilot runs: channels may be accepted."""
        return self._started

    async def start(self) -> None:
        """Start the autopilot (once; transports' `listen` does it)."""
        if not self._started:
            self._started = True
            await self.watcher.start()

    async def drain(self, grace: float = 10.0) -> None:
        """Take no more messages; wait up to `grace` seconds for each connection to finish the
        message it is handling (a payment being stored and acknowledged)."""
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + grace
        while self._busy and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def stop(self, grace: float = 10.0) -> None:
        """Drain, hang up every connection, stop the autopilot."""
        await self.drain(grace)
        for connection in list(self._connections):
            await connection.link.close()
            connection.connection_lost()
        if self._started:
            self._started = False
            await self.watcher.stop()

    def tls_door(self) -> TLSDoor | None:
        """The TLS handshake for a listener of this server (TCP, or the WebSocket one):
        within the handshake timeout, refusals counted as PeerErrors. TLSError if the
        certificate files cannot be used."""
        if self.tls is None:
            return None
        return TLSDoor(self.tls, self.handshake_timeout,
                       lambda event: self.callbacks.event(self.on_event, event))

    @property
    def connected(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    def accept(self, link: Link, peer: str = "") -> ServerConnection:
        """A new connection from a client, answered through `link`; `peer` names the client
        (stored with its channel, shown in views, events and logs). NotStarted before
        `await start()`."""
        if not self._started:
            raise NotStarted(
                "the ServerManager is not watching the chain: await manager.start() before "
                "accept() (a transport's listen() does it), else a channel its client never "
                "closes is not settled before its expiry and the client's refund takes back "
                "every payment; nothing was accepted")
        connection = ServerConnection(self, link, peer)
        self._connections.add(connection)
        return connection

    async def serve(self, stream: Stream, admission: Admission | None = None) -> None:
        """Run one connection a transport reads from until it ends (the transport closes it):
        idle timeouts, pipelined payments handled together, the handshake's admission
        released once the channel is open."""
        connection = self.accept(stream, stream.peername)
        try:
            while not connection.closed:
                try:
                    batch = [message] if (message := await stream.receive(
                        connection.idle_timeout)) else []
                    while (batch and connection.takes_more(len(batch))
                           and (more := stream.receive_buffered()) is not None):
                        batch.append(more)  # pipelined payments already here
                except RemoteProtocolError as exc:
                    await connection.refuse(exc)
                    return
                if not batch:
                    connection.connection_lost()
                    return
                await connection.receive_many(batch)
                if admission is not None and connection.handshake_over:
                    admission.release()
                if self._stopping:
                    return
        finally:
            connection.connection_lost()

    def channels(self, statuses: tuple[ChannelStatus, ...] | None = None) -> list[ChannelRecord]:
        return self.store.channels(Role.SERVER, statuses)

    def views(self) -> list[ChannelView]:
        """Every stored channel's state, deadline, txids and confirmations."""
        return [self.watcher.view(record) for record in self.channels()]

    async def _settle_claimed(self, contract_txid: str) -> None:
        """The autopilot's settlement (its `settle:` duty claimed): settle if still open."""
        try:
            await self._settle(contract_txid)
        except (LocalProtocolError, StoreError) as exc:
            log.info("not settling %s now: %s", contract_txid, exc)

    def _finished(self, event: ClosingSeen | ChannelFinished) -> None:
        self.callbacks.event(self.on_event, event)

    async def settle(self, contract_txid: str) -> Transaction:
        """Settle a stored open channel now, whether or not its client is connected (here or
        on another instance). It claims the channel's settling duty (LocalProtocolError if
        another instance or connection is settling it), takes the lease (fencing its
        connection's later payments), reads the record (every payment stored before) and
        stores the settlement only while that lease is current (StoreError otherwise: the
        client resumed meanwhile; nothing was broadcast)."""
        duty = f"settle:{contract_txid}"
        if not await asyncio.to_thread(self.leases.claim, duty):
            raise LocalProtocolError(f"channel {contract_txid} is being settled right now (by "
                                     "another connection or instance): its settlement is "
                                     "stored as it closes; look at the channel again")
        try:
            return await self._settle(contract_txid)
        finally:
            await asyncio.to_thread(self.leases.finish, duty)

    async def _settle(self, contract_txid: str) -> Transaction:
        """`settle`, its duty claimed."""
        record = await asyncio.to_thread(self.store.get, Role.SERVER, contract_txid)
        if record is None or record.status is not ChannelStatus.OPEN:
            raise LocalProtocolError(f"no open server channel with contract {contract_txid}")
        machine = ServerChannel.resumed_from(self.policy, record, int(self.clock()))
        settling = Settling(claimed=True)
        await self._carry_out(machine, None, [PrepareSettlement(contract_txid)], settling)
        if settling.settlement is None:
            why = settling.failure or "its node could not price or fund it now (see the log)"
            raise StoreError(f"channel {contract_txid} was not settled: {why}")
        return settling.settlement

    def _ended(self, connection: ServerConnection) -> None:
        self._connections.discard(connection)
        for txid, owner in list(self._owners.items()):
            if owner is connection.link:
                del self._owners[txid]
        lease = self._held.pop(id(connection.link), None)
        if lease is not None:
            self.leases.release(lease)

    async def _carry_out(self, machine: ServerChannel, stream: Link | None,
                         effects: list[Effect], settling: Settling | None = None) -> bool:
        """Do what the machine asked, in order. False once the connection must end.

        Every payment among `effects` is handed to the writer at once (so pipelined payments
        share a commit); each is still awaited in its place, before what follows it (its ack),
        and acks go out together after the last one's commit. Payments after a ClaimChannel
        wait for its lease (they are written under it, in their turn). A settlement's duty,
        claimed on the way, is finished at the end."""
        claims = any(isinstance(effect, ClaimChannel) for effect in effects)
        writes = self.payments.start([] if claims or stream is None else effects,
                                     self._held.get(id(stream)) if stream is not None else None)
        # A settlement decided on a later frame (a key-path close's last CLOSE) is fenced by
        # the lease its PrepareSettlement took for this connection.
        settling = settling or Settling(
            lease=self._held.get(id(stream)) if stream is not None else None)
        try:
            return await self._carry_out_in_order(machine, stream, list(effects), writes,
                                                  settling)
        finally:
            await writes.finish()
            if settling.duty is not None:
                await asyncio.to_thread(self.leases.finish, settling.duty)
            if stream is None and settling.lease is not None:
                await asyncio.to_thread(self.leases.release, settling.lease)

    async def _carry_out_in_order(self, machine: ServerChannel, stream: Link | None,
                                  queue: list[Effect], writes: Writes,
                                  settling: Settling) -> bool:
        async for effect in effects_in_order(queue, stream, (StorePayment, PaymentReceived)):
            match effect:
                case StoreChannel(record) if record.status is ChannelStatus.CLOSING:
                    refusal = await self._store_settlement(record, settling)
                    if refusal:
                        queue[:] = [Send(messages.error(ErrorCode.OTHER, refusal)),
                                    Disconnect(refusal)]
                        continue
                    self.watcher.watch(record)
                case StoreChannel(record):
                    await asyncio.to_thread(self.store.put, record)
                    self.watcher.watch(record)
                case StorePayment():
                    try:
                        await writes.stored(effect, self._held.get(id(stream))
                                            if stream is not None else None)
                    except LeaseLost as exc:  # resumed elsewhere: not stored, not acked
                        log.info("%s", exc)
                        queue[:] = [Send(messages.error(ErrorCode.OTHER, str(exc))),
                                    Disconnect("the channel's lease moved to another connection")]
                    except SettlementDecided as exc:  # not stored, not acked: its settlement
                        stored = await asyncio.to_thread(self.store.get, Role.SERVER,
                                                         effect.record.contract_txid)
                        queue[:] = self._settled_or_refused(machine, stored, str(exc))
                case Broadcast():
                    refusal = await self._broadcast(effect)
                    if refusal:
                        queue[:] = [Send(messages.error(ErrorCode.BAD_TRANSACTION, refusal)),
                                    Disconnect(refusal)]
                case CheckContract(tx):
                    queue[:0] = machine.contract_checked(*await self._check_contract(tx))
                case LoadChannel(txid):
                    loaded = await asyncio.to_thread(self.store.get, Role.SERVER, txid)
                    queue[:0] = machine.channel_loaded(loaded)
                case ClaimChannel(txid):
                    bind_channel(txid)  # and, from now on, its channel
                    answer = (await self._take_lease(machine, stream, txid, queue)
                              if stream is not None else None)
                    if answer is not None:
                        queue[:] = answer
                        continue
                    previous = self._owners.get(txid)
                    if stream is not None:
                        self._owners[txid] = stream
                    if previous is not None and previous is not stream:
                        log.info("channel %s moved to a new connection", txid)
                        await previous.close()
                case PrepareSettlement(txid):
                    bind_channel(txid)
                    queue[:0] = await self._prepare_settlement(machine, stream, txid, settling)
                case FundSettlement(draft, weight, fee_rate):
                    queue[:0] = await self._fund_settlement(machine, draft, weight, fee_rate)
                case PaymentReceived():
                    info = await self._notify_payment(effect)
                    queue[:0] = machine.payment_answered(effect, info or b"")
                case ChannelOpened() | ChannelClosed() | PeerError():
                    if isinstance(effect, ChannelOpened):
                        self.watcher.schedule_deadline(effect.record)
                        log.info("%s %s channel %s (%d sat)", effect.record.peer or "a client",
                                 "resumed" if effect.resumed else "opened",
                                 effect.record.contract_txid, effect.record.value)
                    self.callbacks.event(self.on_event, effect)
                case Disconnect(reason):
                    log.info("closing connection: %s", reason)
                    if stream is not None:
                        await stream.close()
                    return False
        return True

    async def _take_lease(self, machine: ServerChannel, stream: Link, txid: str,
                          remaining: list[Effect]) -> list[Effect] | None:
        """Take the channel's lease for this connection (fencing whichever held it, on any
        instance), then check the channel is as this connection loaded it. None if so; else
        what to answer instead: its settlement if it was settled meanwhile, a refusal if
        payments were stored since (by the connection it replaces)."""
        holder = f"{self.leases.instance}/{id(stream):x}"
        lease = await asyncio.to_thread(self.leases.acquire, Role.SERVER, txid, holder)
        self._held[id(stream)] = lease
        stored = await asyncio.to_thread(self.store.get, Role.SERVER, txid)
        loaded = next((e.record.change + e.amount for e in remaining
                       if isinstance(e, StorePayment)), None)
        if loaded is None:
            loaded = machine.record.change if machine.record is not None else None
        if stored is not None and stored.status is ChannelStatus.OPEN and (
                stored.change == loaded):
            return None
        del self._held[id(stream)]
        self.leases.release(lease)
        return self._settled_or_refused(machine, stored, (
            "the channel took payments on another connection while this one resumed it "
            "(nothing was stored here); resume again"))

    async def _check_contract(self, tx: Transaction) -> tuple[str | None, bool]:
        """Would the node take this contract? (refusal or None, whether to retry later)

        At most `limits.max_contract_checks` checks run at once, whoever offered them: a
        contract waits for a free slot up to half the handshake timeout (leaving the check
        itself time before the client gives up), then is refused as retryable."""
        bind_channel(tx.txid_hex)  # the connection's channel, before it is claimed
        wait = self.handshake_timeout / 2
        try:
            async with asyncio.timeout(wait):
                await self.contract_checks.acquire()
        except TimeoutError:
            busy = self.gate.limits.max_contract_checks
            log.warning("refused contract %s unchecked: %d other contracts were being checked "
                        "for %.1f s (server.max_contract_checks)", tx.txid_hex, busy, wait)
            return (f"it is busy checking other contracts (at most {busy} at once) and none "
                    f"finished within {wait:g} s"), True
        try:
            await self.broadcaster.check_acceptable(tx)
            return None, False
        except TransactionRejected as exc:
            log.info("refused contract %s: %s", tx.txid_hex, exc.reason)
            return str(exc), False
        except NodeError as exc:
            log.warning("cannot check contract %s, the node is unavailable: %s",
                        tx.txid_hex, exc)
            unreachable = isinstance(exc, NodeUnreachable)
            return ("its node does not answer" if unreachable else "its node failed"), True
        finally:
            self.contract_checks.release()

    async def _broadcast(self, effect: Broadcast) -> str:
        """Broadcast; on refusal return what to tell the client.

        A contract reaches this only after the node said it would take it, and its record is
        stored. If the broadcast then fails, the record stays OPEN and nothing is marked: the
        contract may have reached the node (a timeout) and the watcher broadcasts it again at
        each review, or finds it double-spent (then FAILED, and pruned once buried). A node
        that does not answer is no reason to refuse the client: the channel opens. A refused
        settlement stays stored (CLOSING, the channel's one settlement): the autopilot
        broadcasts it again (its contract first), replaces it with a higher fee (same payout),
        or finds what spent the contract; the channel never goes back to OPEN.
        """
        if effect.purpose is Purpose.CONTRACT:
            bind_channel(effect.tx.txid_hex)  # the connection's channel, before it is claimed
        try:
            await self.broadcaster.broadcast(effect.tx)
            log.info("broadcast %s %s", effect.purpose, effect.tx.txid_hex)
            return ""
        except NodeError as exc:  # TransactionRejected included
            if effect.purpose is Purpose.CONTRACT and not isinstance(exc, TransactionRejected):
                log.warning("contract %s checked but not broadcast yet (%s); the autopilot "
                            "will broadcast it again", effect.tx.txid_hex, exc)
                return ""
            log.error("broadcast of %s %s failed: %s", effect.purpose, effect.tx.txid_hex, exc)
            return f"the server's node refused the {effect.purpose}: {exc}"

    async def _notify_payment(self, event: PaymentReceived) -> bytes | None:
        self.callbacks.event(self.on_event, event)
        return await self.callbacks.answer(self.on_payment, event)


class ServerConnection:
    """One client's connection to a ServerManager. Hand it each frame (or decoded message)
    received, one call at a time, in order: `await receive(frame)` returns once that frame's
    effects are carried out (stored, the replies sent through the link). Call
    `connection_lost()` when the connection ends. A peer's protocol error is answered with
    ERROR and the link closed (`closed` is then true); nothing is raised."""

    def __init__(self, manager: ServerManager, link: Link, peer: str) -> None:
        self.manager = manager
        self.link = link
        self.peer = peer or "unknown peer"
        self.machine = ServerChannel(manager.policy, PrivateKey.generate(), int(manager.clock()),
                                     peer)
        self._confirmed = manager.min_confirmations == 0
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
        return record.contract_txid if record else None

    def takes_more(self, count: int) -> bool:
        """Would `count` + 1 pipelined payments be handled together now?"""
        return (self._confirmed and self.machine.state is ServerState.OPEN
                and count < PAYMENT_WINDOW)

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
                await manager.watcher.until_confirmed(record.contract_txid,
                                                      manager.min_confirmations)
                self._confirmed = True
            manager._busy.add(self)
            started = time.perf_counter()
            stored_before = record.payments if record is not None else 0
            if self.takes_more(0):  # pipelined: this and those already here, checked together
                batch = [message, *itertools.islice(pending, PAYMENT_WINDOW - 1)]
                effects, taken = machine.receive_pipelined(batch)
                received = batch[:taken]
                for _ in range(taken - 1):
                    pending.popleft()
            else:
                received, effects = [message], machine.receive(message)
            try:
                if not await manager._carry_out(machine, self.link, effects):
                    self.connection_lost()
                    return
            finally:
                manager._busy.discard(self)
            if manager.on_payment_latency and machine.record is not None and any(
                    done.type in PAYING for done in received):
                # One per payment stored (the opening payment with its contract), as counted
                # by the PaymentReceived events; a resume's loaded payments are not new.
                elapsed = time.perf_counter() - started
                for _ in range(machine.record.payments - stored_before):
                    manager.callbacks.event(manager.on_payment_latency, elapsed)


class PaymentServer(ServerManager):
    """A ServerManager listening on TCP (the protocol's own transport, bitcoinj's); over TLS
    with `tls` (certificate and key files; off by default, as bitcoinj peers speak plain TCP).
    With `proxy_protocol` (trusted balancers), their connections carry a PROXY header naming
    the client, whom the limits count. Takes ServerManager's arguments."""

    _listener: tcp.Listener | None = None
    _bound: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on; LocalProtocolError before `listen`."""
        if self._listener is None or self._bound is None:
            raise LocalProtocolError("the payment server is not listening: await listen()")
        return self._bound

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start the autopilot and accept connections; returns the bound (host, port)."""
        raise_fd_limit()
        door = self.tls_door()
        await self.start()
        self._listener = tcp.Listener(self.gate, self._serve, door,
                                      proxy_protocol=self.proxy_protocol,
                                      header_timeout=self.handshake_timeout)
        bound = self._bound = await self._listener.listen(host, port)
        log.info("payment server listening on %s:%s%s", *bound, " (TLS)" if door else "")
        return bound

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let each connection finish the message it is handling (a payment
        being stored and acknowledged), then hang up; stop the autopilot."""
        if self._listener:
            self._listener.close()
        await self.drain(grace)
        if self._listener:
            await self._listener.stop()
        await super().stop(grace)

    async def _serve(self, stream: MessageStream, admission: Admission) -> None:
        await self.serve(stream, admission)

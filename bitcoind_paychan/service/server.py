"""The server side: ServerManager runs channels over any connection; PaymentServer is it
listening on TCP.

The manager carries out the machines' effects in order — store, broadcast, send — with the
durable store written before any message that acknowledges what was stored. An application
that has its own connections (WebSocket, HTTP, a queue) hands it each frame received on one
(`ServerConnection.receive`); the manager answers through the connection's `Link`. A
connection that claims a channel (opened, or resumed with its proof) takes the channel's lease
first (`store/leases.py`): its payments are stored only while it holds it, wherever (on
whichever instance) the client resumes next.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import resource
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

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
    Disconnect,
    Effect,
    FundSettlement,
    LoadChannel,
    PaymentReceived,
    PeerError,
    PrepareSettlement,
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
    RemoteProtocolError,
    TransactionRejected,
)
from bitcoind_paychan.logcontext import bind_channel
from bitcoind_paychan.node.bitcoind import AsyncBitcoind
from bitcoind_paychan.service.limits import Admission, PeerGate, PeerLimits
from bitcoind_paychan.service.outbox import effects_in_order, send_all
from bitcoind_paychan.service.watcher import ChainWatcher, ChannelView
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.leases import Lease, Leases, leases_for
from bitcoind_paychan.store.writer import PaymentWriter, Writes
from bitcoind_paychan.transport import tcp
from bitcoind_paychan.transport.base import Link, Stream, decode
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.tls import ServerTLS
from bitcoind_paychan.transport.tlsdoor import TLSDoor
from bitcoind_paychan.wire import MessageStream, pb

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 15.0  # bitcoinj's idle timeout while a channel is being set up
ACK = pb.TwoWayChannelMessage.PAYMENT_ACK
UPDATE_PAYMENT = pb.TwoWayChannelMessage.UPDATE_PAYMENT

ServerEvent = ChannelOpened | PaymentReceived | ChannelClosed | PeerError | ChannelFinished
PaymentHandler = Callable[[PaymentReceived], bytes | Awaitable[bytes | None] | None]


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


class ServerManager:
    """Accepts payment channels over connections the application (or a transport) carries:
    `accept(link)` per connection, then `receive` each frame on it. Storage, resume, the
    autopilot (settlement before expiry), events and limits are the manager's.
    `on_payment` may return bytes to attach to the ack.

    Settlements pay the node's fee estimate within the autopilot's fee policy
    (`autopilot.fees`: target, floor and cap), from the server's share, or from a wallet
    input when the share is too small.
    Payments after the first wait until the contract has `min_confirmations` (default: 0 on
    regtest, 1 elsewhere). `handshake_timeout`: how long a connection may be silent before its
    channel is open (transports that read for themselves apply it; `idle_timeout` says it).
    """

    def __init__(
        self,
        wallet: AsyncBitcoind,
        store: ChannelStore,
        policy: ServerPolicy | None = None,
        *,
        on_payment: PaymentHandler | None = None,
        on_event: Callable[[ServerEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        autopilot: WatchPolicy | None = None,
        zmq_endpoint: str | None = None,
        poll_interval: float = 5.0,
        review_interval: float = 60.0,
        min_confirmations: int | None = None,
        payout_script: bytes | None = None,
        on_payment_latency: Callable[[float], None] | None = None,
        limits: PeerLimits | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.wallet = wallet
        self.store = store
        # Which connection may store each channel's payments (shared by instances, or not).
        self.leases: Leases = leases or leases_for(store)
        # Group commit of every channel's payments, each fenced by its connection's lease.
        self.payments = PaymentWriter(store, self.leases)
        self.policy = policy or ServerPolicy()
        self.on_payment = on_payment
        self.on_event = on_event
        self.clock = clock
        if min_confirmations is None:
            min_confirmations = 0 if wallet.node.config.chain == "regtest" else 1
        self.min_confirmations = min_confirmations
        self.payout_script = payout_script  # None: a fresh wallet address per settlement
        self.on_payment_latency = on_payment_latency  # seconds from UPDATE_PAYMENT to its ack
        self.handshake_timeout = handshake_timeout
        self.gate = PeerGate(limits)  # per-address connection rate and handshakes (transports)
        # Offered contracts checked with the node at once, all connections together.
        self.contract_checks = asyncio.Semaphore(self.gate.limits.max_contract_checks)
        self._owners: dict[str, Link] = {}  # contract txid → its current connection
        self._held: dict[int, Lease] = {}  # a connection's (its Link's id) → its lease
        self._connections: set[ServerConnection] = set()
        self._busy: set[ServerConnection] = set()  # connections handling a message right now
        self._stopping = False
        self._started = False
        self.watcher = ChainWatcher(
            Role.SERVER, wallet, store, autopilot or WatchPolicy(),
            settle=self._settle_if_open, on_event=self._finished, zmq_endpoint=zmq_endpoint,
            poll_interval=poll_interval, review_interval=review_interval, leases=self.leases)

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

    def accept(self, link: Link, peer: str = "") -> ServerConnection:
        """A new connection from a client, answered through `link`."""
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

    async def _settle_if_open(self, contract_txid: str) -> None:
        try:
            await self.settle(contract_txid)
        except LocalProtocolError as exc:
            log.info("not settling %s: %s", contract_txid, exc)

    def _finished(self, event: ChannelFinished) -> None:
        if self.on_event:
            self.on_event(event)

    async def settle(self, contract_txid: str) -> Transaction:
        """Settle a stored open channel now, whether or not its client is connected (here or
        on another instance: the lease taken first fences its connection's later payments, and
        the record read after it holds every payment stored before)."""
        lease = await asyncio.to_thread(self.leases.acquire, Role.SERVER, contract_txid,
                                        f"{self.leases.instance}/settle")
        try:
            record = await asyncio.to_thread(self.store.get, Role.SERVER, contract_txid)
            if record is None or record.status is not ChannelStatus.OPEN:
                raise LocalProtocolError(f"no open server channel with contract {contract_txid}")
            owner = self._owners.pop(contract_txid, None)
            if owner is not None:
                await owner.close()
            machine = ServerChannel.resumed_from(self.policy, record, int(self.clock()))
            effects = await self._settlement(machine, contract_txid)
            settlement = next(e.settlement for e in effects if isinstance(e, ChannelClosed))
            await self._carry_out(machine, None, effects)
            return settlement
        finally:
            self.leases.release(lease)

    def _ended(self, connection: ServerConnection) -> None:
        self._connections.discard(connection)
        for txid, owner in list(self._owners.items()):
            if owner is connection.link:
                del self._owners[txid]
        lease = self._held.pop(id(connection.link), None)
        if lease is not None:
            self.leases.release(lease)

    async def _carry_out(self, machine: ServerChannel, stream: Link | None,
                         effects: list[Effect]) -> bool:
        """Do what the machine asked, in order. False once the connection must end.

        Every payment among `effects` is handed to the writer at once (so pipelined payments
        share a commit); each is still awaited in its place, before what follows it (its ack),
        and acks go out together after the last one's commit. Payments after a ClaimChannel
        wait for its lease (they are written under it, in their turn)."""
        claims = any(isinstance(effect, ClaimChannel) for effect in effects)
        writes = self.payments.start([] if claims or stream is None else effects,
                                     self._held.get(id(stream)) if stream is not None else None)
        try:
            return await self._carry_out_in_order(machine, stream, list(effects), writes)
        finally:
            await writes.finish()

    async def _carry_out_in_order(self, machine: ServerChannel, stream: Link | None,
                                  queue: list[Effect], writes: Writes) -> bool:
        async for effect in effects_in_order(queue, stream, (StorePayment, PaymentReceived)):
            match effect:
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
                case Broadcast():
                    refusal = await self._broadcast(machine, effect)
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
                    refusal = (await self._take_lease(machine, stream, txid, queue)
                               if stream is not None else "")
                    if refusal:
                        log.info("refusing the resume of %s: %s", txid, refusal)
                        queue[:] = [Send(messages.error(ErrorCode.OTHER, refusal)),
                                    Disconnect(refusal)]
                        continue
                    previous = self._owners.get(txid)
                    if stream is not None:
                        self._owners[txid] = stream
                    if previous is not None and previous is not stream:
                        log.info("channel %s moved to a new connection", txid)
                        await previous.close()
                case PrepareSettlement(txid):
                    queue[:0] = await self._settlement(machine, txid)
                case FundSettlement(draft, weight, fee_rate):
                    queue[:0] = await self._fund_settlement(machine, draft, weight, fee_rate)
                case PaymentReceived():
                    ack_info = await self._notify_payment(effect)
                    ack = next((e.message for e in queue if isinstance(e, Send)), None)
                    if ack_info and ack is not None and ack.type == ACK:
                        ack.payment_ack.info = ack_info
                case ChannelOpened() | ChannelClosed() | PeerError():
                    if isinstance(effect, ChannelOpened):
                        self.watcher.schedule_deadline(effect.record)
                    if self.on_event:
                        self.on_event(effect)
                case Disconnect(reason):
                    log.info("closing connection: %s", reason)
                    if stream is not None:
                        await stream.close()
                    return False
        return True

    async def _take_lease(self, machine: ServerChannel, stream: Link, txid: str,
                          remaining: list[Effect]) -> str:
        """Take the channel's lease for this connection (fencing whichever held it, on any
        instance), then check the channel is as this connection loaded it; if payments were
        stored since (by the connection it replaces), refuse: what to tell the client."""
        holder = f"{self.leases.instance}/{id(stream):x}"
        lease = await asyncio.to_thread(self.leases.acquire, Role.SERVER, txid, holder)
        self._held[id(stream)] = lease
        stored = await asyncio.to_thread(self.store.get, Role.SERVER, txid)
        loaded = next((e.record.change + e.amount for e in remaining
                       if isinstance(e, StorePayment)), None)
        if loaded is None:
            loaded = machine.record.change if machine.record is not None else None
        if stored is not None and stored.change == loaded:
            return ""
        del self._held[id(stream)]
        self.leases.release(lease)
        return ("the channel took payments on another connection while this one resumed it "
                "(nothing was stored here); resume again")

    async def _settlement(self, machine: ServerChannel, txid: str) -> list[Effect]:
        try:
            fee_rate = await self.watcher.fee_rate()
            payout = self.payout_script or await self.wallet.payout_script()
            return machine.settle(fee_rate, payout)
        except (NodeError, LocalProtocolError) as exc:
            log.error("cannot settle channel %s now: %s", txid, exc)
            return [Send(messages.error(ErrorCode.OTHER, f"cannot settle now: {exc}")),
                    Disconnect("settlement failed")]

    async def _fund_settlement(self, machine: ServerChannel, draft: Transaction, weight: int,
                               fee_rate: int) -> list[Effect]:
        contract = draft.inputs[0].prevout
        try:
            funded = await self.wallet.fund_external(
                draft, {(contract.txid_hex, contract.index): weight}, fee_rate)
            log.info("the settlement's fee comes from a wallet input (share too small)")
            return machine.settle_funded(funded)
        except (NodeError, LocalProtocolError) as exc:
            log.error("cannot fund the settlement of %s: %s", contract.txid_hex, exc)
            return [Send(messages.error(ErrorCode.OTHER, f"cannot settle now: {exc}")),
                    Disconnect("settlement failed")]

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
            await self.wallet.check_acceptable(tx)
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

    async def _broadcast(self, machine: ServerChannel, effect: Broadcast) -> str:
        """Broadcast; on refusal return what to tell the client.

        A contract reaches this only after the node said it would take it, and its record is
        stored. If the broadcast then fails, the record stays OPEN and nothing is marked: the
        contract may have reached the node (a timeout) and the watcher broadcasts it again at
        each review, or finds it double-spent (then FAILED, and pruned once buried). A node
        that does not answer is no reason to refuse the client: the channel opens.
        """
        if effect.purpose == "contract":
            bind_channel(effect.tx.txid_hex)  # the connection's channel, before it is claimed
        try:
            await self.wallet.broadcast(effect.tx)
            log.info("broadcast %s %s", effect.purpose, effect.tx.txid_hex)
            return ""
        except NodeError as exc:  # TransactionRejected included
            if effect.purpose == "contract" and not isinstance(exc, TransactionRejected):
                log.warning("contract %s checked but not broadcast yet (%s); the autopilot "
                            "will broadcast it again", effect.tx.txid_hex, exc)
                return ""
            log.error("broadcast of %s %s failed: %s", effect.purpose, effect.tx.txid_hex, exc)
            refusal = f"the server's node refused the {effect.purpose}: {exc}"
        record = machine.record
        if record is not None and effect.purpose != "contract":
            # The settlement never left: the channel is still open.
            await asyncio.to_thread(self.store.put, replace(record, status=ChannelStatus.OPEN))
        return refusal

    async def _notify_payment(self, event: PaymentReceived) -> bytes | None:
        if self.on_event:
            self.on_event(event)
        if self.on_payment is None:
            return None
        result = self.on_payment(event)
        if inspect.isawaitable(result):
            result = await result
        return result


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
        self.machine = ServerChannel(manager.policy, PrivateKey.generate(), int(manager.clock()))
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
        open (or resumed: a bitcoinj client proves it with its next payment, whenever its
        application pays), then no limit, as bitcoinj."""
        if self.machine.state in (ServerState.OPEN, ServerState.RESUMED):
            return None
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
            if manager.on_payment_latency:
                for done in received:
                    if done.type == UPDATE_PAYMENT:
                        manager.on_payment_latency(time.perf_counter() - started)


class PaymentServer(ServerManager):
    """A ServerManager listening on TCP (the protocol's own transport, bitcoinj's); over TLS
    with `tls` (certificate and key files; off by default, as bitcoinj peers speak plain TCP).
    With `proxy_protocol` (trusted balancers), their connections carry a PROXY header naming
    the client, whom the limits count. Takes ServerManager's arguments."""

    _listener: tcp.Listener | None = None

    def __init__(self, *args: Any, tls: ServerTLS | None = None,
                 proxy_protocol: TrustedProxies | None = None, **options: Any) -> None:
        super().__init__(*args, **options)
        self.tls = tls
        self.proxy_protocol = proxy_protocol

    def tls_door(self) -> TLSDoor | None:
        """The TLS handshake for a listener of this server (TCP, or the WebSocket one):
        within the handshake timeout, refusals counted as PeerErrors. TLSError if the
        certificate files cannot be used."""
        if self.tls is None:
            return None
        return TLSDoor(self.tls, self.handshake_timeout, self.on_event)

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start the autopilot and accept connections; returns the bound (host, port)."""
        raise_fd_limit()
        door = self.tls_door()
        await self.start()
        self._listener = tcp.Listener(self.gate, self._serve, door,
                                      proxy_protocol=self.proxy_protocol,
                                      header_timeout=self.handshake_timeout)
        bound = await self._listener.listen(host, port)
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

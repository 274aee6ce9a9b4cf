"""The payment server: listens on TCP and runs one ServerChannel per connection.

It carries out the machines' effects in order — store, broadcast, send — with the durable
store written before any message that acknowledges what was stored.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
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
    LocalProtocolError,
    NodeError,
    NodeUnreachable,
    RemoteProtocolError,
    TLSError,
    TransactionRejected,
)
from bitcoind_paychan.logcontext import bind_channel
from bitcoind_paychan.node.bitcoind import AsyncBitcoind
from bitcoind_paychan.service.limits import Admission, PeerGate, PeerLimits
from bitcoind_paychan.service.outbox import effects_in_order, send_all
from bitcoind_paychan.service.watcher import ChainWatcher, ChannelView
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.writer import PaymentWriter, Writes
from bitcoind_paychan.transport.tls import ServerTLS, accept_tls
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


class PaymentServer:
    """Accepts payment channels. `on_payment` may return bytes to attach to the ack.

    Settlements pay the node's fee estimate within the autopilot's fee policy
    (`autopilot.fees`: target, floor and cap), from the server's share, or from a wallet
    input when the share is too small.
    Payments after the first wait until the contract has `min_confirmations` (default: 0 on
    regtest, 1 elsewhere). The autopilot (`autopilot` policy) settles before expiry.
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
        tls: ServerTLS | None = None,
    ) -> None:
        self.wallet = wallet
        self.store = store
        self.payments = PaymentWriter(store)  # group commit of every channel's payments
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
        self.gate = PeerGate(limits)  # per-address connection rate and handshakes
        self.tls = tls  # None: plain TCP, as bitcoinj speaks
        self._tls_context: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._owners: dict[str, MessageStream] = {}  # contract txid → its current connection
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[MessageStream] = set()  # connections handling a message right now
        self._stopping = False
        self.watcher = ChainWatcher(
            Role.SERVER, wallet, store, autopilot or WatchPolicy(),
            settle=self._settle_if_open, on_event=self._finished, zmq_endpoint=zmq_endpoint,
            poll_interval=poll_interval, review_interval=review_interval)

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start the autopilot and accept connections; returns the bound (host, port)."""
        raise_fd_limit()
        self._tls_context = self.tls.context() if self.tls else None
        await self.watcher.start()
        self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()
        log.info("payment server listening on %s:%s%s", bound[0], bound[1],
                 " (TLS)" if self.tls else "")
        return str(bound[0]), int(bound[1])

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let each connection finish the message it is handling (a payment
        being stored and acknowledged), then hang up; stop the autopilot."""
        self._stopping = True
        if self._server:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self._busy and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self.watcher.stop()
        if self._server:
            await self._server.wait_closed()

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
        """Settle a stored open channel now, whether or not its client is connected."""
        record = self.store.get(Role.SERVER, contract_txid)
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

    # -- connections -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        admission = self.gate.admit(str(peer[0]) if peer else "")
        if admission is None:  # over a per-peer limit: hang up before reading anything
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        stream = MessageStream(reader, writer)
        bind_channel(peer=stream.peername)  # this connection's task logs its peer
        try:
            if self._tls_context is not None:  # the first await: nothing was read yet
                await accept_tls(writer, self._tls_context, self.handshake_timeout)
            await self._serve(stream, admission)
        except asyncio.CancelledError:
            pass
        except TLSError as exc:
            log.info("%s: TLS refused: %s", stream.peername, exc)
            if self.on_event:
                self.on_event(PeerError(ErrorCode.OTHER, f"TLS: {exc}", remote=False))
        except Exception:
            log.exception("connection from %s failed", stream.peername)
        finally:
            admission.release()
            self._connections.discard(task)
            for txid, owner in list(self._owners.items()):
                if owner is stream:
                    del self._owners[txid]
            await stream.close()

    async def _serve(self, stream: MessageStream, admission: Admission) -> None:
        machine = ServerChannel(self.policy, PrivateKey.generate(), int(self.clock()))
        confirmed = self.min_confirmations == 0
        while machine.state is not ServerState.CLOSED:
            # Once open (or resumed: a bitcoinj client proves it with its next payment,
            # whenever its application pays), no idle timeout, as bitcoinj.
            timeout = (None if machine.state in (ServerState.OPEN, ServerState.RESUMED)
                       else self.handshake_timeout)
            try:
                message = await stream.receive(timeout)
            except RemoteProtocolError as exc:
                log.info("%s: %s", stream.peername, exc)
                await send_all(stream, [messages.error(exc.code, str(exc))])
                return
            if message is None:
                log.info("%s left (%s)", stream.peername, machine.state.value)
                machine.connection_lost()
                return
            if message.type == UPDATE_PAYMENT and machine.record is not None and not confirmed:
                # Payments beyond the first wait until the contract is buried deep enough.
                await self.watcher.until_confirmed(machine.record.contract_txid,
                                                   self.min_confirmations)
                confirmed = True
            self._busy.add(stream)
            started = time.perf_counter()
            received = [message]
            effects = machine.receive(message)
            while (confirmed and machine.state is ServerState.OPEN
                   and len(received) < PAYMENT_WINDOW
                   and (more := stream.receive_buffered()) is not None):
                # Pipelined payments already here: verified now, stored in one commit.
                received.append(more)
                effects += machine.receive(more)
            try:
                if not await self._carry_out(machine, stream, effects):
                    return
            finally:
                self._busy.discard(stream)
            if machine.state in (ServerState.OPEN, ServerState.SETTLING):
                admission.release()  # the handshake is over
            if self.on_payment_latency:
                for done in received:
                    if done.type == UPDATE_PAYMENT:
                        self.on_payment_latency(time.perf_counter() - started)
            if self._stopping:
                return

    async def _carry_out(self, machine: ServerChannel, stream: MessageStream | None,
                         effects: list[Effect]) -> bool:
        """Do what the machine asked, in order. False once the connection must end.

        Every payment among `effects` is handed to the writer at once (so pipelined payments
        share a commit); each is still awaited in its place, before what follows it (its ack),
        and acks go out together after the last one's commit."""
        writes = self.payments.start(effects)
        try:
            return await self._carry_out_in_order(machine, stream, list(effects), writes)
        finally:
            await writes.finish()

    async def _carry_out_in_order(self, machine: ServerChannel, stream: MessageStream | None,
                                  queue: list[Effect], writes: Writes) -> bool:
        async for effect in effects_in_order(queue, stream, (StorePayment, PaymentReceived)):
            match effect:
                case StoreChannel(record):
                    await asyncio.to_thread(self.store.put, record)
                    self.watcher.watch(record)
                case StorePayment():
                    await writes.stored(effect)
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
        """Would the node take this contract? (refusal or None, whether to retry later)"""
        bind_channel(tx.txid_hex)  # the connection's channel, before it is claimed
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


"""The payment client: opens (or resumes) a channel to a server and pays through it.

    client = PaymentClient(AsyncBitcoind(node), SQLiteStore("client.db"))
    channel = await client.open("127.0.0.1", 4242, value=1_000_000)
    await channel.pay(1_000, b"article 17")
    settlement = await channel.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import (
    ClientChannel,
    ClientPolicy,
    ClientState,
    check_settlement,
)
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    Disconnect,
    Effect,
    FundContract,
    PaymentAcknowledged,
    PeerError,
    ResumeRefused,
    StoreChannel,
    StorePayment,
    VersionRefused,
)
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import (
    LocalProtocolError,
    PaychanError,
    ProtocolError,
    RemoteProtocolError,
    TransactionRejected,
)
from bitcoind_paychan.node.bitcoind import AsyncBitcoind
from bitcoind_paychan.service.outbox import effects_in_order
from bitcoind_paychan.service.watcher import ChainWatcher, ChannelView
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.wire import MessageStream, open_connection

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 15.0
FALLBACK = {3: 2}  # a server that refuses our major gets the next one


class ChannelFailed(PaychanError):
    """The channel could not be opened or used; the message says why and what happens next."""


class PaymentClient:
    """Opens channels from this node's wallet. Channels to a server are resumed on `open`.

    `policy` is what channels ask for and accept (its `value` is the size `open` uses when
    given none); `autopilot` is when to act and its `fees` what every refund and contract pays.
    """

    def __init__(
        self,
        wallet: AsyncBitcoind,
        store: ChannelStore,
        *,
        network: Network = Network.REGTEST,
        policy: ClientPolicy | None = None,
        clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        autopilot: WatchPolicy | None = None,
        on_event: Callable[[ChannelFinished], None] | None = None,
        zmq_endpoint: str | None = None,
        poll_interval: float = 5.0,
        review_interval: float = 60.0,
    ) -> None:
        self.wallet = wallet
        self.store = store
        self.network = network
        self.policy = policy or ClientPolicy()
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.live: dict[str, Channel] = {}  # contract txid → its channel on a live connection
        self.unresumable: set[str] = set()  # channels their server no longer has open
        self.watcher = ChainWatcher(Role.CLIENT, wallet, store, autopilot, on_event=on_event,
                                    zmq_endpoint=zmq_endpoint, poll_interval=poll_interval,
                                    review_interval=review_interval)
        self._started = False

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

    async def __aenter__(self) -> PaymentClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def channels(self, statuses: tuple[ChannelStatus, ...] | None = None) -> list[ChannelRecord]:
        return self.store.channels(Role.CLIENT, statuses)

    def views(self) -> list[ChannelView]:
        """Every stored channel's state, deadline, txids and confirmations."""
        return [self.watcher.view(record) for record in self.channels()]

    def resumable(self, peer: str) -> ChannelRecord | None:
        """A stored open channel to `peer` (host:port) with money left and no live connection
        here, if any."""
        for record in self.store.channels(Role.CLIENT, (ChannelStatus.OPEN,)):
            live = self.live.get(record.contract_txid)
            if (record.peer == peer and record.change > 0 and not (live and live.connected)
                    and record.contract_txid not in self.unresumable):
                return record
        return None

    async def refund(self, contract_txid: str) -> Transaction:
        """Broadcast the refund of a stored channel (and its contract, if the server never
        did). Valid only once the chain's median-time-past has passed the channel's expiry;
        before that the node refuses it as non-final and TransactionRejected says so."""
        record = self.store.get(Role.CLIENT, contract_txid)
        if record is None or record.status.final:
            raise LocalProtocolError(f"no unsettled client channel with contract {contract_txid}")
        refund = await self.refund_tx(record)
        await self.wallet.broadcast(Transaction.parse(record.contract_tx))
        try:
            await self.wallet.broadcast(refund)
        except TransactionRejected as exc:
            if "non-final" in exc.reason:
                raise TransactionRejected(
                    f"the refund of {contract_txid} is not valid yet: it waits for the chain's "
                    f"median-time-past to pass {record.contract.expiry}", exc.reason) from exc
            raise
        await asyncio.to_thread(self.store.put, replace(record, refund_tx=refund.serialize()))
        return refund

    async def refund_tx(self, record: ChannelRecord) -> Transaction:
        """The signed refund of `record`, paying the fee policy's rate (`autopilot.fees`)."""
        fee_rate = await self.watcher.fee_rate()
        return record.contract.refund(record.key, fee_rate, record.refund_tx)

    async def open(
        self, host: str, port: int, value: int | None = None, *, version: int = 3,
        resume: bool = True,
    ) -> Channel:
        """Open a channel of `value` sat (default: the policy's) to host:port, or (unless
        `resume` is False) resume a stored one to it that no live connection here is using."""
        await self.start()
        peer = f"{host}:{port}"
        policy = self.policy if value is None else replace(self.policy, value=value)
        while True:
            stored = self.resumable(peer) if resume else None
            machine = ClientChannel(policy, PrivateKey.generate(), int(self.clock()), version,
                                    resume=stored, peer=peer)
            try:
                stream = await open_connection(host, port, self.handshake_timeout)
            except (OSError, TimeoutError) as exc:
                raise ChannelFailed(f"cannot reach the server at {peer}: {exc}; is it running "
                                    "and listening there?") from exc
            channel = Channel(self, machine, stream)
            outcome = await channel._handshake()
            if outcome is None:
                self.live[channel.contract_txid] = channel
                self.watcher.schedule_deadline(channel.record)
                return channel
            if isinstance(outcome, ChannelClosed):
                log.info("%s settled channel %s on reconnect (it expires soon); opening a new "
                         "one", peer, outcome.record.contract_txid)
                continue
            if isinstance(outcome, ResumeRefused):
                log.warning("%s no longer has channel %s open; opening a new one (the chain "
                            "will settle or refund the old)", peer, outcome.contract_txid)
                self.unresumable.add(outcome.contract_txid)
                continue
            refused = outcome
            if refused.version not in FALLBACK:
                raise ChannelFailed(f"{peer} refused protocol version {refused.version}: "
                                    f"{refused.explanation}")
            log.info("%s refused version %s; trying %s", peer, version, FALLBACK[version])
            version = FALLBACK[version]


class Channel:
    """An open channel on a live connection. One payment at a time."""

    def __init__(self, client: PaymentClient, machine: ClientChannel,
                 stream: MessageStream) -> None:
        self.client = client
        self.machine = machine
        self.stream = stream
        self.funded_inputs: tuple[tuple[str, int], ...] = ()
        self.stored = machine.record is not None
        self._events: list[Effect] = []
        self._lock = asyncio.Lock()

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

    async def pay(self, amount: int, info: bytes = b"") -> bytes:
        """Pay `amount` sat more; returns once the server acknowledged it (with its info)."""
        async with self._lock:
            await self._run(self.machine.pay(amount, info))
            ack = await self._until(PaymentAcknowledged)
            assert isinstance(ack, PaymentAcknowledged)
            return ack.info

    async def close(self, timeout: float = 60.0) -> Transaction:
        """Ask the server to settle; return the settlement once received and checked (or, if
        the server hung up without sending it, once found in the node's mempool)."""
        async with self._lock:
            if self.machine.state in (ClientState.OPEN, ClientState.WAITING_FOR_ACK):
                await self._run(self.machine.close())
            try:
                closed = await self._until(ChannelClosed, timeout)
                assert isinstance(closed, ChannelClosed)
                return closed.settlement
            except ChannelFailed:
                return await self._settlement_from_chain(timeout)

    async def disconnect(self) -> None:
        """Hang up without closing: the channel stays stored and `open` resumes it."""
        self.machine.connection_lost()
        await self.stream.close()

    # -- driving the machine ---------------------------------------------------------------

    async def _handshake(self) -> VersionRefused | ChannelClosed | ResumeRefused | None:
        """Open (or resume) the channel; None on success, else why not."""
        try:
            await self._run(self.machine.start())
            opened = await self._until((ChannelOpened, VersionRefused, ChannelClosed,
                                        ResumeRefused), self.client.handshake_timeout)
        except BaseException:
            await self._abandon()
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
                await self.client.wallet.broadcast(Transaction.parse(opened.record.contract_tx))
            except PaychanError as exc:
                log.warning("our node did not take contract %s: %s",
                            opened.record.contract_txid, exc)
        return None

    async def _abandon(self) -> None:
        """Before the contract left us, its coins can go back to the wallet."""
        await self.stream.close()
        if self.funded_inputs and not self.stored:
            await self.client.wallet.release(self.funded_inputs)

    async def _until(self, wanted: type | tuple[type, ...], timeout: float | None = None
                     ) -> Effect:
        """Read and handle messages until the machine reports a `wanted` event."""
        while True:
            for event in self._events:
                if isinstance(event, wanted):
                    self._events.remove(event)
                    return event
            for event in self._events:
                if isinstance(event, PeerError):
                    self._events.clear()
                    raise ChannelFailed(self._explain(event))
            if self.machine.state is ClientState.CLOSED:
                raise ChannelFailed("the connection ended; the channel stays stored and can be "
                                    "resumed, or refunded after its expiry")
            try:
                message = await self.stream.receive(timeout)
            except RemoteProtocolError as exc:
                self.machine.connection_lost()
                await self.stream.close()
                raise ChannelFailed(f"{self.machine.peer}: {exc}") from exc
            if message is None:
                self.machine.connection_lost()
                continue
            await self._run(self.machine.receive(message))

    def _explain(self, event: PeerError) -> str:
        who = "the server said" if event.remote else "we refused the server"
        return f"{who}: {event.code.name}: {event.explanation}"

    async def _run(self, effects: list[Effect]) -> None:
        queue = list(effects)
        async for effect in effects_in_order(queue, self.stream):
            match effect:
                case StoreChannel(record):
                    await asyncio.to_thread(self.client.store.put, record)
                    self.stored = True
                case StorePayment(record, amount, info):
                    await asyncio.to_thread(self.client.store.record_payment, record, amount, info)
                case FundContract(script, value):
                    queue[:0] = await self._fund(script, value)
                case Disconnect(reason):
                    log.info("%s: %s", self.machine.peer, reason)
                    await self.stream.close()
                    self._events.append(effect)
                case _:
                    self._events.append(effect)

    async def _fund(self, script: bytes, value: int) -> list[Effect]:
        key = self.machine.key
        await self.client.wallet.watch_key(key.to_wif(self.client.network))
        funded = await self.client.wallet.fund(script, value,
                                               await self.client.watcher.fee_rate())
        self.funded_inputs = funded.inputs
        return self.machine.contract_funded(funded.tx)

    async def _settlement_from_chain(self, timeout: float) -> Transaction:
        record = self.record
        deadline = time.monotonic() + timeout
        while True:
            spender = await self.client.wallet.spender(record.contract_txid, 0)
            if spender is not None:
                try:
                    check_settlement(record, spender)
                except ProtocolError as exc:
                    raise ChannelFailed(f"the contract was spent by {spender.txid_hex}, which "
                                        f"is not a settlement we accept: {exc}") from exc
                closing = replace(record, status=ChannelStatus.CLOSING,
                                  settlement_tx=spender.serialize())
                await asyncio.to_thread(self.client.store.put, closing)
                self.machine.record = closing
                return spender
            if time.monotonic() > deadline:
                raise ChannelFailed("the server hung up without settling; the channel stays "
                                    "stored and is refunded after its expiry")
            await asyncio.sleep(0.2)


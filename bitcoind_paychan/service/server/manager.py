"""ServerManager: accepts payment channels over connections the application (or a
transport) carries; its parts are mixed in (executor.py, routing.py, settlement.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.effects import (
    ChannelFinished,
    ClosingSeen,
    PrepareSettlement,
)
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import (
    ServerChannel,
    ServerPolicy,
)
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import (
    LocalProtocolError,
    NotStarted,
    StoreError,
)
from bitcoind_paychan.node.ports import Node, NodePorts, minimum_confirmations
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.server.connection import ServerConnection
from bitcoind_paychan.service.server.events import EventHandler, PaymentHandler
from bitcoind_paychan.service.server.executor import EffectsExecutor
from bitcoind_paychan.service.server.settlement import Settling
from bitcoind_paychan.service.watcher import ChainWatcher, ChannelView
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.leases import Lease, Leases, leases_for
from bitcoind_paychan.store.writer import PaymentWriter
from bitcoind_paychan.transport.base import Link
from bitcoind_paychan.transport.limits import PeerGate, PeerLimits
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.tls import ServerTLS
from bitcoind_paychan.transport.tlsdoor import TLSDoor

# The "server" subsystem's lines (daemon/logs.py), as before the server had its package.
log = logging.getLogger("bitcoind_paychan.service.server")
HANDSHAKE_TIMEOUT = 15.0  # bitcoinj's idle timeout while a channel is being set up


# How long a resumed connection may stay silent before proving the channel is its own: bitcoinj
# proves it with its next payment, whenever its application pays, so this is generous; it
# only bounds how long someone who knows a contract txid can hold a connection.
RESUME_TIMEOUT = 600.0


class ServerManager(EffectsExecutor):
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
        self.watcher.promote = self._promote  # a re-anchor buried deep enough
        self.watcher.promote_depth = max(1, min_confirmations)

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

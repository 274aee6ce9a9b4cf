"""ClientManager: opens (or resumes) channels from this node's wallet over
connections its `dial` makes, and keeps the live ones: `lookup` (live, else resumed, else
new) is the one way to a peer's channel."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import (
    ClientChannel,
    ClientPolicy,
)
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelOpened,
    PeerError,
    ReanchorEnded,
    ResumeRefused,
    VersionRefused,
)
from bitcoind_paychan.channel.kinds.registry import DEFAULT_VERSION, FALLBACK, OFFERED, kind_of
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import (
    ChannelExists,
    ChannelFailed,
    ChannelGone,
    LocalProtocolError,
    StoreError,
    TLSError,
    TransactionRejected,
)
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.reasons import connection_failure
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.client.channel import Channel
from bitcoind_paychan.service.client.reanchoring import release_dead
from bitcoind_paychan.service.clientevents import ClientEventHandler, ClientEvents
from bitcoind_paychan.service.turns import OpenTurns
from bitcoind_paychan.service.watcher import ChainWatcher, ChannelView
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.leases import promoting
from bitcoind_paychan.store.writer import PaymentWriter
from bitcoind_paychan.transport import dial as transports
from bitcoind_paychan.transport.base import Stream
from bitcoind_paychan.transport.tls import ClientTLS

# The "client" subsystem's lines (daemon/logs.py), as before the client had its package.
log = logging.getLogger("bitcoind_paychan.service.client")
HANDSHAKE_TIMEOUT = 15.0
VERSION_KEY = "client.version:"  # store meta key prefix: the major a server speaks
Dialer = Callable[[str, float | None], Awaitable[Stream]]
"""Connect to a peer (as stored in its channels' records) within a timeout."""


class Source(enum.Enum):
    """Where a lookup's channel came from."""

    LIVE = "live"  # connected here already: the same Channel object
    RESUMED = "resumed"  # stored, reconnected by this lookup
    NEW = "new"  # opened by this lookup


@dataclass(frozen=True)
class Found:
    """What `ClientManager.lookup` found: the channel, and where it came from."""

    channel: Channel
    source: Source


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
        self.live: dict[str, Channel] = {}  # channel id → its channel on a live connection
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
        # A re-anchor is promoted by the server's REANCHOR_LOCKED on a live connection (or
        # on the resume after it); the watcher does it only for a channel with no connection
        # once R is buried `forget_depth` deep, by when the server has promoted it too.
        self.watcher.promote = self._promote
        self.watcher.promote_depth = self.watcher.policy.forget_depth
        self.watcher.reanchor_ended = self._reanchor_dead
        self._released: set[str] = set()  # dead re-anchors whose coins were released
        self.background: set[asyncio.Task[None]] = set()  # channels' re-anchoring work
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
        while self.background:  # a top-up being funded: its coins locked or released
            await asyncio.gather(*self.background, return_exceptions=True)
        if self._started:
            self._started = False
            await self.watcher.stop()

    async def __aenter__(self) -> ClientManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def connected(self) -> int:
        """Channels on a live connection now."""
        return sum(1 for channel in self.live.values() if channel.connected)

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
                and not self._connected(record.channel_id)
                and record.channel_id not in self.unresumable]

    def spoken_version(self, peer: str) -> int | None:
        """The major the server at `peer` (host:port) last opened a channel with (stored, so
        a restart does not ask again with a major it hangs up on)."""
        known = self.store.get_meta(f"{VERSION_KEY}{peer}")
        return int(known) if known else None

    async def _promote(self, channel_id: str) -> ChannelRecord | None:
        """The watcher's promotion of a channel with no live connection (None: left to the
        connection's REANCHOR_LOCKED, or nothing to promote). A live one moves here only if
        the server's lock came while our node lagged (`Channel.promote_lagging`)."""
        if (live := self._connected(channel_id)) is not None:
            await live.promote_lagging()
            return None
        try:
            return await asyncio.to_thread(self.store.modify, Role.CLIENT, channel_id,
                                           promoting(0))
        except StoreError as exc:
            log.warning("channel %s not promoted now: %s", channel_id, exc)
            return None

    async def _reanchor_dead(self, effect: ReanchorEnded) -> None:
        """A re-anchor of ours can never confirm: its unspent wallet coins go back (once per
        process: a coin released already stays so)."""
        if effect.tx is not None and effect.tx.txid_hex not in self._released:
            self._released.add(effect.tx.txid_hex)
            await release_dead(self.wallet, self.chain, effect)

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
        return (await self.lookup(peer, value, version=version, new=new)).channel

    async def lookup(
        self, peer: str, value: int | None = None, *, any_value: bool = False,
        version: int | None = None, new: bool = False,
    ) -> Found:
        """The channel to pay `peer` through, and where it came from: live here (that same
        `Channel`, as it is), else stored and resumed, else new (of `value` sat, default: the
        policy's). Only an open channel of `value` serves, ChannelExists if the open one
        holds another (`open_channel`); with `any_value`, the first open one of any value
        (live first) does. `new=True` opens a new one whatever is open. One lookup runs at a
        time per peer: a second waits for the first and finds its channel."""
        await self.start()
        policy = self.policy if value is None else replace(self.policy, value=value)
        async with self.turns.turn(peer):
            if not new:
                found = await self._open_to(peer, None if any_value else policy.value)
                if found is not None:
                    return found
            known = await asyncio.to_thread(self.spoken_version, peer)
            channel = await self._open_new(peer, policy, version or self._newest(known))
            return Found(channel, Source.NEW)

    def payable(self, peer: str) -> list[ChannelRecord]:
        """The open channels to `peer` with money left that a lookup may return: live here,
        then stored (`resumable`)."""
        return [c.record for c in self._live_to(peer)] + self.resumable(peer)

    def has_payable(self, peer: str) -> bool:
        """`payable(peer)` is not empty; the store is read only when no live channel serves
        (a paying client asks before each request)."""
        return bool(self._live_to(peer)) or bool(self.resumable(peer))

    def _live_to(self, peer: str) -> list[Channel]:
        return [c for c in self.live.values()
                if c.connected and c.machine.peer == peer and c.remaining]

    async def _open_to(self, peer: str, value: int | None) -> Found | None:
        """The open channel of `value` (None: any) to `peer`, live, else resumed, if any;
        ChannelExists if the open one holds another value. The store is read only when no
        live channel serves."""
        live = self._live_to(peer)
        for channel in live:
            if value is None or channel.record.value == value:
                return Found(channel, Source.LIVE)
        stored = self.resumable(peer)
        for record in stored:
            if value is None or record.value == value:
                try:
                    return Found(await self._resume(record.channel_id), Source.RESUMED)
                except ChannelGone as exc:
                    log.warning("%s; opening a new channel", exc)
        others = [r for r in [c.record for c in live] + stored if r.value != value]
        if value is not None and others:
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

    def _newest(self, known: int | None) -> int:
        """The version a new channel offers: what the server spoke last time, else the
        default; with re-anchoring asked for, the newest kind up to it that can re-anchor."""
        newest = known or DEFAULT_VERSION
        if not self.policy.reanchoring:
            return newest
        return next((v for v in OFFERED if v <= newest
                     and kind_of(v).capabilities.reanchoring), newest)

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
            self.live[channel.channel_id] = channel
            self.watcher.schedule_deadline(channel.record)
            self.events.tell(ChannelOpened(channel.record, channel.resumed))
        return channel, outcome

    async def _dial(self, peer: str, timeout: float | None) -> Stream:
        """The default dialer: TCP or WebSocket by the peer's form, TLS as `tls` says."""
        return await transports.dial(peer, timeout, self.tls.get(peer))

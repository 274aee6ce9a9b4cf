"""`paychan daemon`: the server and/or client roles, the control API and metrics, in one
process configured by YAML. SIGTERM/SIGINT stop it gracefully (stop accepting, finish
in-flight payments, flush the store); SIGHUP reopens the log file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, overload

from bitcoind_paychan import __version__
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    ClosingSeen,
    PaymentAcknowledged,
    PaymentReceived,
    PeerError,
)
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.daemon.activity import Activity
from bitcoind_paychan.daemon.config import Config, server_address
from bitcoind_paychan.daemon.control import ControlServer
from bitcoind_paychan.daemon.health import SettleHealth
from bitcoind_paychan.daemon.logs import Logs
from bitcoind_paychan.daemon.metrics import MetricsServer, PaychanMetrics
from bitcoind_paychan.errors import (
    ChannelFailed,
    ChannelGone,
    ConfigError,
    InvalidParameter,
    LocalProtocolError,
    NodeError,
    PaychanError,
    StoreError,
)
from bitcoind_paychan.logcontext import bind_channel, channel_fields
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
from bitcoind_paychan.node.health import Reason
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.service.client import Channel, ClientEvent, PaymentClient
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.service.watcher import ChannelView
from bitcoind_paychan.store import ChannelStore, ChannelSummary
from bitcoind_paychan.store.leases import leases_for
from bitcoind_paychan.transport import websocket

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Daemon:
    """Everything one `paychan daemon` runs; also the control API's implementation."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = PaychanMetrics(config.network)
        self.activity = Activity()
        self.server: PaymentServer | None = None
        self.client: PaymentClient | None = None
        self.websocket: websocket.Listener | None = None  # the server's, if configured
        self.channels: dict[str, Channel] = {}  # the client's live channels
        self.node = Bitcoind(config.node_config())
        self.health = SettleHealth(self.node, self._views,
                                   lambda r: self.metrics.settle_state(r.reason.value))
        self.store: ChannelStore | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        self._busy = 0  # control calls in flight (payments, opens, closes)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped; 0 after a graceful stop."""
        config = self.config
        logs = Logs(config.logging.level, config.logging.format, config.logging.file,
                    config.logging.levels)
        node = self.node
        if config.store.path is not None:
            config.store.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # First, like bitcoind's datadir lock: a second daemon on an SQLite store stops here,
        # before it touches the node, a port or the control cookie.
        self.store = store = _open_store(config)
        try:
            tip = await asyncio.to_thread(node.check)
        except BaseException:
            store.close()
            raise
        log.info("paychan %s on %s; bitcoind at %s, height %s", __version__, config.network,
                 config.bitcoind.url, tip.height)
        await asyncio.to_thread(self._rebuild_activity, store)
        self.build(NodePorts.of(AsyncBitcoind(node)), store)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, logs.reopen)
        control = ControlServer(self, *split_address(config.control.listen),
                                config.control.cookie_file,
                                cookie_mode=config.control.cookie_mode,
                                cookie_group=config.control.cookie_group)
        metrics = None
        health: asyncio.Task[None] | None = None
        try:
            if self.server:
                with _listening("server.listen", config.server.listen):
                    host, port = await self.server.listen(*split_address(config.server.listen))
                log.info("server listening on %s:%s", host, port)
            if self.websocket and config.server.websocket_address:
                address, path = config.server.websocket_address
                with _listening("server.websocket", address):
                    host, port = await self.websocket.listen(*split_address(address))
                log.info("server listening for WebSocket on ws://%s:%s%s", host, port, path)
            if self.client:
                await self.client.start()
            with _listening("control.listen", config.control.listen):
                await control.start()
            if config.metrics.enabled:
                metrics = MetricsServer(self.metrics, *split_address(config.metrics.listen))
                self.metrics.collect = self._collect
                with _listening("metrics.listen", config.metrics.listen):
                    await metrics.start()
            health = asyncio.create_task(self.health.run())
            log.info("paychan daemon ready (control on %s)", config.control.listen)
            await self._stop.wait()
            log.info("stopping: no new connections; finishing payments in flight")
        finally:
            if health is not None:
                health.cancel()
            await self._shutdown(control, metrics, store)
        return 0

    def build(self, node: Node | NodePorts, store: ChannelStore) -> None:
        """The enabled roles' services, with the policies the configuration built, over the
        node's ports (one `AsyncBitcoind` gives them all)."""
        config = self.config
        ports = NodePorts.of(node)
        common: dict[str, Any] = {
            "autopilot": config.watch_policy(), "zmq_endpoint": config.bitcoind.zmq,
            "poll_interval": config.bitcoind.poll_interval,
            "review_interval": config.scheduler.review_interval,
        }
        if config.server.enabled:
            self.server = PaymentServer(
                ports, store, config.server_policy(), on_event=self._server_event,
                min_confirmations=config.server.min_confirmations,
                payout_script=config.payout_script(),
                on_payment_latency=self.metrics.server.latency.observe,
                limits=config.server.limits, tls=config.server.tls,
                proxy_protocol=config.server.proxies if config.server.proxy_protocol else None,
                leases=leases_for(store, config.cluster), **common)
            if config.server.websocket_address:
                self.websocket = websocket.Listener(self.server.gate, self.server.serve,
                                                    config.server.websocket_address[1],
                                                    self.server.tls_door(),
                                                    trusted_proxies=config.server.proxies)
            self.server.callbacks.on_error = self.metrics.callback_errors.inc
        if config.client.enabled:
            self.client = PaymentClient(ports, store, network=Network.from_chain(config.network),
                                        policy=config.client.policy,
                                        on_event=self._client_event, tls=config.client.tls,
                                        **common)
            self.client.callbacks.on_error = self.metrics.callback_errors.inc
            self.client.on_peer_error = lambda error: self.metrics.errors.labels(
                role="client", code=error.code.name).inc()
            self.client.open_new_hint = "paychan open --new"

    async def _shutdown(self, control: ControlServer, metrics: MetricsServer | None,
                        store: ChannelStore) -> None:
        deadline = time.monotonic() + 15
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.websocket:
            self.websocket.close()
        if self.server:
            await self.server.stop()
        if self.websocket:
            await self.websocket.stop()
        if self.client:
            await self.client.stop()
        await control.stop()
        if metrics:
            await metrics.stop()
        store.close()
        log.info("stopped")

    def request_stop(self) -> None:
        self._stop.set()

    # -- events and metrics ----------------------------------------------------------------

    def _server_event(self, event: ServerEvent) -> None:
        if isinstance(event, PaymentReceived):
            self.metrics.server.paid(event.amount)
            self.activity.record(event.amount, received=True)
        elif isinstance(event, PeerError):
            self.metrics.errors.labels(role="server", code=event.code.name).inc()
        elif isinstance(event, ChannelOpened | ChannelFinished):
            what = ("opened" if isinstance(event, ChannelOpened)
                    else f"finished: {event.status.value}")
            log.info("server channel %s %s", event.record.contract_txid, what,
                     extra=channel_fields(event.record.contract_txid, event.record.peer))

    def _client_event(self, event: ClientEvent) -> None:
        match event:
            case PaymentAcknowledged():
                return  # the CLI's pay answers it; a log line per payment is noise
            case ChannelOpened(resumed=resumed):
                what = "resumed" if resumed else "opened"
            case ChannelClosed(settlement=settlement):
                what = f"closed: settlement {settlement.txid_hex}"
            case ClosingSeen(closing=closing):
                what = f"closing: {closing.txid_hex} seen in the mempool"
            case ChannelFinished(status=status):
                what = f"finished: {status.value}"
        log.info("client channel %s %s", event.record.contract_txid, what,
                 extra=channel_fields(event.record.contract_txid, event.record.peer))

    def _collect(self) -> None:
        """Refresh the gauges from the store and the node's health, at scrape time."""
        m = self.metrics
        now = time.time()
        m.next_deadline.clear()
        counts = self._channel_counts()
        for role, service in (("server", self.server), ("client", self.client)):
            if service is None:
                continue
            views = service.views()
            for state in ChannelStatus:
                m.channels.labels(role=role, state=state.value).set(counts[role][state.value])
            m.forgotten.labels(role=role).set(counts[role]["forgotten"])
            m.lifetime.labels(role=role).set(counts[role]["lifetime"])
            m.locked.labels(role=role).set(sum(v.value for v in views if v.status == "open"))
            unsettled = [v.deadline for v in views if v.status in ("open", "closing")]
            if unsettled:
                m.next_deadline.labels(role=role).set(min(unsettled) - now)
            m.unconfirmed.labels(role=role).set(sum(
                1 for v in views if v.status == "closing" and not v.closing_confirmations))
        m.node_up.set(1 if self._node_healthy() else 0)
        height = self._last_height()
        if height is not None:
            m.height.set(height)
        if self.config.store.path is not None:  # SQLite; a database's size is its server's
            m.store_size.set(store_size(self.config.store.path))

    def _rebuild_activity(self, store: ChannelStore) -> None:
        """The dashboard's last hour, from the payment log (payments stored before schema
        version 5 have no time: they are not in it)."""
        since = int(time.time()) - 3600
        for role, enabled in ((Role.SERVER, self.config.server.enabled),
                              (Role.CLIENT, self.config.client.enabled)):
            if enabled:
                self.activity.rebuild(role.value, store.payments_per_second(role, since))

    def _node_healthy(self) -> bool:
        return all(service.watcher.healthy for service in (self.server, self.client)
                   if service is not None)

    # -- the control API -------------------------------------------------------------------

    def _views(self) -> list[ChannelView]:
        return [*(self.server.views() if self.server else []),
                *(self.client.views() if self.client else [])]

    async def getinfo(self) -> dict[str, Any]:
        """Answers while the node is down too: its state, and the last height seen."""
        try:
            height: int | None = (await asyncio.to_thread(self.node.tip)).height
            node, node_error = "up", None
        except NodeError as exc:
            height, node, node_error = self._last_height(), "down", str(exc)
        settle = await self.health.check()  # what the docs say getinfo checks
        return {
            "version": __version__, "network": self.config.network, "node": node,
            "node_error": node_error, "can_settle": settle.can_settle,
            "can_settle_reason": settle.reason.value, "can_settle_detail": settle.detail,
            "height": height,
            "uptime": int(time.time() - self.started),
            "server": self.config.server.listen if self.server else None,
            "client": sorted(self.config.client.servers) if self.client else None,
            "channels": self._channel_counts(),
            "store": None if self.store is None else asdict(self.store.info()),
        }

    def _channel_counts(self) -> dict[str, dict[str, int]]:
        """Per enabled role: stored channels by state, the forgotten ones (closed, buried,
        their history kept), and the lifetime total (both; never-funded channels that were
        discarded are not counted)."""
        forgotten = Counter(h.role.value for h in self._history())
        counts: dict[str, dict[str, int]] = {}
        for role, service in (("server", self.server), ("client", self.client)):
            if service is None:
                continue
            states = Counter(v.status for v in service.views())
            counts[role] = {state.value: states[state.value] for state in ChannelStatus} | {
                "forgotten": forgotten[role], "lifetime": states.total() + forgotten[role]}
        return counts

    def _last_height(self) -> int | None:
        for service in (self.server, self.client):
            monitor = service.watcher.monitor if service else None
            if monitor is not None and monitor.tip is not None:
                return monitor.tip.height
        return None

    async def dashboard(self) -> dict[str, Any]:
        """What the dashboard shows: channels, the node as the watchers see it (no RPC),
        the last hour's payments."""
        now = time.time()
        settle = self.health.last
        node_error = None
        if settle is not None and settle.reason is Reason.NODE_UNREACHABLE:
            node_error = settle.detail
        return {
            "version": __version__, "network": self.config.network, "now": int(now),
            "node": {"up": self._node_healthy() and node_error is None,
                     "height": self._last_height(), "error": node_error},
            "settle": None if settle is None else settle.as_dict(),
            "roles": [role for role, on in (("server", self.server), ("client", self.client))
                      if on is not None],
            "connections": {"server": self.server.connected if self.server else 0,
                            "client": sum(1 for c in self.channels.values() if c.connected)},
            "channels": [asdict(v) for v in self._views()],
            "activity": self.activity.series(now),
        }

    async def listchannels(self, state: str | None, include_forgotten: bool | None = None
                           ) -> list[dict[str, Any]]:
        """Stored channels; with `include_forgotten` (`all`), closed and buried ones too."""
        if state is not None and state not in {s.value for s in ChannelStatus}:
            raise LocalProtocolError(f"unknown state {state!r}; one of "
                                     f"{', '.join(s.value for s in ChannelStatus)}")
        rows = [_live(v) for v in self._views()]
        if include_forgotten:
            rows += [_forgotten(h) for h in self._history()]
        return [row for row in rows if state is None or row["status"] == state]

    async def getchannel(self, channel_id: str) -> dict[str, Any]:
        """One channel; a daemon that holds both sides of it (paying its own server) shows
        the client's view, and the server's under `server`."""
        found = self._find(channel_id, forgotten=True)
        row = _row(found)
        if row["role"] == Role.CLIENT.value and self.server is not None:
            server = self._server_side(found.contract_txid)
            if server is not None:
                row["server"] = server
        return row

    def _server_side(self, contract_txid: str) -> dict[str, Any] | None:
        """The server's view of a channel this daemon also holds as client, if it has one."""
        assert self.server is not None
        record = self.server.store.get(Role.SERVER, contract_txid)
        if record is not None:
            return _live(self.server.watcher.view(record))
        summaries = self.server.store.history(Role.SERVER, contract_txid)
        return _forgotten(summaries[0]) if summaries else None

    def _history(self) -> list[ChannelSummary]:
        return self.store.history() if self.store else []

    async def prunehistory(self, before: str) -> dict[str, Any]:
        """Delete the summaries and payment logs of channels forgotten and closed before
        `before` (a date, a date and time in UTC, or Unix seconds; not in the future)."""
        cutoff = _instant(before)
        if cutoff > time.time():
            raise InvalidParameter(f"prunehistory: {before!r} is in the future; give the "
                                     "date before which closed channels' history may go")
        assert self.store is not None
        pruned = await asyncio.to_thread(self.store.prune_history, cutoff)
        log.info("pruned the history of %d channels closed before %s", pruned, before)
        return {"pruned": pruned, "before": cutoff}

    @overload
    def _find(self, channel_id: str) -> ChannelView: ...

    @overload
    def _find(self, channel_id: str, forgotten: bool) -> ChannelView | ChannelSummary: ...

    def _find(self, channel_id: str, forgotten: bool = False) -> ChannelView | ChannelSummary:
        """A channel by contract txid (or a unique prefix), or by a configured server's name
        its one open channel (several: refused, naming them, as `pay` does); if `forgotten`
        and no stored channel matches, a forgotten one. A daemon paying its own server holds
        both sides of a channel: the client's view stands for it."""
        if channel_id in self.config.client.servers and self.client:
            address = self.config.client.servers[channel_id]
            views = [v for v in self.client.views() if v.peer == address and v.status == "open"]
            if not views:
                raise LocalProtocolError(f"no open channel to server {channel_id!r}; give a "
                                         "contract txid to see a closed one")
            _one_channel(channel_id, [v.contract_txid for v in views])
            return views[0]
        found: dict[str, ChannelView | ChannelSummary] = {
            v.contract_txid: v for v in self._views()
            if v.contract_txid.startswith(channel_id)}  # client views overwrite
        if not found and forgotten:
            found = {h.contract_txid: h for h in sorted(self._history(), key=lambda h: h.role,
                                                        reverse=True)  # client's last
                     if h.contract_txid.startswith(channel_id)}
        if len(found) != 1:
            raise LocalProtocolError(
                f"no channel {channel_id!r}" if not found else
                f"{channel_id!r} matches {len(found)} channels; give more of the txid")
        return next(iter(found.values()))

    def _server_address(self, server: str) -> str:
        """A configured server's address, or `server` itself if it is host:port or a ws://
        URL; InvalidParameter if it is malformed (`127.0.0.1:99999`, `:`)."""
        servers = self.config.client.servers
        if server in servers:
            return servers[server]
        if ":" in server:
            try:
                return server_address(server)
            except ValueError as exc:
                raise InvalidParameter(str(exc)) from None
        raise LocalProtocolError(f"unknown server {server!r}; configured: "
                                 f"{', '.join(sorted(servers)) or 'none'}")

    def _client(self) -> PaymentClient:
        if self.client is None:
            raise LocalProtocolError("the client role is not enabled (client.enabled)")
        return self.client

    async def open(self, server: str, amount: int, new: bool = False) -> dict[str, Any]:
        """The open channel of `amount` sat to `server`, resumed, or a new one (always a new
        one with `new`); never one of another value. `resumed` says which."""
        with self._working():
            client = self._client()
            live = {txid for txid, channel in client.live.items() if channel.connected}
            started = time.perf_counter()
            channel = await client.open_channel(self._server_address(server), amount, new=new)
            # A channel live here already is returned as it is (not resumed, not new).
            resumed = channel.resumed or channel.contract_txid in live
            self._opened(channel, started, new=not resumed)
            view = asdict(client.watcher.view(channel.record))
            return view | {"resumed": resumed}

    async def pay(self, target: str, amount: int, info: str | None) -> dict[str, Any]:
        """Pay `amount` through the channel `target` names; what this payment was and the
        channel's totals after it."""
        with self._working():
            channel = await self._channel_for(target)
            started = time.perf_counter()
            bind_channel(channel.contract_txid, channel.machine.peer)
            try:
                ack = await channel.pay(amount, (info or "").encode())
            except ChannelFailed:
                if channel.connected or channel.record.change == 0:
                    raise  # the server refused it, or the channel is used up
                # The connection was lost, but the payment is stored: resuming the channel
                # sends it again and waits for its acknowledgement.
                log.info("channel %s lost its connection; resuming", channel.contract_txid)
                channel = await self._resume(channel.contract_txid)
                ack = b""
            self.metrics.client.paid(amount, time.perf_counter() - started)
            self.activity.record(amount, received=False)
            return {"contract_txid": channel.contract_txid, "amount": amount, "info": info,
                    "payment": channel.record.payments, "paid": channel.paid,
                    "remaining": channel.remaining, "value": channel.record.value,
                    "ack_info": ack.decode(errors="replace")}

    async def _channel_for(self, target: str) -> Channel:
        """The channel `pay` uses: a stored open channel by contract txid (or a unique
        prefix), resumed if need be; or, for a server (a configured name or an address), its
        one open channel with money left (resumed), or a new one of the configured channel
        size if there is none. Several open channels to it: refused, naming them."""
        client = self._client()
        if target not in self.config.client.servers and ":" not in target:
            return await self._channel_by_txid(target)
        address = self._server_address(target)
        live = {t: c for t, c in self.channels.items()
                if c.connected and c.machine.peer == address and c.remaining}
        stored = [r.contract_txid for r in client.resumable(address)]
        candidates = [*live, *(t for t in stored if t not in live)]
        _one_channel(target, candidates)
        for txid in candidates:
            if txid in live:
                return live[txid]
            with contextlib.suppress(ChannelGone):
                return await self._resume(txid)
        started = time.perf_counter()
        channel = await client.open_channel(address, self.config.client.channel_size, new=True)
        self._opened(channel, started, new=not channel.resumed)
        return channel

    def _opened(self, channel: Channel, started: float, new: bool) -> None:
        """A channel `open` or `pay` got: kept live; a `new` one's opening payment counted."""
        self.channels[channel.contract_txid] = channel
        if new:
            self.metrics.client.paid(channel.paid, time.perf_counter() - started)
            self.activity.record(channel.paid, received=False)

    async def _channel_by_txid(self, prefix: str) -> Channel:
        """The stored client channel whose contract txid starts with `prefix`, if it is open
        with money left (reconnected after a restart); else an error saying what it is."""
        client = self._client()
        records = [r for r in client.channels() if r.contract_txid.startswith(prefix)]
        if not records:
            servers = ", ".join(sorted(self.config.client.servers)) or "none"
            raise LocalProtocolError(f"no server or client channel {prefix!r}: give a "
                                     f"configured server ({servers}), a host:port, or a "
                                     "contract txid")
        if len(records) > 1:
            raise LocalProtocolError(f"{prefix!r} matches {len(records)} channels; give more "
                                     "of the txid")
        record = records[0]
        txid = record.contract_txid
        if record.status is not ChannelStatus.OPEN:
            raise LocalProtocolError(f"channel {txid} is {record.status.value}; open a new one "
                                     f"(paychan open {record.peer} AMOUNT)")
        if record.change == 0:
            raise LocalProtocolError(f"channel {txid} is used up (all {record.value} sat "
                                     "paid); close it and open a new one")
        live = self.channels.get(txid)
        if live is not None and live.connected:
            return live
        return await self._resume(txid)

    async def _resume(self, contract_txid: str) -> Channel:
        """Reconnect a stored open channel (never opens another)."""
        self.channels.pop(contract_txid, None)
        resumed = await self._client().resume(contract_txid)
        self.channels[contract_txid] = resumed
        return resumed

    async def close(self, channel_id: str) -> dict[str, Any]:
        """Settle an open channel. Never opens one: a channel that is closing or closed is
        reported as it is (status and settlement), the same on every call."""
        with self._working():
            view = self._find(channel_id)
            txid = view.contract_txid
            if view.status != ChannelStatus.OPEN.value:
                return {"contract_txid": txid, "status": view.status,
                        "settlement_txid": self._closing_txid(view)}
            if view.role == "server" and self.server is not None:
                settlement = await self.server.settle(txid)
            else:
                channel = self.channels.get(txid)
                if channel is None or not channel.connected:
                    channel = await self._resume(txid)
                settlement = await channel.close()
                self.channels.pop(txid, None)
            return {"contract_txid": txid, "status": ChannelStatus.CLOSING.value,
                    "settlement_txid": settlement.txid_hex}

    def _closing_txid(self, view: ChannelView) -> str | None:
        """The transaction that closes the channel: seen on chain, else the one we stored."""
        if view.closing_txid:
            return view.closing_txid
        service = self.server if view.role == "server" else self.client
        record = service.store.get(Role(view.role), view.contract_txid) if service else None
        if record is None or not record.settlement_tx:
            return None
        return Transaction.parse(record.settlement_tx).txid_hex

    async def listpayments(self, channel_id: str | None, limit: int | None = None,
                           since: str | None = None) -> list[dict[str, Any]]:
        """Logged payments, newest first (by when they were stored; those logged before
        their time was kept last): at most `limit`, those stored at or after `since`."""
        txid = self._find(channel_id, forgotten=True).contract_txid if channel_id else None
        after = None if since is None else _instant(since, "listpayments --since")
        payments: list[dict[str, Any]] = []
        for role, service in ((Role.SERVER, self.server), (Role.CLIENT, self.client)):
            if service is not None:
                payments += [asdict(p) | {"role": role.value, "info": _text(p.info),
                                          "info_hex": p.info.hex()}
                             for p in service.store.payments(role, txid, limit, after)]
        payments.sort(key=lambda p: p["stored_at"] or 0, reverse=True)  # stable: by id within
        return payments[:limit]

    async def stop(self) -> dict[str, Any]:
        asyncio.get_running_loop().call_later(0.1, self._stop.set)
        return {"stopping": True}

    @contextlib.contextmanager
    def _working(self) -> Any:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1


def _one_channel(server: str, txids: list[str]) -> None:
    """`pay` and `close` to a server by name act on its one open channel: refuse several."""
    if len(txids) > 1:
        raise LocalProtocolError(
            f"{len(txids)} channels to server {server!r} are open: {', '.join(sorted(txids))}; "
            "give "
            "the contract txid of the one to use")


def _row(found: ChannelView | ChannelSummary) -> dict[str, Any]:
    return _live(found) if isinstance(found, ChannelView) else _forgotten(found)


def _live(view: ChannelView) -> dict[str, Any]:
    return asdict(view) | {"forgotten": False}


def _forgotten(summary: ChannelSummary) -> dict[str, Any]:
    """A forgotten channel's summary, in the keys of a stored channel's view where they fit."""
    row = asdict(summary)
    del row["contract_tx"], row["closing_tx"]  # on chain; ask the node for them by txid
    return row | {"role": summary.role.value, "status": summary.status.value,
                  "change": summary.value - summary.paid, "deadline": None,
                  "contract_confirmations": None, "closing_confirmations": None,
                  "forgotten": True}


def _instant(text: str, what: str = "prunehistory") -> int:
    """Unix seconds of `2026-01-31`, `2026-01-31T12:00` (UTC unless it says) or `1767225600`."""
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(f"{what}: {text!r} is not a date; give YYYY-MM-DD, "
                               "YYYY-MM-DDTHH:MM or Unix seconds") from None
    return int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp())


def _open_store(config: Config) -> ChannelStore:
    """The configured store; a database that refuses us is named with its key and file."""
    try:
        return config.store.open()
    except StoreError as exc:
        if config.store.engine == "sqlite":
            raise
        where = f" in {config.source}" if config.source else ""
        raise StoreError(f"store.dsn{where}: {exc}") from None


@contextlib.contextmanager
def _listening(key: str, address: str) -> Iterator[None]:
    """A port we cannot listen on, said with the key to change. A port in use is not a bad
    configuration (exit status 1: another program holds it now); an address this machine
    does not have, or a port it may not bind, is (exit status 2)."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            raise PaychanError(f"cannot listen on {address} ({key}): {reason}; another "
                               "program (another paychan daemon?) is using it: stop it or set "
                               f"another {key}") from None
        raise ConfigError(f"cannot listen on {address} ({key}): {reason}; expected an address "
                          f"of this machine and a port it may use: set another {key}") from None


def _text(info: bytes) -> str | None:
    """Payment info as text when it is printable UTF-8 (it is application data)."""
    try:
        text = info.decode()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def run_daemon(config: Config) -> int:
    return asyncio.run(Daemon(config).run())



def store_size(path: Path) -> int:
    """Bytes the SQLite store takes on disk: the database, its write-ahead log and journal."""
    total = 0
    for suffix in ("", "-wal", "-journal"):
        with contextlib.suppress(OSError):
            total += path.with_name(path.name + suffix).stat().st_size
    return total

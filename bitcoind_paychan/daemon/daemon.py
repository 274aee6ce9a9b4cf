"""`paychan daemon`: the server and/or client roles, the control API and metrics, in one
process configured by YAML. SIGTERM/SIGINT stop it gracefully (stop accepting, finish
in-flight payments, flush the store); SIGHUP reopens the log file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, overload

from bitcoind_paychan import __version__
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.effects import (
    ChannelFinished,
    ChannelOpened,
    PaymentReceived,
    PeerError,
)
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.daemon.activity import Activity
from bitcoind_paychan.daemon.config import Config
from bitcoind_paychan.daemon.control import ControlServer
from bitcoind_paychan.daemon.logs import Logs
from bitcoind_paychan.daemon.metrics import MetricsServer, PaychanMetrics
from bitcoind_paychan.errors import ConfigError, LocalProtocolError, NodeError, StoreError
from bitcoind_paychan.logcontext import bind_channel, channel_fields
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
from bitcoind_paychan.service.client import Channel, ChannelFailed, ChannelGone, PaymentClient
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
        self.build(AsyncBitcoind(node), store)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, logs.reopen)
        control = ControlServer(self, *split_address(config.control.listen),
                                config.control.cookie_file,
                                cookie_mode=config.control.cookie_mode,
                                cookie_group=config.control.cookie_group)
        metrics = None
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
            log.info("paychan daemon ready (control on %s)", config.control.listen)
            await self._stop.wait()
            log.info("stopping: no new connections; finishing payments in flight")
        finally:
            await self._shutdown(control, metrics, store)
        return 0

    def build(self, wallet: AsyncBitcoind, store: ChannelStore) -> None:
        """The enabled roles' services, with the policies the configuration built."""
        config = self.config
        common: dict[str, Any] = {
            "autopilot": config.watch_policy(), "zmq_endpoint": config.bitcoind.zmq,
            "poll_interval": config.bitcoind.poll_interval,
            "review_interval": config.scheduler.review_interval,
        }
        if config.server.enabled:
            self.server = PaymentServer(
                wallet, store, config.server_policy(), on_event=self._server_event,
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
        if config.client.enabled:
            self.client = PaymentClient(wallet, store, network=Network.from_chain(config.network),
                                        policy=config.client.policy,
                                        on_event=self._client_event, tls=config.client.tls,
                                        **common)

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
            self.metrics.errors.labels(code=event.code.name).inc()
        elif isinstance(event, ChannelOpened | ChannelFinished):
            log.info("server channel %s: %s", event.record.contract_txid,
                     type(event).__name__, extra=channel_fields(event.record.contract_txid,
                                                                event.record.peer))

    def _client_event(self, event: ChannelFinished) -> None:
        log.info("client channel %s finished: %s", event.record.contract_txid,
                 event.status.value, extra=channel_fields(event.record.contract_txid,
                                                          event.record.peer))

    def _collect(self) -> None:
        """Refresh the gauges from the store and the node's health, at scrape time."""
        m = self.metrics
        now = time.time()
        m.next_deadline.clear()
        for role, service in (("server", self.server), ("client", self.client)):
            if service is None:
                continue
            views = service.views()
            for state in ChannelStatus:
                count = sum(1 for v in views if v.status == state.value)
                m.channels.labels(role=role, state=state.value).set(count)
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

    def _node_healthy(self) -> bool:
        return all(service.watcher.healthy for service in (self.server, self.client)
                   if service is not None)

    # -- the control API -------------------------------------------------------------------

    def _views(self) -> list[ChannelView]:
        return [*(self.server.views() if self.server else []),
                *(self.client.views() if self.client else [])]

    async def getinfo(self) -> dict[str, Any]:
        """Answers while the node is down too: its state, and the last height seen."""
        views = self._views()
        try:
            height: int | None = (await asyncio.to_thread(self.node.tip)).height
            node, node_error = "up", None
        except NodeError as exc:
            height, node, node_error = self._last_height(), "down", str(exc)
        return {
            "version": __version__, "network": self.config.network, "node": node,
            "node_error": node_error, "height": height,
            "uptime": int(time.time() - self.started),
            "server": self.config.server.listen if self.server else None,
            "client": sorted(self.config.client.servers) if self.client else None,
            "channels": {state.value: sum(1 for v in views if v.status == state.value)
                         for state in ChannelStatus},
            "store": None if self.store is None else asdict(self.store.info()),
        }

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
        return {
            "version": __version__, "network": self.config.network, "now": int(now),
            "node": {"up": self._node_healthy(), "height": self._last_height()},
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
        found = self._find(channel_id, forgotten=True)
        return _live(found) if isinstance(found, ChannelView) else _forgotten(found)

    def _history(self) -> list[ChannelSummary]:
        return self.store.history() if self.store else []

    async def prunehistory(self, before: str) -> dict[str, Any]:
        """Delete the summaries and payment logs of channels forgotten and closed before
        `before` (a date, a date and time in UTC, or Unix seconds; not in the future)."""
        cutoff = _instant(before)
        if cutoff > time.time():
            raise LocalProtocolError(f"prunehistory: {before!r} is in the future; give the "
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
        """A channel by contract txid (or a unique prefix), or the open channel to a
        configured server; if `forgotten` and no stored channel matches, a forgotten one.
        A daemon paying its own server holds both sides of a channel: the client's view
        stands for it."""
        found: dict[str, ChannelView | ChannelSummary] = {
            v.contract_txid: v for v in self._views()
            if v.contract_txid.startswith(channel_id)}  # client views overwrite
        if not found and channel_id in self.config.client.servers and self.client:
            address = self.config.client.servers[channel_id]
            found = {v.contract_txid: v for v in self.client.views()
                     if v.peer == address and v.status == "open"}
        if not found and channel_id in self.config.client.servers:
            raise LocalProtocolError(f"no open channel to server {channel_id!r}; give a "
                                     "contract txid to see a closed one")
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
        servers = self.config.client.servers
        if server in servers:
            return servers[server]
        if server in servers.values() or ":" in server:
            return server
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
            channel = await self._client().open_channel(self._server_address(server), amount,
                                                        new=new)
            self.channels[channel.contract_txid] = channel
            view = asdict(self._client().watcher.view(channel.record))
            return view | {"resumed": channel.resumed}

    async def pay(self, target: str, amount: int, info: str | None) -> dict[str, Any]:
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
            return {"contract_txid": channel.contract_txid, "paid": channel.paid,
                    "remaining": channel.remaining, "ack_info": ack.decode(errors="replace")}

    async def _channel_for(self, target: str) -> Channel:
        """A live channel by contract txid (prefix), or the open one to a server (resumed),
        or a new one of the configured channel size."""
        live = [c for t, c in self.channels.items() if t.startswith(target) and c.connected]
        if len(live) == 1:
            return live[0]
        address = self._server_address(target)
        for channel in self.channels.values():
            if channel.connected and channel.machine.peer == address and channel.remaining:
                return channel
        client = self._client()
        for record in client.resumable(address):
            with contextlib.suppress(ChannelGone):
                return await self._resume(record.contract_txid)
        channel = await client.open_channel(address, self.config.client.channel_size, new=True)
        self.channels[channel.contract_txid] = channel
        return channel

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

    async def listpayments(self, channel_id: str | None) -> list[dict[str, Any]]:
        txid = self._find(channel_id, forgotten=True).contract_txid if channel_id else None
        payments: list[dict[str, Any]] = []
        for role, service in ((Role.SERVER, self.server), (Role.CLIENT, self.client)):
            if service is not None:
                payments += [asdict(p) | {"role": role.value, "info": _text(p.info),
                                          "info_hex": p.info.hex()}
                             for p in service.store.payments(role, txid)]
        return payments

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


def _instant(text: str) -> int:
    """Unix seconds of `2026-01-31`, `2026-01-31T12:00` (UTC unless it says) or `1767225600`."""
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise LocalProtocolError(f"prunehistory: {text!r} is not a date; give YYYY-MM-DD, "
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
    """A port we cannot listen on is a configuration problem: say which key to change."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {address} ({key}): {reason}; "
                          f"another program (another paychan daemon?) may be using it: stop "
                          f"it or set another {key}") from None


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

"""`paychan daemon`: the server and/or client roles, the control API and metrics, in one
process configured by YAML. SIGTERM/SIGINT stop it gracefully (stop accepting, finish
in-flight payments, flush the store); SIGHUP reopens the log file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bitcoind_paychan import __version__
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    ClosingSeen,
    PaymentAcknowledged,
    PaymentReceived,
    PeerError,
    ReanchorSigned,
)
from bitcoind_paychan.channel.reanchor_autopilot import kinds as reanchor_kinds
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.daemon import eventloop
from bitcoind_paychan.daemon.activity import Activity
from bitcoind_paychan.daemon.api import ControlApi
from bitcoind_paychan.daemon.config import Config
from bitcoind_paychan.daemon.control import ControlServer
from bitcoind_paychan.daemon.health import SettleHealth
from bitcoind_paychan.daemon.logs import Logs
from bitcoind_paychan.daemon.metrics import MetricsServer, PaychanMetrics
from bitcoind_paychan.daemon.process import freeze_heap, raise_fd_limit, thaw_heap
from bitcoind_paychan.errors import ConfigError, PaychanError, StoreError
from bitcoind_paychan.gateway import Gateway
from bitcoind_paychan.logcontext import channel_fields
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.service.client import ClientEvent, PaymentClient
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.credit import CreditStore
from bitcoind_paychan.store.leases import leases_for
from bitcoind_paychan.transport import websocket
from bitcoind_paychan.transport.http import WebServer

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Daemon(ControlApi):
    """Everything one `paychan daemon` runs; the control API (api.py) over it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = PaychanMetrics(config.network)
        self.activity = Activity()
        self.server: PaymentServer | None = None
        self.client: PaymentClient | None = None
        self.websocket: websocket.Listener | None = None  # the server's, if configured
        self.gateway: Gateway | None = None  # on the server's channels, if configured
        self._gateway_listener: WebServer | None = None
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
                raise_fd_limit()  # a socket per connected channel
                with _listening("server.listen", config.server.listen):
                    host, port = await self.server.listen(*split_address(config.server.listen))
                log.info("server listening on %s:%s", host, port)
            if self.websocket and config.server.websocket_address:
                address, path = config.server.websocket_address
                with _listening("server.websocket", address):
                    host, port = await self.websocket.listen(*split_address(address))
                log.info("server listening for WebSocket on ws://%s:%s%s", host, port, path)
            if self.server and self.gateway:
                self._gateway_listener = WebServer(self.gateway.app(self.server),
                                                   *split_address(config.gateway.listen))
                with _listening("gateway.listen", config.gateway.listen):
                    host, port = await self._gateway_listener.start()
                log.info("gateway listening on http://%s:%s (channels at %s)", host, port,
                         config.gateway.endpoint)
            if self.client:
                await self.client.start()
            freeze_heap()  # the watchers' indexes are built: out of the collector's way
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
            if config.gateway.enabled:
                if not isinstance(store, CreditStore):
                    raise ConfigError(f"gateway.enabled: the store ({store.info().engine}) "
                                      "keeps no credit: use SQLite or PostgreSQL")
                self.gateway = Gateway(config.gateway.routes, self.server.policy,
                                       config.gateway.endpoint, store=store,
                                       proxies=config.server.proxies,
                                       max_requests_per_session=config.gateway
                                       .max_requests_per_session)
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
        if self._gateway_listener:
            await self._gateway_listener.stop()
        if self.server:
            await self.server.stop()
        if self.websocket:
            await self.websocket.stop()
        if self.client:
            await self.client.stop()
        thaw_heap()
        await control.stop()
        if metrics:
            await metrics.stop()
        store.close()
        log.info("stopped")

    def request_stop(self) -> None:
        self._stop.set()

    # -- events and metrics ----------------------------------------------------------------

    def _server_event(self, event: ServerEvent) -> None:
        if self.gateway is not None:
            self.gateway.on_event(event)  # its sessions learn their channels and payments
        if isinstance(event, PaymentReceived):
            self.metrics.server.paid(event.amount)
            self.activity.record(event.amount, received=True)
        elif isinstance(event, PeerError):
            self.metrics.errors.labels(role="server", code=event.code.name).inc()
        elif isinstance(event, ReanchorSigned):
            for kind in reanchor_kinds(event.record):
                self.metrics.reanchors.labels(kind=kind).inc()
            if event.record.pending is not None:
                self.metrics.paid_out.inc(event.record.pending.payout)
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
            m.reanchors_pending.labels(role=role).set(sum(
                1 for v in views if v.reanchor_state in ("signed", "complete")))
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


def run_daemon(config: Config) -> int:
    """Run the daemon `config` describes, on the event loop it names (`daemon.event_loop`)."""
    return eventloop.run(Daemon(config).run(), config.daemon.event_loop)



def store_size(path: Path) -> int:
    """Bytes the SQLite store takes on disk: the database, its write-ahead log and journal."""
    total = 0
    for suffix in ("", "-wal", "-journal"):
        with contextlib.suppress(OSError):
            total += path.with_name(path.name + suffix).stat().st_size
    return total

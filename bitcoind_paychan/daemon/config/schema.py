"""The configuration as read: one frozen dataclass per section, and `Config`, the whole.

Each default is written once: a policy key's in its policy dataclass
(bitcoind_paychan.channel), any other key's where it is read (sections.py, roles.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from bitcoind_paychan.bitcoin.address import address_to_script
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.daemon.config.values import label
from bitcoind_paychan.errors import ConfigError
from bitcoind_paychan.gateway.proxy import MAX_REQUESTS_PER_SESSION
from bitcoind_paychan.gateway.routes import Route
from bitcoind_paychan.node.config import NodeConfig
from bitcoind_paychan.store import ChannelStore, SessionTimeouts, open_store
from bitcoind_paychan.store.leases import ClusterPolicy
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("human", "json")
COOKIE_MODES = (0o600, 0o640)  # the control cookie: owner only, or owner and group
BITCOIN_SUBDIRS = {"main": "", "test": "testnet3"}  # others: the chain's name


@dataclass(frozen=True)
class BitcoindConfig:
    """How to reach bitcoind. Either `cookie_file` or `user` and `password` is set."""

    url: str
    cookie_file: Path | None
    user: str | None
    password: str | None = field(repr=False)
    wallet: str | None
    zmq: str | None
    poll_interval: float


@dataclass(frozen=True)
class ServerConfig:
    """The server role: where it listens and what channels it accepts."""

    enabled: bool
    listen: str
    min_confirmations: int  # resolved at load: 0 on regtest, 1 elsewhere when not given
    payout_address: str | None  # None: a fresh address of bitcoind.wallet per settlement
    policy: ServerPolicy
    limits: PeerLimits  # per-address connection rate and handshakes
    websocket: str | None = None  # host:port/path of the WebSocket listener; None: none
    tls_cert_file: Path | None = None  # with tls_key_file: the listeners speak TLS
    tls_key_file: Path | None = None

    @property
    def tls(self) -> ServerTLS | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTLS(self.tls_cert_file, self.tls_key_file)
    proxies: TrustedProxies = field(default_factory=TrustedProxies)  # whose header counts
    proxy_protocol: bool = False  # the TCP listener: trusted proxies send a PROXY header

    @property
    def websocket_address(self) -> tuple[str, str] | None:
        """(host:port, /path) of the WebSocket listener, if any."""
        if self.websocket is None:
            return None
        address, _, path = self.websocket.partition("/")
        return address, "/" + path


@dataclass(frozen=True)
class ClientConfig:
    """The client role: the servers it pays (name → host:port) and the channels it opens."""

    enabled: bool
    servers: dict[str, str]
    policy: ClientPolicy
    tls: dict[str, ClientTLS] = field(default_factory=dict)  # server address → how to trust it

    @property
    def channel_size(self) -> int:
        return self.policy.value


@dataclass(frozen=True)
class StoreConfig:
    """Where the channels are kept: an SQLite file (`path`), or a PostgreSQL database (`dsn`,
    which may hold a password: never shown)."""

    engine: str
    path: Path | None
    dsn: str | None = field(default=None, repr=False)
    timeouts: SessionTimeouts = field(default_factory=SessionTimeouts)  # PostgreSQL sessions'

    def open(self, *, read_only: bool = False) -> ChannelStore:
        """The store this configuration names (its engine's StoreError if it cannot open)."""
        return open_store(self.path, engine=self.engine, dsn=self.dsn, read_only=read_only,
                          timeouts=self.timeouts)


@dataclass(frozen=True)
class SchedulerConfig:
    """The autopilot: how often it reviews, and its policy (which holds the fee policy)."""

    review_interval: float
    policy: WatchPolicy


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    format: str
    file: Path | None  # None: stderr
    # Per subsystem (daemon/logs.py SUBSYSTEMS), over `level`.
    levels: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ControlConfig:
    """The control API (HTTP on a loopback address, cookie auth). The cookie's mode and group
    say who besides the daemon's user may use it (as bitcoind's -rpccookieperms)."""

    listen: str
    cookie_file: Path
    cookie_mode: int
    cookie_group: str | None  # None: the daemon's own group


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon process itself: the event loop it runs on (daemon/eventloop.py)."""

    event_loop: str = "asyncio"


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool
    listen: str


@dataclass(frozen=True)
class GatewayConfig:
    """`paychan gateway`: the reverse proxy selling `routes` (each a path prefix, an upstream
    and a price rule), its channel endpoint at `endpoint` on `listen`."""

    enabled: bool
    listen: str
    endpoint: str
    routes: tuple[Route, ...]
    max_requests_per_session: int = MAX_REQUESTS_PER_SESSION  # paid, of one channel, at once


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from (None: defaults only)."""

    network: str
    bitcoind: BitcoindConfig
    server: ServerConfig
    client: ClientConfig
    store: StoreConfig
    scheduler: SchedulerConfig
    fees: FeePolicy
    logging: LoggingConfig
    control: ControlConfig
    metrics: MetricsConfig
    cluster: ClusterPolicy = field(default_factory=ClusterPolicy)  # instances sharing a store
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    gateway: GatewayConfig = field(default_factory=lambda: GatewayConfig(
        False, "127.0.0.1:8402", "/paychan", (), MAX_REQUESTS_PER_SESSION))
    source: Path | None = None

    def node_config(self) -> NodeConfig:
        b = self.bitcoind
        return NodeConfig(url=b.url, chain=self.network, wallet=b.wallet,
                          cookie_file=b.cookie_file, user=b.user, password=b.password)

    def payout_script(self) -> bytes | None:
        """The server's fixed payout scriptPubKey, if `server.payout_address` is set."""
        if self.server.payout_address is None:
            return None
        return address_to_script(self.server.payout_address, Network.from_chain(self.network))

    def server_policy(self) -> ServerPolicy:
        return self.server.policy

    def client_policy(self, server_name: str) -> ClientPolicy:
        """The policy for channels to `server_name` (a configured name, or a host:port)."""
        c = self.client
        if server_name not in c.servers and ":" not in server_name:
            known = ", ".join(sorted(c.servers)) or "none"
            raise ConfigError(f"{label(self.source)}: client.servers: no server named "
                              f"{server_name!r}; expected one of: {known}")
        return c.policy

    def watch_policy(self) -> WatchPolicy:
        return self.scheduler.policy


def default_cookie_file(network: str) -> Path:
    subdir = BITCOIN_SUBDIRS.get(network, network)
    return Path("~/.bitcoin").expanduser() / subdir / ".cookie"

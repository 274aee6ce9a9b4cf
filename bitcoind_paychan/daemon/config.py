"""The daemon's YAML configuration: schema, defaults, validation, and the runtime objects.

`load_config(path)` reads a file (None: every default, a regtest node beside a local
`bitcoind -regtest` with cookie auth); `config_from_dict(data, source)` validates a parsed
mapping. Every problem is one ConfigError naming the file, the key path (`server.listen`),
what was found and what was expected. The schema is documented in docs/config.md.

In string values `${NAME}` is replaced by the environment variable NAME; in paths `~` is the
home directory and `<network>` the network's name; relative paths are relative to the
configuration file's directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import yaml

from bitcoind_paychan.bitcoin.address import address_to_script
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.daemon.logs import SUBSYSTEMS
from bitcoind_paychan.errors import ConfigError, DecodeError, PolicyError, TLSError
from bitcoind_paychan.node.config import CHAINS, DEFAULT_RPC_PORTS, NodeConfig
from bitcoind_paychan.store import ENGINES, ChannelStore, SessionTimeouts, open_store
from bitcoind_paychan.store.leases import ClusterPolicy
from bitcoind_paychan.store.postgres import check_dsn, password_of
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.proxies import EXPECTED as PROXIES_EXPECTED
from bitcoind_paychan.transport.proxies import HEADERS, TrustedProxies
from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("human", "json")
COOKIE_MODES = (0o600, 0o640)  # the control cookie: owner only, or owner and group
BITCOIN_SUBDIRS = {"main": "", "test": "testnet3"}  # others: the chain's name
_P = TypeVar("_P")
_T = TypeVar("_T")
_V = TypeVar("_V")
_ENV = re.compile(r"\$\{([^}]*)\}")
_ZMQ = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):\d+|ipc://\S+)$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")


# -- the schema ------------------------------------------------------------------------------
# What was read, section by section. Each default is written once: a policy key's in its policy
# dataclass (bitcoind_paychan.channel), any other key's where it is read (below).


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
class MetricsConfig:
    enabled: bool
    listen: str


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
            raise ConfigError(f"{_label(self.source)}: client.servers: no server named "
                              f"{server_name!r}; expected one of: {known}")
        return c.policy

    def watch_policy(self) -> WatchPolicy:
        return self.scheduler.policy


SECTIONS: dict[str, type[Any]] = {
    "bitcoind": BitcoindConfig, "server": ServerConfig, "client": ClientConfig,
    "store": StoreConfig, "scheduler": SchedulerConfig, "fees": FeePolicy,
    "logging": LoggingConfig, "control": ControlConfig, "metrics": MetricsConfig,
    "cluster": ClusterPolicy,
}
TOP_LEVEL = ("network", *SECTIONS)
# The keys that set a policy's field (key → field). Their defaults and rules are the policy's.
POLICY_KEYS: dict[str, dict[str, str]] = {
    "server": {"min_channel_size": "min_channel_size", "min_payment": "min_payment",
               "min_increment": "min_increment", "min_time_window": "min_time_window",
               "max_time_window": "max_time_window"},
    "client": {"channel_size": "value", "time_window": "time_window",
               "max_min_payment": "max_min_payment", "payment_window": "payment_window"},
    "scheduler": {"settle_margin": "settle_margin", "forget_depth": "forget_depth",
                  "bump_after_blocks": "bump_after_blocks"},
    "fees": {"target": "target", "min_rate": "min_rate", "max_rate": "max_rate"},
}
# The server section's keys for its PeerLimits (key → field), read like POLICY_KEYS.
LIMIT_KEYS = {"max_connections_per_minute": "max_connections_per_minute",
              "max_handshakes_per_ip": "max_handshakes_per_ip",
              "max_contract_checks": "max_contract_checks"}
# The server section's keys for its TrustedProxies (the WebSocket listener's).
PROXY_KEYS = ("trusted_proxies", "proxy_header")
# The store section's keys for its SessionTimeouts (PostgreSQL only), in seconds.
TIMEOUT_KEYS = tuple(f.name for f in dataclasses.fields(SessionTimeouts))
# Section fields built from keys, not keys themselves.
BUILT = ("policy", "limits", "tls", "proxies", "timeouts")
NULL_IS_DEFAULT = {"scheduler.settle_margin"}  # null: the policy derives it


def section_keys(section: str) -> tuple[str, ...]:
    """The keys a section accepts: its own settings, then those that set its policy."""
    own = [f.name for f in dataclasses.fields(SECTIONS[section]) if f.name not in BUILT]
    policy = {**POLICY_KEYS.get(section, {}), **(LIMIT_KEYS if section == "server" else {})}
    built = {"server": PROXY_KEYS, "store": TIMEOUT_KEYS}.get(section, ())
    return (*(k for k in own if k not in policy.values()), *policy, *built)


def default_cookie_file(network: str) -> Path:
    subdir = BITCOIN_SUBDIRS.get(network, network)
    return Path("~/.bitcoin").expanduser() / subdir / ".cookie"


# -- loading -----------------------------------------------------------------------------------

SYSTEM_CONFIG = Path("/etc/paychan/paychan.yaml")


def config_locations() -> list[Path]:
    """Where a configuration is looked for when none is given, in order: the per-user file
    ($XDG_CONFIG_HOME, else ~/.config, /paychan/paychan.yaml), then the system's."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return [Path(base) / "paychan" / "paychan.yaml", SYSTEM_CONFIG]


def find_config(given: str | Path | None) -> Path | None:
    """The configuration file to use: `given` (--config), else $PAYCHAN_CONF, else the first
    of `config_locations()` that exists; None (every default) if there is none."""
    if given:
        return Path(given)
    if os.environ.get("PAYCHAN_CONF"):
        return Path(os.environ["PAYCHAN_CONF"])
    return next((path for path in config_locations() if path.is_file()), None)



def load_config(path: str | Path | None, *, check_files: bool = False) -> Config:
    """Read and validate the YAML file at `path` (None: all defaults; an empty file too).

    `check_files` also checks that bitcoind's cookie file can be read (the daemon does at
    start; pure schema checks need no files). A file holding `bitcoind.password` must not be
    readable by group or others.
    """
    if path is None:
        return config_from_dict({}, None, check_files=check_files)
    source, data, mode, lines = _read(path)
    secret = _secret_key(data)
    if secret and mode & 0o077:
        who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
        raise ConfigError(
            f"{source}: {secret}: the file holds a secret but is readable by {who} "
            f"(mode {stat.S_IMODE(mode):03o}), expected mode 600; fix: chmod 600 {source}")
    return config_from_dict(data, source, check_files=check_files, lines=lines)


def load_control_config(path: str | Path | None) -> ControlConfig:
    """Only what `paychan <command>` needs from the file at `path`: the network and the
    control section (checked as the daemon checks them). The rest is the daemon's: its
    `${NAME}`s are not expanded, so the CLI runs without the database password."""
    if path is None:
        return config_from_dict({}).control
    source, data, _, lines = _read(path)
    r = _Reader(source, lines)
    data = {key: r.substitute(data[key], key) for key in ("network", "control") if key in data}
    network = r.choice(data, "", "network", "regtest", CHAINS)
    try:
        control = _control(r, r.section(data, "control"), network)
    except _Problem as problem:
        r.problems.append(problem)
    r.raise_errors()
    return control


def _read(path: str | Path) -> tuple[Path, dict[str, Any], int, dict[str, int]]:
    """The file's path, its parsed top-level mapping, its mode and each key's line;
    ConfigError if it cannot be read or is not a YAML mapping."""
    source = Path(os.path.expanduser(path))
    try:
        text = source.read_text(encoding="utf-8")
        mode = source.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the configuration file: "
                          f"{exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not a text file (UTF-8 expected): {exc}") from exc
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML {_yaml_error(exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: found {_show(data)} at the top level, expected a mapping "
                          f"of sections ({', '.join(TOP_LEVEL)})")
    return source, data, mode, _key_lines(yaml.compose(text, Loader=_Loader))


def _secret_key(data: Mapping[str, Any]) -> str | None:
    """The key that holds a secret in the file itself (not through ${NAME}), if any."""
    bitcoind, store = data.get("bitcoind"), data.get("store")
    if isinstance(bitcoind, dict) and bitcoind.get("password") is not None:
        return "bitcoind.password"
    if isinstance(store, dict) and isinstance(store.get("dsn"), str):
        password = password_of(store["dsn"])
        if password and not _ENV.search(password):
            return "store.dsn"
    return None


def config_from_dict(data: Mapping[str, Any], source: Path | None = None, *,
                     check_files: bool = False, lines: Mapping[str, int] | None = None
                     ) -> Config:
    """Validate an already parsed configuration; `source` names the file in errors, `lines`
    (key path → line) puts them in file order. Every problem found is reported in one
    ConfigError: the schema's first, in file order, then the files that cannot be read."""
    r = _Reader(source, lines)
    data = r.substitute(data, "")
    r.check_keys(data, "", TOP_LEVEL)
    network = r.choice(data, "", "network", "regtest", CHAINS)

    def files() -> bool:  # not when a section is rebuilt from defaults after a problem
        return check_files and not r.fallback

    def section(name: str, build: Callable[[dict[str, Any]], _T]) -> _T:
        """The section built from its keys; on a problem, noted, built from defaults."""
        try:
            return build(r.section(data, name))
        except _Problem as problem:
            r.problems.append(problem)
            return r.defaults(lambda: build({}))

    fees = section("fees", lambda d: r.policy(d, "fees", FeePolicy))
    config = Config(
        network=network,
        bitcoind=section("bitcoind", lambda d: _bitcoind(r, d, network, files())),
        server=section("server", lambda d: _server(r, d, network, files())),
        client=section("client", lambda d: _client(r, d, network, files())),
        store=section("store", lambda d: _store(r, d, network)),
        scheduler=section("scheduler", lambda d: SchedulerConfig(
            review_interval=r.number(d, "scheduler", "review_interval", 60.0),
            policy=r.policy(d, "scheduler", WatchPolicy, fees=fees))),
        fees=fees,
        logging=section("logging", lambda d: _logging(r, d, network)),
        control=section("control", lambda d: _control(r, d, network)),
        metrics=section("metrics", lambda d: _metrics(r, d)),
        cluster=section("cluster", lambda d: _cluster(r, d)),
        source=source,
    )
    r.raise_errors()  # the cross checks compare values that must be valid first
    try:
        _cross_checks(r, config)
    except _Problem as problem:
        r.problems.append(problem)
    r.raise_errors()
    # One settle margin, built once (scheduler.settle_margin): the server's machines stop
    # taking resumes when its autopilot settles.
    margin = config.scheduler.policy.settle_margin
    if not config.server.enabled:  # unchecked against it (see _cross_checks), and unused
        return config
    server = replace(config.server, policy=replace(config.server.policy, settle_margin=margin))
    return replace(config, server=server)


def _store(r: _Reader, d: dict[str, Any], network: str) -> StoreConfig:
    engine = r.choice(d, "store", "engine", "sqlite", ENGINES)
    if engine == "sqlite":
        for key in ("dsn", *TIMEOUT_KEYS):
            if d.get(key) is not None:
                r.wrong(f"store.{key}", f"found a {key} with engine sqlite, expected none (set "
                                        "store.engine: postgresql to use it)", None)
        return StoreConfig(engine, r.path(d, "store", "path", "~/.paychan/<network>/channels.db",
                                          network))
    if d.get("path") is not None:
        r.wrong("store.path", "found a path with engine postgresql, expected store.dsn only "
                              "(the path is for engine sqlite)", None)
    dsn = d.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        r.fail("store.dsn", f"found {'nothing' if dsn is None else _show(dsn)}, expected "
                            "a PostgreSQL connection string for engine postgresql, e.g. "
                            "postgresql://paychan:${PGPASSWORD}@127.0.0.1/paychan")
    try:
        check_dsn(dsn)
    except ValueError as e:
        r.fail("store.dsn", f"not a PostgreSQL connection string ({e}); expected e.g. "
                            "postgresql://paychan:${PGPASSWORD}@127.0.0.1/paychan")
    return StoreConfig(engine, None, dsn, _timeouts(r, d))


def _timeouts(r: _Reader, d: dict[str, Any]) -> SessionTimeouts:
    """store.statement_timeout, lock_timeout, idle_in_transaction_session_timeout (seconds)."""
    defaults = SessionTimeouts()
    try:
        return SessionTimeouts(**{key: r.number(d, "store", key, getattr(defaults, key))
                                  for key in TIMEOUT_KEYS})
    except PolicyError as exc:
        r.fail(_join("store", exc.field), exc.detail)


def _bitcoind(r: _Reader, d: dict[str, Any], network: str, check_files: bool) -> BitcoindConfig:
    default_url = f"http://127.0.0.1:{DEFAULT_RPC_PORTS[network]}"
    url = r.guard(lambda: _bitcoind_url(r, d, network), default_url)
    credentials = r.guard(lambda: _credentials(r, d), None)
    user, password = credentials or (None, None)
    cookie = None
    if credentials == (None, None):  # the cookie file (not when the credentials are wrong)
        cookie = r.guard(lambda: _cookie_file(r, d, network, check_files), None)
    wallet = r.guard(lambda: r.optional_string(d, "bitcoind", "wallet", "paychan"), None)
    zmq = r.guard(lambda: _zmq(r, d), None)
    return BitcoindConfig(url=url, cookie_file=cookie, user=user, password=password,
                          wallet=wallet, zmq=zmq,
                          poll_interval=r.number(d, "bitcoind", "poll_interval", 5.0))


def _bitcoind_url(r: _Reader, d: dict[str, Any], network: str) -> str:
    url = r.string(d, "bitcoind", "url", f"http://127.0.0.1:{DEFAULT_RPC_PORTS[network]}")
    parts = urlsplit(url)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number, or out of range
        valid = False
    if not valid:
        r.fail("bitcoind.url", f"found {url!r}, expected an http:// or https:// URL like "
                               f"http://127.0.0.1:{DEFAULT_RPC_PORTS[network]}")
    return url


def _credentials(r: _Reader, d: dict[str, Any]) -> tuple[str | None, str | None]:
    """bitcoind.user and bitcoind.password: both, or neither (then the cookie file)."""
    user = r.optional_string(d, "bitcoind", "user", None)
    password = r.optional_string(d, "bitcoind", "password", None)
    if (user is None) != (password is None):
        given, missing = ("user", "password") if password is None else ("password", "user")
        r.fail(f"bitcoind.{missing}", f"missing, expected {missing} together with {given} "
                                      "(give both, or neither to use the cookie file)")
    if user is not None and d.get("cookie_file") is not None:
        r.fail("bitcoind.cookie_file", "found both cookie_file and user/password, expected "
                                       "one way to authenticate")
    return user, password


def _cookie_file(r: _Reader, d: dict[str, Any], network: str, check_files: bool) -> Path:
    cookie = r.path(d, "bitcoind", "cookie_file", str(default_cookie_file(network)), network)
    if check_files:
        r.check_file(lambda: _check_readable(r, "bitcoind.cookie_file", cookie))
    return cookie


def _zmq(r: _Reader, d: dict[str, Any]) -> str | None:
    zmq = r.optional_string(d, "bitcoind", "zmq", None)
    if zmq is not None and not _ZMQ.match(zmq):
        r.fail("bitcoind.zmq", f"found {zmq!r}, expected a ZMQ endpoint like "
                               "tcp://127.0.0.1:28332 (bitcoind's zmqpubhashblock)")
    return zmq


def _server(r: _Reader, d: dict[str, Any], network: str, check_files: bool) -> ServerConfig:
    s = ServerConfig(
        enabled=r.boolean(d, "server", "enabled", False),
        listen=r.address(d, "server", "listen", "127.0.0.1:4242"),
        policy=r.policy(d, "server", ServerPolicy),
        limits=r.policy(d, "server", PeerLimits, keys=LIMIT_KEYS),
        min_confirmations=r.integer(d, "server", "min_confirmations",
                                    0 if network == "regtest" else 1, minimum=0,
                                    nullable=True),
        payout_address=r.guard(lambda: _payout_address(r, d, network), None),
        tls_cert_file=r.guard(lambda: r.optional_path(d, "server", "tls_cert_file", network),
                              None),
        tls_key_file=r.guard(lambda: r.optional_path(d, "server", "tls_key_file", network),
                             None),
        websocket=r.guard(lambda: _websocket(r, d), None),
        proxies=r.guard(lambda: _proxies(r, d), TrustedProxies()),
        proxy_protocol=r.boolean(d, "server", "proxy_protocol", False),
    )
    if s.proxy_protocol and not s.proxies.networks:
        r.fail("server.proxy_protocol", "found true without server.trusted_proxies, expected "
                                        "the balancers' addresses there: only they may name "
                                        "a client")
    given = [key for key in ("tls_cert_file", "tls_key_file") if d.get(key) is not None]
    if len(given) == 1:
        missing = "tls_key_file" if given == ["tls_cert_file"] else "tls_cert_file"
        r.fail(f"server.{missing}", f"missing, expected {missing} together with {given[0]} "
                                    "(give both for TLS, or neither for plain TCP)")
    tls = s.tls
    if check_files and tls is not None:
        r.check_file(lambda: _check_tls(r, "server.tls_cert_file", tls.context))
    return s


def _payout_address(r: _Reader, d: dict[str, Any], network: str) -> str | None:
    address = r.optional_string(d, "server", "payout_address", None)
    if address is not None:
        try:
            address_to_script(address, Network.from_chain(network))
        except DecodeError as exc:
            r.fail("server.payout_address", f"found {address!r}, expected an address "
                                            f"of {network}: {exc}")
    return address


def _websocket(r: _Reader, d: dict[str, Any]) -> str | None:
    value = d.get("websocket")
    if value is None:
        return None
    if not isinstance(value, str) or "/" not in value:
        r.fail("server.websocket", f"found {_show(value)}, expected host:port/path (e.g. "
                                   "127.0.0.1:4244/paychan), or null for no WebSocket listener")
    r.address({"websocket": value.partition("/")[0]}, "server", "websocket", "")
    return value


def _proxies(r: _Reader, d: dict[str, Any]) -> TrustedProxies:
    """server.trusted_proxies (addresses, CIDR networks) and the header they set."""
    header = r.choice(d, "server", "proxy_header", TrustedProxies.header, HEADERS)
    raw = d.get("trusted_proxies")
    if raw is None:
        return TrustedProxies(header=header)
    if not isinstance(raw, list):
        r.fail("server.trusted_proxies", f"found {_show(raw)}, expected {PROXIES_EXPECTED}")
    try:
        return TrustedProxies.parse(raw, header)
    except PolicyError as exc:
        r.fail("server.trusted_proxies", exc.detail)


def _client(r: _Reader, d: dict[str, Any], network: str, check_files: bool) -> ClientConfig:
    raw = d.get("servers")
    servers: dict[str, str] = {}
    tls: dict[str, ClientTLS] = {}
    if raw is not None and not isinstance(raw, dict):
        r.wrong("client.servers", f"found {_show(raw)}, expected a mapping of "
                                  "name: host:port (or ws://host:port/path)", None)
    elif raw is not None:
        for name in raw:  # each server apart: one's mistake hides none of the others'
            r.guard(functools.partial(_client_server, r, raw, name, network, check_files,
                                      servers, tls), None)
    return ClientConfig(enabled=r.boolean(d, "client", "enabled", False), servers=servers,
                        policy=r.policy(d, "client", ClientPolicy), tls=tls)


def _client_server(r: _Reader, raw: dict[Any, Any], name: Any, network: str,
                   check_files: bool, servers: dict[str, str],
                   tls: dict[str, ClientTLS]) -> None:
    """One entry of client.servers, added to `servers` (and `tls`) when it is valid."""
    if not isinstance(name, str) or not name or ":" in name:
        r.fail("client.servers", f"found the name {_show(name)}, expected a name "
                                 "without ':' (e.g. shop)")
    entry, section, key = raw, "client.servers", name
    if isinstance(raw[name], dict):  # the address with how to trust its TLS
        entry, section, key = raw[name], f"client.servers.{name}", "address"
        r.check_keys(entry, section, SERVER_ENTRY_KEYS)
        if entry.get("address") is None:
            r.fail(f"{section}.address", "missing, expected the server's host:port "
                                         "(or wss:// URL) beside how to trust its TLS")
    address = _server_address(r, entry, section, key)
    if entry is not raw:
        trust = _client_tls(r, entry, section, network, check_files)
        if trust is not None:
            tls[address] = trust
    servers[name] = address


def _server_address(r: _Reader, d: dict[str, Any], section: str, name: str) -> str:
    """A server's host:port, or its ws:// (wss://) URL."""
    key = _join(section, name)
    value = d[name]
    if isinstance(value, str) and value.startswith(("ws://", "wss://")):
        return _websocket_url(r, key, value)
    address = r.address(d, section, name, "")
    if _split(address)[1] == 0:
        r.fail(key, f"found {address!r}, expected a server's host:port (port 1-65535)")
    return address


def server_address(value: str) -> str:
    """`value` if it is a server's host:port or ws:// (wss://) URL, as `client.servers`
    takes them; ValueError saying what was expected."""
    try:
        return _server_address(_Reader(None), {"server": value}, "", "server")
    except ConfigError:
        raise ValueError(f"bad server address {value!r}: expected a configured server's name, "
                         "host:port (port 1-65535) or ws://host:port/path") from None


def _cluster(r: _Reader, d: dict[str, Any]) -> ClusterPolicy:
    try:
        return ClusterPolicy(
            instance_id=r.guard(lambda: r.optional_string(d, "cluster", "instance_id", None),
                                None),
            takeover_after=r.number(d, "cluster", "takeover_after",
                                    ClusterPolicy.takeover_after))
    except PolicyError as exc:
        r.fail(_join("cluster", exc.field), exc.detail)


def _websocket_url(r: _Reader, key: str, value: str) -> str:
    """A server's ws:// (wss://) URL, with a host and a port."""
    url = urlsplit(value)
    try:
        port = url.port
    except ValueError:
        port = None
    if not url.hostname or not port:
        r.fail(key, f"found {value!r}, expected ws://host:port/path (port 1-65535)")
    return value


SERVER_ENTRY_KEYS = ("address", "tls", "ca_file", "fingerprint")


def _client_tls(r: _Reader, d: dict[str, Any], key: str, network: str, check_files: bool
                ) -> ClientTLS | None:
    """How to trust one server: `ca_file` and/or `fingerprint` (either means TLS), or
    `tls: true` alone for the system's CAs; None for plain TCP."""
    ca_file = r.optional_path(d, key, "ca_file", network)
    pin = r.optional_string(d, key, "fingerprint", None)
    wanted = r.boolean(d, key, "tls", ca_file is not None or pin is not None)
    if not wanted:
        if ca_file is not None or pin is not None:
            r.fail(f"{key}.tls", "found false beside ca_file/fingerprint, expected true (or "
                                 "remove ca_file and fingerprint for plain TCP)")
        return None
    try:
        trust = ClientTLS(ca_file, pin)
    except PolicyError as exc:
        r.fail(f"{key}.{exc.field}", exc.detail)
    if check_files:
        r.check_file(lambda: _check_tls(r, f"{key}.ca_file", trust.context))
    return trust


def _check_tls(r: _Reader, key: str, context: Callable[[], object]) -> None:
    """A TLS context can be built from the files the configuration names."""
    try:
        context()
    except TLSError as exc:
        r.fail(key, str(exc), file=True)


def _logging(r: _Reader, d: dict[str, Any], network: str) -> LoggingConfig:
    return LoggingConfig(
        level=r.choice(d, "logging", "level", "info", LEVELS),
        format=r.choice(d, "logging", "format", "human", FORMATS),
        file=r.guard(lambda: r.optional_path(d, "logging", "file", network), None),
        levels=_subsystem_levels(r, d.get("levels")),
    )


def _subsystem_levels(r: _Reader, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.fail("logging.levels", f"found {_show(raw)}, expected a mapping of subsystem: level "
                                 "(e.g. watcher: debug)")
    known = [name for name in raw if name in SUBSYSTEMS]
    for name in raw:
        if name not in SUBSYSTEMS:
            r.wrong("logging.levels", f"found the subsystem {_show(name)}, expected one of: "
                                      f"{', '.join(SUBSYSTEMS)}", None)
    return {name: r.choice(raw, "logging.levels", name, "info", LEVELS) for name in known}


def _control(r: _Reader, d: dict[str, Any], network: str) -> ControlConfig:
    listen = r.address(d, "control", "listen", "127.0.0.1:4243")
    host = _split(listen)[0]
    if not _is_loopback(host):
        r.wrong("control.listen", f"found host {host!r}, expected a loopback address "
                                  "(127.0.0.1, ::1 or localhost): the control API is local "
                                  "only", None)
    cookie_file = r.guard(lambda: r.path(d, "control", "cookie_file",
                                         "~/.paychan/<network>/control.cookie", network),
                          Path(os.devnull))
    return ControlConfig(listen=listen, cookie_file=cookie_file,
                         cookie_mode=r.guard(lambda: _cookie_mode(
                             r, d.get("cookie_mode", COOKIE_MODES[0])), COOKIE_MODES[0]),
                         cookie_group=r.guard(lambda: r.optional_string(
                             d, "control", "cookie_group", None), None))


def _cookie_mode(r: _Reader, value: Any) -> int:
    """0600 or 0640: a YAML octal number (0640), or a string of octal digits ("0640")."""
    mode = value
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{3}", value):
        mode = int(value.replace("o", ""), 8)
    if isinstance(mode, bool) or mode not in COOKIE_MODES:
        r.fail("control.cookie_mode", f"found {_show(value)}, expected 0600 (the daemon's user "
                                      "only) or 0640 (and control.cookie_group); others must "
                                      "never read it: the control API moves money")
    return int(mode)


def _metrics(r: _Reader, d: dict[str, Any]) -> MetricsConfig:
    return MetricsConfig(enabled=r.boolean(d, "metrics", "enabled", False),
                         listen=r.address(d, "metrics", "listen", "127.0.0.1:9451"))


def _cross_checks(r: _Reader, c: Config) -> None:
    margin, window = c.scheduler.policy.settle_margin, c.server.policy.min_time_window
    if c.server.enabled and margin >= window:
        r.fail("scheduler.settle_margin",
               f"found {margin}, expected less than server.min_time_window ({window}), or "
               "channels would be settled as they open")
    listeners = [("control.listen", c.control.listen)]
    if c.server.enabled:
        listeners.append(("server.listen", c.server.listen))
        if c.server.websocket_address:
            listeners.append(("server.websocket", c.server.websocket_address[0]))
    if c.metrics.enabled:
        listeners.append(("metrics.listen", c.metrics.listen))
    seen: dict[tuple[str, int], str] = {}
    for key, address in listeners:
        host, port = _split(address)
        if port and (host, port) in seen:
            r.fail(key, f"found {address!r}, already used by {seen[host, port]}; expected a "
                        "different port")
        seen[host, port] = key


def _check_readable(r: _Reader, key: str, path: Path) -> None:
    if not path.exists():
        r.fail(key, f"found {str(path)!r}, which does not exist; expected bitcoind's cookie "
                    "file (is bitcoind running with this datadir and network?)", file=True)
    if not path.is_file():
        r.fail(key, f"found {str(path)!r}, which is not a file; expected bitcoind's cookie file",
               file=True)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        r.fail(key, f"found {str(path)!r}, which cannot be read ({exc.strerror}); expected a "
                    "readable cookie (rpccookieperms=group in bitcoin.conf, this user in "
                    "bitcoind's group)", file=True)


# -- typed access with precise errors -----------------------------------------------------------


class _Problem(ConfigError):
    """One problem with one key; `file` problems (a cookie, a certificate that cannot be
    read) are reported after the schema's."""

    def __init__(self, key: str, message: str, file: bool = False) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.file = key, file


class _Reader:
    """Reads typed values out of parsed YAML; every failure names file, key and expectation.
    A value of the wrong kind is noted (`problems`) and its default used, so that one pass
    finds every problem; `fail` gives up what is being read: a key inside `guard` (the
    section goes on), else the section in hand (its defaults are used)."""

    def __init__(self, source: Path | None, lines: Mapping[str, int] | None = None) -> None:
        self.source = source
        self.where = _label(source)
        self.lines = lines or {}
        self.problems: list[_Problem] = []
        self.fallback = False  # building a section from defaults after a problem

    def defaults(self, build: Callable[[], _T]) -> _T:
        """What `build` makes of defaults alone (no files checked, nothing noted)."""
        problems, self.problems, self.fallback = self.problems, [], True
        try:
            return build()
        finally:
            self.problems, self.fallback = problems, False

    def fail(self, key: str, message: str, *, file: bool = False) -> NoReturn:
        raise _Problem(key, message, file)

    def check_file(self, check: Callable[[], None]) -> None:
        """Run a check of a file; its problem is noted and the section goes on."""
        self.guard(check, None)

    def wrong(self, key: str, message: str, default: _V) -> _V:
        """Note a problem with `key` and go on with `default`."""
        self.problems.append(_Problem(key, message))
        return default

    def raise_errors(self) -> None:
        """One ConfigError for every problem noted: the schema's in file order, then the
        files'; each line names the file and the key."""
        if not self.problems:
            return
        ordered = sorted(self.problems, key=lambda p: (p.file, self._line(p.key)))
        raise ConfigError("\n".join(f"{self.where}: {p}" for p in ordered))

    def _line(self, key: str) -> float:
        """The line of `key` (or of its closest enclosing key) in the file."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0]
        return float("inf")

    def substitute(self, value: Any, key: str) -> Any:
        """`${NAME}` in every string value → the environment variable NAME."""
        if isinstance(value, Mapping):
            return {k: self.substitute(v, _join(key, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                return self.wrong(key, f"found ${{{name}}}, expected ${{NAME}} with NAME an "
                                       "environment variable name", match.group(0))
            if name not in os.environ:
                return self.wrong(key, f"environment variable {name} is not set, expected "
                                       f"it to be set for ${{{name}}}", match.group(0))
            return os.environ[name]

        return _ENV.sub(lookup, value)

    def check_keys(self, data: Mapping[str, Any], prefix: str, known: tuple[str, ...]) -> None:
        for name in data:
            if name in known:
                continue
            key = _join(prefix, str(name))
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {_join(prefix, close[0])!r}? " if close else ""
            self.wrong(key, f"unknown key; {hint}expected one of: {', '.join(known)}", None)

    def section(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(name, f"found {_show(value)}, expected a mapping of settings")
        self.check_keys(value, name, section_keys(name))
        return value

    def policy(self, d: Mapping[str, Any], section: str, cls: type[_P],
               keys: Mapping[str, str] | None = None, **given: Any) -> _P:
        """Policy `cls` built from the section's keys (`keys`, or POLICY_KEYS). Absent keys
        take the policy's defaults; its own rules reject values, reported under the keys'
        names. Each bad key is noted and left out (its default used), so that every bad key
        is reported; the policy is built from the valid ones only."""
        keys = POLICY_KEYS[section] if keys is None else keys
        names = {name: _join(section, key) for key, name in keys.items()}
        values: dict[str, Any] = {}
        for key, name in keys.items():
            value = d.get(key)
            if value is None and (key not in d or _join(section, key) in NULL_IS_DEFAULT):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                self.wrong(names[name], f"found {_show(value)}, expected an integer", None)
                continue
            values[name] = value
        while True:  # each rule broken: noted under its key, whose value is then left out
            try:
                return cls(**values, **given)
            except PolicyError as exc:
                if not values:  # the defaults themselves (with `given`) break a rule
                    self.fail(names.get(exc.field, _join(section, exc.field)), exc.detail)
                detail = re.sub(r"\b(" + "|".join(names) + r")\b", lambda m: names[m[1]],
                                exc.detail)
                spelled = d.get(next((k for k, n in keys.items() if n == exc.field), ""))
                if isinstance(spelled, _Int):  # as written: 0644, not 420
                    detail = detail.replace(f"found {int(spelled)}", f"found {spelled.written}")
                self.wrong(names.get(exc.field, _join(section, exc.field)), detail, None)
                if exc.field in values:
                    del values[exc.field]
                else:  # a rule of a field no key sets: the defaults then
                    values.clear()

    def guard(self, read: Callable[[], _T], default: _T) -> _T:
        """`read` one key (or keys that stand or fall together); its problem is noted and
        `default` used, so that the section goes on to its other keys."""
        try:
            return read()
        except _Problem as problem:
            self.problems.append(problem)
            return default

    def integer(self, d: Mapping[str, Any], section: str, name: str, default: int, *,
                minimum: int = 1, maximum: int | None = None, nullable: bool = False) -> int:
        """An int (never a bool); with `nullable`, null means the default."""
        key = _join(section, name)
        value = d.get(name, default)
        if value is None and nullable:
            return default
        expected = f"an integer ≥ {minimum}" + (f" and ≤ {maximum}" if maximum else "")
        expected += " (or null for the default)" if nullable else ""
        if isinstance(value, bool) or not isinstance(value, int):
            return self.wrong(key, f"found {_show(value)}, expected {expected}", default)
        if value < minimum or (maximum is not None and value > maximum):
            return self.wrong(key, f"found {_show(value, kind=False)}, expected {expected}",
                              default)
        return value

    def number(self, d: Mapping[str, Any], section: str, name: str, default: float) -> float:
        value = d.get(name, default)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value < float("inf")):
            return self.wrong(_join(section, name), f"found {_show(value)}, expected a number "
                                                    "of seconds > 0", default)
        return float(value)

    def boolean(self, d: Mapping[str, Any], section: str, name: str, default: bool) -> bool:
        value = d.get(name, default)
        if not isinstance(value, bool):
            return self.wrong(_join(section, name), f"found {_show(value)}, expected true or "
                                                    "false", default)
        return value

    def string(self, d: Mapping[str, Any], section: str, name: str, default: str) -> str:
        value = d.get(name, default)
        if not isinstance(value, str) or not value:
            self.fail(_join(section, name), f"found {_show(value)}, expected a non-empty string")
        return value

    def optional_string(self, d: Mapping[str, Any], section: str, name: str,
                        default: str | None) -> str | None:
        """A string, or None where the key is null (or absent and the default is None)."""
        value = d.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(_join(section, name), f"found {_show(value)}, expected a non-empty "
                                            "string or null")
        return value

    def choice(self, d: Mapping[str, Any], section: str, name: str, default: str,
               choices: tuple[str, ...]) -> str:
        value = d.get(name, default)
        if not isinstance(value, str) or value not in choices:
            return self.wrong(_join(section, name), f"found {_show(value)}, expected one of: "
                                                    f"{', '.join(choices)}", default)
        return value

    def address(self, d: Mapping[str, Any], section: str, name: str, default: str) -> str:
        """host:port; a bad one is noted and the default used (without a default, the
        section is given up)."""
        key = _join(section, name)
        value = d.get(name, default)
        expected = "host:port (e.g. 127.0.0.1:4242 or [::1]:4242; port 0-65535)"
        problem = f"found {_show(value)}, expected {expected}"
        if isinstance(value, str):
            problem = f"found {value!r}, expected {expected}"
            try:
                host, port = _split(value)
            except ValueError:
                pass
            else:
                if (_is_ip(host) or _HOSTNAME.match(host)) and port <= 65535:
                    return value
        if not default:
            self.fail(key, problem)
        return self.wrong(key, problem, default)

    def path(self, d: Mapping[str, Any], section: str, name: str, default: str,
             network: str) -> Path:
        return self._path(self.string(d, section, name, default), network)

    def optional_path(self, d: Mapping[str, Any], section: str, name: str,
                      network: str) -> Path | None:
        value = self.optional_string(d, section, name, None)
        return None if value is None else self._path(value, network)

    def _path(self, value: str, network: str) -> Path:
        """`<network>` substituted, `~` expanded, relative to the configuration's directory."""
        path = Path(value.replace("<network>", network)).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Int(int):
    """An integer written otherwise than in decimal (`0644`, `0x10`, `1_000`): errors show
    it as written."""

    written: str


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    if node.value == str(value):
        return value
    spelled = _Int(value)
    spelled.written = node.value
    return spelled


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Each key path of a composed YAML document → the line it is on (1-based)."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = _join(prefix, str(key_node.value))
            lines.setdefault(key, key_node.start_mark.line + 1)
            for inner, line in _key_lines(value_node, key).items():
                lines.setdefault(inner, line)
    return lines


# -- small helpers -------------------------------------------------------------------------------


def _label(source: Path | None) -> str:
    return str(source) if source is not None else "configuration"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value: Any, kind: bool = True) -> str:
    """A found value as the file spells it (`0644`, not 420), with its kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        written = value.written if isinstance(value, _Int) else str(value)
        return f"{written} (a number)" if kind else written
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r} ({type(value).__name__})"


def _split(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port); ValueError if it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(address)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host or not _is_ip(host):
            raise ValueError(address)
    elif ":" in host:
        raise ValueError(address)  # a bare IPv6 address needs brackets
    if not host:
        raise ValueError(address)
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _yaml_error(exc: yaml.YAMLError) -> str:
    """'at line L, column C: problem (context that starts at line K)', 1-based as editors."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = problem
    mark = problem_mark or context_mark
    if mark is not None:
        text = f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if context:
        text += f" ({context}"
        if context_mark is not None and context_mark is not mark:
            text += f" that starts at line {context_mark.line + 1}"
        text += ")"
    return text

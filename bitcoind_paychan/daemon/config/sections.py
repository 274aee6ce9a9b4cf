"""The section builders: bitcoind, store, logging, control, metrics and cluster, and the
checks across sections (the server and client roles: roles.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bitcoind_paychan.channel.reanchor import REANCHOR_LEAD
from bitcoind_paychan.daemon.config.keys import TIMEOUT_KEYS
from bitcoind_paychan.daemon.config.reader import Reader
from bitcoind_paychan.daemon.config.schema import (
    COOKIE_MODES,
    FORMATS,
    LEVELS,
    BitcoindConfig,
    Config,
    ControlConfig,
    LoggingConfig,
    MetricsConfig,
    StoreConfig,
    default_cookie_file,
)
from bitcoind_paychan.daemon.config.values import host_port, is_loopback, join
from bitcoind_paychan.daemon.config.yamlfile import show
from bitcoind_paychan.daemon.logs import SUBSYSTEMS
from bitcoind_paychan.errors import PolicyError
from bitcoind_paychan.node.config import DEFAULT_RPC_PORTS
from bitcoind_paychan.store import ENGINES, SessionTimeouts
from bitcoind_paychan.store.leases import ClusterPolicy
from bitcoind_paychan.store.postgres import check_dsn

_ZMQ = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):\d+|ipc://\S+)$")


def read_store(r: Reader, d: dict[str, Any], network: str) -> StoreConfig:
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
        r.fail("store.dsn", f"found {'nothing' if dsn is None else show(dsn)}, expected "
                            "a PostgreSQL connection string for engine postgresql, e.g. "
                            "postgresql://paychan:${PGPASSWORD}@127.0.0.1/paychan")
    try:
        check_dsn(dsn)
    except ValueError as e:
        r.fail("store.dsn", f"not a PostgreSQL connection string ({e}); expected e.g. "
                            "postgresql://paychan:${PGPASSWORD}@127.0.0.1/paychan")
    return StoreConfig(engine, None, dsn, _timeouts(r, d))


def _timeouts(r: Reader, d: dict[str, Any]) -> SessionTimeouts:
    """store.statement_timeout, lock_timeout, idle_in_transaction_session_timeout (seconds)."""
    defaults = SessionTimeouts()
    try:
        return SessionTimeouts(**{key: r.number(d, "store", key, getattr(defaults, key))
                                  for key in TIMEOUT_KEYS})
    except PolicyError as exc:
        r.fail(join("store", exc.field), exc.detail)


def read_bitcoind(r: Reader, d: dict[str, Any], network: str, check_files: bool) -> BitcoindConfig:
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


def _bitcoind_url(r: Reader, d: dict[str, Any], network: str) -> str:
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


def _credentials(r: Reader, d: dict[str, Any]) -> tuple[str | None, str | None]:
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


def _cookie_file(r: Reader, d: dict[str, Any], network: str, check_files: bool) -> Path:
    cookie = r.path(d, "bitcoind", "cookie_file", str(default_cookie_file(network)), network)
    if check_files:
        r.check_file(lambda: _check_readable(r, "bitcoind.cookie_file", cookie))
    return cookie


def _zmq(r: Reader, d: dict[str, Any]) -> str | None:
    zmq = r.optional_string(d, "bitcoind", "zmq", None)
    if zmq is not None and not _ZMQ.match(zmq):
        r.fail("bitcoind.zmq", f"found {zmq!r}, expected a ZMQ endpoint like "
                               "tcp://127.0.0.1:28332 (bitcoind's zmqpubhashblock)")
    return zmq


def read_cluster(r: Reader, d: dict[str, Any]) -> ClusterPolicy:
    try:
        return ClusterPolicy(
            instance_id=r.guard(lambda: r.optional_string(d, "cluster", "instance_id", None),
                                None),
            takeover_after=r.number(d, "cluster", "takeover_after",
                                    ClusterPolicy.takeover_after))
    except PolicyError as exc:
        r.fail(join("cluster", exc.field), exc.detail)


def read_logging(r: Reader, d: dict[str, Any], network: str) -> LoggingConfig:
    return LoggingConfig(
        level=r.choice(d, "logging", "level", "info", LEVELS),
        format=r.choice(d, "logging", "format", "human", FORMATS),
        file=r.guard(lambda: r.optional_path(d, "logging", "file", network), None),
        levels=_subsystem_levels(r, d.get("levels")),
    )


def _subsystem_levels(r: Reader, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.fail("logging.levels", f"found {show(raw)}, expected a mapping of subsystem: level "
                                 "(e.g. watcher: debug)")
    known = [name for name in raw if name in SUBSYSTEMS]
    for name in raw:
        if name not in SUBSYSTEMS:
            r.wrong("logging.levels", f"found the subsystem {show(name)}, expected one of: "
                                      f"{', '.join(SUBSYSTEMS)}", None)
    return {name: r.choice(raw, "logging.levels", name, "info", LEVELS) for name in known}


def read_control(r: Reader, d: dict[str, Any], network: str) -> ControlConfig:
    listen = r.address(d, "control", "listen", "127.0.0.1:4243")
    host = host_port(listen)[0]
    if not is_loopback(host):
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


def _cookie_mode(r: Reader, value: Any) -> int:
    """0600 or 0640: a YAML octal number (0640), or a string of octal digits ("0640")."""
    mode = value
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{3}", value):
        mode = int(value.replace("o", ""), 8)
    if isinstance(mode, bool) or mode not in COOKIE_MODES:
        r.fail("control.cookie_mode", f"found {show(value)}, expected 0600 (the daemon's user "
                                      "only) or 0640 (and control.cookie_group); others must "
                                      "never read it: the control API moves money")
    return int(mode)


def read_metrics(r: Reader, d: dict[str, Any]) -> MetricsConfig:
    return MetricsConfig(enabled=r.boolean(d, "metrics", "enabled", False),
                         listen=r.address(d, "metrics", "listen", "127.0.0.1:9451"))


def cross_checks(r: Reader, c: Config) -> None:
    margin, window = c.scheduler.policy.settle_margin, c.server.policy.min_time_window
    if c.server.enabled and margin >= window:
        r.fail("scheduler.settle_margin",
               f"found {margin}, expected less than server.min_time_window ({window}), or "
               "channels would be settled as they open")
    renew, soonest = c.server.policy.renew_before, margin + REANCHOR_LEAD
    if c.server.enabled and renew and renew <= soonest:
        r.fail("server.renew_before",
               f"found {renew}, expected more than {soonest} s (scheduler.settle_margin, "
               f"{margin} s, plus an hour for R to confirm), or no renewal could be quoted")
    listeners = [("control.listen", c.control.listen)]
    if c.server.enabled:
        listeners.append(("server.listen", c.server.listen))
        if c.server.websocket_address:
            listeners.append(("server.websocket", c.server.websocket_address[0]))
    if c.metrics.enabled:
        listeners.append(("metrics.listen", c.metrics.listen))
    if c.gateway.enabled:
        _check_gateway(r, c)
        listeners.append(("gateway.listen", c.gateway.listen))
    seen: dict[tuple[str, int], str] = {}
    for key, address in listeners:
        host, port = host_port(address)
        if port and (host, port) in seen:
            r.fail(key, f"found {address!r}, already used by {seen[host, port]}; expected a "
                        "different port")
        seen[host, port] = key


def _check_gateway(r: Reader, c: Config) -> None:
    """The gateway runs on the server role's channels, each payment at least its minimum."""
    if not c.server.enabled:
        r.fail("gateway.enabled", "found true without server.enabled, expected the server "
                                  "role enabled too: the gateway's channels are the server's")
    least = c.server.policy.min_increment
    for index, route in enumerate(c.gateway.routes):
        if not route.price.free and route.price.needed < least:
            name = "reserve" if route.price.reserve else "price"
            r.fail(f"gateway.routes[{index}].{name}",
                   f"found {route.price.needed}, expected at least server.min_increment "
                   f"({least}): a smaller payment is refused")


def _check_readable(r: Reader, key: str, path: Path) -> None:
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

"""The server and client sections: listeners, TLS, proxies, payout; the servers a client
pays and how it trusts them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from bitcoind_paychan.bitcoin.address import address_to_script
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.daemon.config.keys import (
    LIMIT_KEYS,
    SERVER_ENTRY_KEYS,
)
from bitcoind_paychan.daemon.config.reader import Reader
from bitcoind_paychan.daemon.config.schema import (
    ClientConfig,
    ServerConfig,
)
from bitcoind_paychan.daemon.config.values import host_port, join
from bitcoind_paychan.daemon.config.yamlfile import show
from bitcoind_paychan.errors import ConfigError, DecodeError, PolicyError, TLSError
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.proxies import EXPECTED as PROXIES_EXPECTED
from bitcoind_paychan.transport.proxies import HEADERS, TrustedProxies
from bitcoind_paychan.transport.tls import ClientTLS


def read_server(r: Reader, d: dict[str, Any], network: str, check_files: bool) -> ServerConfig:
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


def _payout_address(r: Reader, d: dict[str, Any], network: str) -> str | None:
    address = r.optional_string(d, "server", "payout_address", None)
    if address is not None:
        try:
            address_to_script(address, Network.from_chain(network))
        except DecodeError as exc:
            r.fail("server.payout_address", f"found {address!r}, expected an address "
                                            f"of {network}: {exc}")
    return address


def _websocket(r: Reader, d: dict[str, Any]) -> str | None:
    value = d.get("websocket")
    if value is None:
        return None
    if not isinstance(value, str) or "/" not in value:
        r.fail("server.websocket", f"found {show(value)}, expected host:port/path (e.g. "
                                   "127.0.0.1:4244/paychan), or null for no WebSocket listener")
    r.address({"websocket": value.partition("/")[0]}, "server", "websocket", "")
    return value


def _proxies(r: Reader, d: dict[str, Any]) -> TrustedProxies:
    """server.trusted_proxies (addresses, CIDR networks) and the header they set."""
    header = r.choice(d, "server", "proxy_header", TrustedProxies.header, HEADERS)
    raw = d.get("trusted_proxies")
    if raw is None:
        return TrustedProxies(header=header)
    if not isinstance(raw, list):
        r.fail("server.trusted_proxies", f"found {show(raw)}, expected {PROXIES_EXPECTED}")
    try:
        return TrustedProxies.parse(raw, header)
    except PolicyError as exc:
        r.fail("server.trusted_proxies", exc.detail)


def read_client(r: Reader, d: dict[str, Any], network: str, check_files: bool) -> ClientConfig:
    raw = d.get("servers")
    servers: dict[str, str] = {}
    tls: dict[str, ClientTLS] = {}
    if raw is not None and not isinstance(raw, dict):
        r.wrong("client.servers", f"found {show(raw)}, expected a mapping of "
                                  "name: host:port (or ws://host:port/path)", None)
    elif raw is not None:
        for name in raw:  # each server apart: one's mistake hides none of the others'
            r.guard(functools.partial(_client_server, r, raw, name, network, check_files,
                                      servers, tls), None)
    return ClientConfig(enabled=r.boolean(d, "client", "enabled", False), servers=servers,
                        policy=r.policy(d, "client", ClientPolicy), tls=tls)


def _client_server(r: Reader, raw: dict[Any, Any], name: Any, network: str,
                   check_files: bool, servers: dict[str, str],
                   tls: dict[str, ClientTLS]) -> None:
    """One entry of client.servers, added to `servers` (and `tls`) when it is valid."""
    if not isinstance(name, str) or not name or ":" in name:
        r.fail("client.servers", f"found the name {show(name)}, expected a name "
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


def _server_address(r: Reader, d: dict[str, Any], section: str, name: str) -> str:
    """A server's host:port, or its ws:// (wss://) URL."""
    key = join(section, name)
    value = d[name]
    if isinstance(value, str) and value.startswith(("ws://", "wss://")):
        return _websocket_url(r, key, value)
    address = r.address(d, section, name, "")
    if host_port(address)[1] == 0:
        r.fail(key, f"found {address!r}, expected a server's host:port (port 1-65535)")
    return address


def server_address(value: str) -> str:
    """`value` if it is a server's host:port or ws:// (wss://) URL, as `client.servers`
    takes them; ValueError saying what was expected."""
    try:
        return _server_address(Reader(None), {"server": value}, "", "server")
    except ConfigError:
        raise ValueError(f"bad server address {value!r}: expected a configured server's name, "
                         "host:port (port 1-65535) or ws://host:port/path") from None


def _websocket_url(r: Reader, key: str, value: str) -> str:
    """A server's ws:// (wss://) URL, with a host and a port."""
    url = urlsplit(value)
    try:
        port = url.port
    except ValueError:
        port = None
    if not url.hostname or not port:
        r.fail(key, f"found {value!r}, expected ws://host:port/path (port 1-65535)")
    return value


def _client_tls(r: Reader, d: dict[str, Any], key: str, network: str, check_files: bool
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


def _check_tls(r: Reader, key: str, context: Callable[[], object]) -> None:
    """A TLS context can be built from the files the configuration names."""
    try:
        context()
    except TLSError as exc:
        r.fail(key, str(exc), file=True)

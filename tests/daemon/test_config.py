"""The daemon's YAML configuration: defaults, a full round trip, and every way to get it wrong."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.daemon.config import Config, config_from_dict, load_config
from bitcoind_paychan.errors import ConfigError
from bitcoind_paychan.node.config import NodeConfig
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS
from tests.transport.certs import CertFactory

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
HOME = Path("~").expanduser()


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "paychan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def error_of(path: Path, **kwargs: bool) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return str(caught.value)


# -- defaults ------------------------------------------------------------------------------------


def test_no_file_means_regtest_defaults_beside_a_local_node() -> None:
    config = load_config(None)
    assert config.source is None
    assert config.network == "regtest"
    assert config.bitcoind.url == "http://127.0.0.1:18443"
    assert config.bitcoind.cookie_file == HOME / ".bitcoin" / "regtest" / ".cookie"
    assert (config.bitcoind.user, config.bitcoind.password) == (None, None)
    assert config.bitcoind.wallet == "paychan"
    assert config.bitcoind.zmq is None
    assert config.bitcoind.poll_interval == 5
    assert not config.server.enabled and not config.client.enabled
    assert config.server.listen == "127.0.0.1:4242"
    assert config.server.min_confirmations == 0
    assert config.client.servers == {}
    assert config.store.path == HOME / ".paychan" / "regtest" / "channels.db"
    assert config.watch_policy().settle_margin == 7200
    assert (config.fees.target, config.fees.min_rate, config.fees.max_rate) == (6, 1, 200)
    assert (config.logging.level, config.logging.format, config.logging.file) == (
        "info", "human", None)
    assert config.control.listen == "127.0.0.1:4243"
    assert config.control.cookie_file == HOME / ".paychan" / "regtest" / "control.cookie"
    assert not config.metrics.enabled and config.metrics.listen == "127.0.0.1:9451"


def test_defaults_build_the_runtime_objects_with_their_own_defaults() -> None:
    config = load_config(None)
    assert config.server_policy() == ServerPolicy()
    assert config.watch_policy() == WatchPolicy()
    assert config.client_policy("127.0.0.1:4242") == ClientPolicy(value=1_000_000)
    assert config.node_config() == NodeConfig(
        url="http://127.0.0.1:18443", chain="regtest", wallet="paychan",
        cookie_file=HOME / ".bitcoin" / "regtest" / ".cookie")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    config = load_config(path)
    assert config.source == path
    assert config == dataclasses.replace(load_config(None), source=path)


@pytest.mark.parametrize(("network", "port", "cookie", "confirmations"), [
    ("main", 8332, ".bitcoin/.cookie", 1),
    ("test", 18332, ".bitcoin/testnet3/.cookie", 1),
    ("testnet4", 48332, ".bitcoin/testnet4/.cookie", 1),
    ("signet", 38332, ".bitcoin/signet/.cookie", 1),
    ("regtest", 18443, ".bitcoin/regtest/.cookie", 0),
])
def test_defaults_follow_the_network(network: str, port: int, cookie: str,
                                     confirmations: int) -> None:
    config = config_from_dict({"network": network})
    assert config.bitcoind.url == f"http://127.0.0.1:{port}"
    assert config.bitcoind.cookie_file == HOME / cookie
    assert config.server.min_confirmations == confirmations
    assert config.store.path == HOME / ".paychan" / network / "channels.db"
    assert config.control.cookie_file == HOME / ".paychan" / network / "control.cookie"
    assert config.node_config().chain == network


def test_null_sections_and_null_derived_values_take_the_defaults() -> None:
    config = config_from_dict({"server": None, "scheduler": {"settle_margin": None},
                               "fees": {"target": 12}})
    assert config.server == load_config(None).server
    assert config.watch_policy().settle_margin == 2 * 12 * 600  # twice the fee target's time


# -- a full file, round trip -------------------------------------------------------------------

FULL = """\
    network: signet
    bitcoind:
      url: http://10.0.0.5:38332
      user: paychan
      password: hunter2
      wallet: shop
      zmq: tcp://10.0.0.5:28332
      poll_interval: 2.5
    server:
      enabled: true
      listen: 0.0.0.0:4242
      min_channel_size: 200000
      min_payment: 2000
      min_increment: 100
      min_time_window: 21600
      max_time_window: 172800
      min_confirmations: 2
    client:
      enabled: true
      servers:
        shop: shop.example.com:4242
        v6: "[::1]:4242"
      channel_size: 500000
      time_window: 43200
      max_min_payment: 5000
    store:
      path: /var/lib/paychan/<network>/channels.db
    scheduler:
      settle_margin: 10800
      forget_depth: 3
      bump_after_blocks: 4
      review_interval: 30
    fees:
      target: 3
      min_rate: 2
      max_rate: 80
    logging:
      level: debug
      format: json
      file: logs/paychan.log
    control:
      listen: "[::1]:5000"
      cookie_file: /run/paychan/control.cookie
    metrics:
      enabled: true
      listen: 0.0.0.0:9999
"""


def test_a_full_file_feeds_every_runtime_object(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(str(path))
    assert isinstance(config, Config) and config.source == path
    assert config.node_config() == NodeConfig(
        url="http://10.0.0.5:38332", chain="signet", wallet="shop", cookie_file=None,
        user="paychan", password="hunter2")
    assert config.server_policy() == ServerPolicy(
        min_channel_size=200_000, min_payment=2_000, min_time_window=21_600,
        max_time_window=172_800, min_increment=100, settle_margin=10_800)  # the scheduler's
    assert config.client_policy("shop") == ClientPolicy(
        value=500_000, time_window=43_200, max_min_payment=5_000)
    assert config.watch_policy() == WatchPolicy(
        settle_margin=10_800, forget_depth=3, bump_after_blocks=4,
        fees=FeePolicy(target=3, min_rate=2, max_rate=80))
    assert config.fees is config.watch_policy().fees  # one fee policy, built once
    assert (config.fees.floor, config.fees.cap) == (2_000, 80_000)
    assert config.server.min_confirmations == 2 and config.server.listen == "0.0.0.0:4242"
    assert config.client.servers == {"shop": "shop.example.com:4242", "v6": "[::1]:4242"}
    assert config.bitcoind.zmq == "tcp://10.0.0.5:28332"
    for zmq in ("tcp://[::1]:28332", "ipc:///run/bitcoind/zmq.sock"):
        assert config_from_dict({"bitcoind": {"zmq": zmq}}).bitcoind.zmq == zmq
    assert config.bitcoind.poll_interval == 2.5
    assert config.scheduler.review_interval == 30
    assert config.store.path == Path("/var/lib/paychan/signet/channels.db")
    assert config.logging == type(config.logging)("debug", "json", tmp_path / "logs/paychan.log")
    assert config.control.listen == "[::1]:5000"
    assert config.control.cookie_file == Path("/run/paychan/control.cookie")
    assert config.metrics.enabled and config.metrics.listen == "0.0.0.0:9999"
    assert "hunter2" not in repr(config)


def test_client_policy_for_an_unknown_server_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.client_policy("10.1.1.1:4242").value == 500_000  # an address is fine
    with pytest.raises(ConfigError, match=r"client\.servers: no server named 'cafe'.*shop, v6"):
        config.client_policy("cafe")


# -- env substitution and paths -------------------------------------------------------------


def test_environment_variables_are_substituted_in_strings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYCHAN_RPC_PASSWORD", "s3cret")
    monkeypatch.setenv("RPC_HOST", "10.9.8.7")
    monkeypatch.setenv("PAYCHAN_DIR", "/srv/paychan")
    path = write(tmp_path, """\
        bitcoind:
          url: http://${RPC_HOST}:18443
          user: paychan
          password: ${PAYCHAN_RPC_PASSWORD}
        store:
          path: ${PAYCHAN_DIR}/<network>.db
        client:
          servers:
            shop: ${RPC_HOST}:4242
    """)
    config = load_config(path)
    assert config.bitcoind.password == "s3cret"
    assert config.bitcoind.url == "http://10.9.8.7:18443"
    assert config.store.path == Path("/srv/paychan/regtest.db")
    assert config.client.servers["shop"] == "10.9.8.7:4242"


def test_an_unset_environment_variable_names_variable_key_and_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYCHAN_NOT_SET", raising=False)
    path = write(tmp_path, "bitcoind:\n  user: u\n  password: ${PAYCHAN_NOT_SET}\n")
    message = error_of(path)
    assert str(path) in message
    assert "bitcoind.password" in message
    assert "PAYCHAN_NOT_SET is not set" in message


def test_a_malformed_reference_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "bitcoind:\n  wallet: ${1-bad}\n"))
    assert "bitcoind.wallet" in message and "${NAME}" in message


def test_home_is_expanded_in_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, """\
        network: testnet4
        bitcoind: {cookie_file: ~/node/.cookie}
        store: {path: ~/data/<network>/channels.db}
        logging: {file: ~/log/paychan.log}
        control: {cookie_file: ~/control.cookie}
    """)
    config = load_config(path)
    home = tmp_path / "home"
    assert config.bitcoind.cookie_file == home / "node/.cookie"
    assert config.store.path == home / "data/testnet4/channels.db"
    assert config.logging.file == home / "log/paychan.log"
    assert config.control.cookie_file == home / "control.cookie"
    assert load_config(None).store.path == home / ".paychan/regtest/channels.db"


def test_the_config_path_itself_may_start_with_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path, "network: signet\n")
    assert load_config("~/paychan.yaml").network == "signet"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "store: {path: data/channels.db}\n"))
    assert config.store.path == tmp_path / "data/channels.db"


# -- every way to get it wrong ---------------------------------------------------------------

BAD = [
    # unknown keys, with the closest known key suggested
    ("netwrok: main", "netwrok", ["unknown key", "did you mean 'network'"]),
    ("server:\n  min_paymnet: 5", "server.min_paymnet",
     ["unknown key", "did you mean 'server.min_payment'"]),
    ("fees:\n  zzz: 1", "fees.zzz", ["unknown key", "expected one of: target, min_rate"]),
    # wrong types
    ("server:\n  min_payment: true", "server.min_payment",
     ["found true (a boolean)", "expected an integer"]),
    ("server:\n  min_payment: '1000'", "server.min_payment",
     ["found '1000' (a string)", "expected an integer"]),
    ("server:\n  min_payment: 1.5", "server.min_payment", ["found 1.5", "expected an integer"]),
    ("server:\n  min_payment:", "server.min_payment", ["found null", "expected an integer"]),
    ("server:\n  enabled: 1", "server.enabled", ["found 1 (a number)", "expected true or false"]),
    ("server:\n  enabled: 'yes'", "server.enabled", ["found 'yes'", "expected true or false"]),
    ("bitcoind:\n  poll_interval: fast", "bitcoind.poll_interval",
     ["found 'fast'", "expected a number of seconds > 0"]),
    ("bitcoind:\n  poll_interval: true", "bitcoind.poll_interval",
     ["found true (a boolean)", "expected a number"]),
    ("bitcoind:\n  wallet: 42", "bitcoind.wallet", ["found 42", "expected a non-empty string"]),
    ("bitcoind:\n  url: [a, b]", "bitcoind.url", ["found a list", "expected a non-empty string"]),
    ("server: 4242", "server", ["found 4242", "expected a mapping"]),
    ("client:\n  servers: [a]", "client.servers", ["found a list", "expected a mapping"]),
    ("scheduler:\n  forget_depth: false", "scheduler.forget_depth",
     ["found false (a boolean)", "expected an integer"]),
    # missing where required
    ("bitcoind:\n  user: paychan", "bitcoind.password",
     ["missing", "expected password together with user"]),
    ("bitcoind:\n  password: x", "bitcoind.user", ["missing", "expected user together with"]),
    ("bitcoind:\n  user: u\n  password: p\n  cookie_file: /c", "bitcoind.cookie_file",
     ["found both", "expected one way to authenticate"]),
    ("client:\n  servers:\n    shop:", "client.servers.shop", ["found null", "host:port"]),
    # bad enum values
    ("network: mainnet", "network", ["found 'mainnet'", "expected one of: main, test"]),
    ("logging:\n  level: verbose", "logging.level",
     ["found 'verbose'", "expected one of: debug, info, warning, error"]),
    ("logging:\n  format: xml", "logging.format", ["found 'xml'", "expected one of: human, json"]),
    ("logging:\n  level: off", "logging.level", ["found false (a boolean)", "expected one of"]),
    # bad host:port and URLs
    ("server:\n  listen: localhost", "server.listen", ["found 'localhost'", "expected host:port"]),
    ("server:\n  listen: 127.0.0.1:http", "server.listen", ["127.0.0.1:http", "host:port"]),
    ("server:\n  listen: 127.0.0.1:70000", "server.listen", ["70000", "port 0-65535"]),
    ("server:\n  listen: ':4242'", "server.listen", ["':4242'", "expected host:port"]),
    ("server:\n  listen: ::1:4242", "server.listen", ["'::1:4242'", "[::1]:4242"]),
    ("server:\n  listen: bad_host!:4242", "server.listen", ["bad_host!:4242", "host:port"]),
    ("server:\n  listen: 4242", "server.listen", ["found 4242 (a number)", "host:port"]),
    ("metrics:\n  listen: 1.2.3.4", "metrics.listen", ["'1.2.3.4'", "host:port"]),
    ("client:\n  servers:\n    shop: shop.example.com", "client.servers.shop",
     ["'shop.example.com'", "expected host:port"]),
    ("client:\n  servers:\n    shop: 1.2.3.4:0", "client.servers.shop",
     ["found '1.2.3.4:0'", "port 1-65535"]),
    ("client:\n  servers:\n    'a:b': 1.2.3.4:1", "client.servers",
     ["found the name 'a:b'", "expected a name without ':'"]),
    ("bitcoind:\n  url: 127.0.0.1:18443", "bitcoind.url",
     ["found '127.0.0.1:18443'", "expected an http:// or https:// URL"]),
    ("bitcoind:\n  url: http://127.0.0.1:port", "bitcoind.url", ["http://127.0.0.1:port", "URL"]),
    ("bitcoind:\n  zmq: 127.0.0.1:28332", "bitcoind.zmq",
     ["found '127.0.0.1:28332'", "expected a ZMQ endpoint like tcp://"]),
    # non-positive amounts and intervals
    ("server:\n  min_channel_size: 0", "server.min_channel_size", ["found 0", "≥ 1"]),
    ("server:\n  min_payment: -5", "server.min_payment", ["found -5", "≥ 1"]),
    ("client:\n  channel_size: 0", "client.channel_size", ["found 0", "≥ 1"]),
    ("client:\n  time_window: -1", "client.time_window", ["found -1", "≥ 1"]),
    ("fees:\n  min_rate: 0", "fees.min_rate", ["found 0", "≥ 1"]),
    ("fees:\n  target: 0", "fees.target", ["found 0", "≥ 1 and ≤ 1008"]),
    ("fees:\n  target: 2000", "fees.target", ["found 2000", "≤ 1008"]),
    ("scheduler:\n  forget_depth: 0", "scheduler.forget_depth", ["found 0", "≥ 1"]),
    ("scheduler:\n  review_interval: 0", "scheduler.review_interval",
     ["found 0", "expected a number of seconds > 0"]),
    ("server:\n  max_connections_per_minute: 0", "server.max_connections_per_minute",
     ["found 0", "≥ 1"]),
    ("server:\n  max_handshakes_per_ip: true", "server.max_handshakes_per_ip",
     ["found true", "expected an integer"]),
    ("server:\n  max_contract_checks: 0", "server.max_contract_checks",
     ["found 0", "≥ 1"]),
    ("server:\n  trusted_proxies: [127.0.0.1, 10.0.0.0/33]", "server.trusted_proxies",
     ["found '10.0.0.0/33'", "expected a list of IP addresses or networks in CIDR form"]),
    ("server:\n  trusted_proxies: 10.0.0.0/8", "server.trusted_proxies",
     ["found '10.0.0.0/8' (a string)", "expected a list of IP addresses"]),
    ("server:\n  proxy_header: x-real-ip", "server.proxy_header",
     ["found 'x-real-ip'", "expected one of: x-forwarded-for, forwarded"]),
    ("client:\n  servers:\n    shop: ws://shop.example/paychan", "client.servers.shop",
     ["found 'ws://shop.example/paychan'", "expected ws://host:port/path"]),
    ("server:\n  websocket: 127.0.0.1:4244", "server.websocket",
     ["found '127.0.0.1:4244'", "expected host:port/path"]),
    ("server:\n  websocket: localhost/paychan", "server.websocket",
     ["found 'localhost'", "expected host:port"]),
    ("server:\n  min_confirmations: -1", "server.min_confirmations",
     ["found -1", "≥ 0 (or null for the default)"]),
    ("scheduler:\n  settle_margin: 600", "scheduler.settle_margin", ["found 600", "≥ 7200"]),
    # inconsistent values
    ("server:\n  min_time_window: 20000\n  max_time_window: 15000", "server.max_time_window",
     ["found 15000", "expected at least server.min_time_window (20000)"]),
    ("server:\n  min_time_window: 3600", "server.min_time_window",
     ["found 3600", "expected more than 7200 s"]),
    ("server:\n  min_payment: 100000\n  min_channel_size: 100000", "server.min_payment",
     ["found 100000", "expected less than server.min_channel_size (100000)"]),
    ("fees:\n  min_rate: 10\n  max_rate: 5", "fees.max_rate",
     ["found 5", "expected at least fees.min_rate (10)"]),
    ("server:\n  enabled: true\nscheduler:\n  settle_margin: 14400", "scheduler.settle_margin",
     ["found 14400", "expected less than server.min_time_window (14400)"]),
    ("server:\n  enabled: true\n  listen: 127.0.0.1:4243", "server.listen",
     ["'127.0.0.1:4243'", "already used by control.listen", "expected a different port"]),
    # the control API is local only
    ("control:\n  listen: 0.0.0.0:4243", "control.listen",
     ["found host '0.0.0.0'", "expected a loopback address"]),
    ("control:\n  listen: example.com:4243", "control.listen", ["'example.com'", "loopback"]),
    ("control:\n  listen: '[2001:db8::1]:4243'", "control.listen", ["'2001:db8::1'", "loopback"]),
    # TLS: both files or neither; a server entry's trust
    ("server:\n  tls_cert_file: server.crt", "server.tls_key_file",
     ["missing, expected tls_key_file together with tls_cert_file", "neither for plain TCP"]),
    ("client:\n  servers:\n    shop:\n      address: 10.0.0.1:4242\n      fingerprint: ab12",
     "client.servers.shop.fingerprint",
     ["found 'ab12'", "expected sha256: and 64 hex digits, colons allowed"]),
    ("client:\n  servers:\n    shop:\n      address: 10.0.0.1:4242\n      ca_fil: ca.pem",
     "client.servers.shop.ca_fil", ["unknown key", "did you mean 'client.servers.shop.ca_file'"]),
    ("client:\n  servers:\n    shop:\n      fingerprint: null", "client.servers.shop.address",
     ["missing, expected the server's host:port"]),
    ("client:\n  servers:\n    shop:\n      address: 10.0.0.1:4242\n      tls: false\n"
     "      ca_file: ca.pem", "client.servers.shop.tls",
     ["found false beside ca_file/fingerprint", "expected true"]),
    # not a mapping at all
    ("- network: main", "", ["found a list at the top level", "expected a mapping"]),
    # the store's engine and where it is
    ("store:\n  engine: mysql", "store.engine",
     ["found 'mysql'", "expected one of: sqlite, postgresql"]),
    ("store:\n  engine: postgresql", "store.dsn",
     ["found nothing", "expected a PostgreSQL connection string"]),
    ("store:\n  engine: postgresql\n  dsn: 'host=db oops'", "store.dsn",
     ["not a PostgreSQL connection string", 'missing "=" after "oops"']),
    ("store:\n  engine: postgresql\n  dsn: 'host=db port=99999'", "store.dsn",
     ["port '99999' is not a port number"]),
    ("store:\n  dsn: host=db", "store.dsn", ["found a dsn with engine sqlite"]),
    ("store:\n  engine: postgresql\n  dsn: host=db\n  path: /a.db", "store.path",
     ["found a path with engine postgresql", "store.dsn only"]),
    ("server:\n  proxy_protocol: true", "server.proxy_protocol",
     ["found true without server.trusted_proxies"]),
    ("server:\n  proxy_protocol: 1", "server.proxy_protocol", ["expected true or false"]),
    # the PostgreSQL sessions' timeouts
    ("store:\n  lock_timeout: 3", "store.lock_timeout",
     ["found a lock_timeout with engine sqlite"]),
    ("store:\n  engine: postgresql\n  dsn: host=db\n  statement_timeout: soon",
     "store.statement_timeout", ["found 'soon' (a string)", "expected a number of seconds"]),
    ("store:\n  engine: postgresql\n  dsn: host=db\n  lock_timeout: 1", "store.lock_timeout",
     ["found 1.0, expected more than idle_in_transaction_session_timeout (2.0)",
      "outwait a frozen instance"]),
    ("store:\n  engine: postgresql\n  dsn: host=db\n  idle_in_transaction_session_timeout: 0",
     "store.idle_in_transaction_session_timeout", ["expected a number of seconds > 0"]),
    ("store:\n  engine: postgresql\n  dsn: host=db\n  statement_timeout: 4",
     "store.statement_timeout", ["found 4.0, expected at least lock_timeout (5.0)"]),
    # re-anchoring and its autopilot (issue 23)
    ("client:\n  reanchoring: yes please", "client.reanchoring",
     ["found 'yes please' (a string)", "expected true or false"]),
    ("client:\n  refill_below: 100000", "client.max_deposit",
     ["found 0 beside client.refill_below", "funded with"]),
    ("client:\n  reanchoring: true\n  refill_below: 100000\n  max_deposit: 3000000\n"
     "  refill_to: 90000", "client.refill_to",
     ["found 90000, expected more than client.refill_below (100000)"]),
    ("client:\n  reanchoring: true\n  refill_below: 100000\n  max_deposit: 500000\n"
     "  refill_to: 600000", "client.refill_to",
     ["found 600000, expected at most client.max_deposit (500000)"]),
    ("client:\n  renew_before: 3600", "client.reanchoring",
     ["found false beside client.refill_below or client.renew_before", "expected true"]),
    ("client:\n  reanchoring: true\n  renew_before: 90000", "client.renew_before",
     ["found 90000, expected less than client.time_window (86340 s)"]),
    ("client:\n  max_deposit: -1", "client.max_deposit", ["found -1, expected an integer ≥ 0"]),
    ("server:\n  reanchoring: true\n  payout_above: 100", "server.payout_above",
     ["found 100, expected 0 (off) or at least 546 sat"]),
    ("server:\n  reanchoring: true\n  renew_before: 3600", "server.renew_before",
     ["found 3600, expected more than 10800 s", "less than server.min_time_window"]),
    ("server:\n  payout_above: 50000", "server.reanchoring",
     ["found false beside server.payout_above or server.renew_before", "expected true"]),
    ("server:\n  enabled: true\n  reanchoring: true\n  renew_before: 12000\n"
     "scheduler:\n  settle_margin: 9000", "server.renew_before",
     ["found 12000, expected more than 12600 s (scheduler.settle_margin, 9000 s"]),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD, ids=[b[0] for b in BAD])
def test_every_mistake_is_one_clear_error(tmp_path: Path, text: str, key: str,
                                          expected: list[str]) -> None:
    path = write(tmp_path, text + "\n")
    message = error_of(path)
    assert message.startswith(f"{path}: {key}"), message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "localhost", "[::1]"])
def test_the_control_api_may_listen_on_any_loopback_host(host: str) -> None:
    assert config_from_dict({"control": {"listen": f"{host}:4243"}}).control.listen.startswith(
        host)


def test_errors_without_a_file_say_configuration() -> None:
    with pytest.raises(ConfigError, match=r"^configuration: server\.listen: found 'x'"):
        config_from_dict({"server": {"listen": "x"}})


def test_mapping_keys_that_are_not_strings_are_unknown(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "server:\n  1: 2\n"))
    assert "server.1: unknown key" in message


# -- the file itself -------------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = error_of(path)
    assert message.startswith(str(path)) and "cannot read the configuration file" in message
    assert "No such file" in message


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    assert "cannot read the configuration file" in error_of(tmp_path)


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Read files as an ordinary user would: as root, drop the effective uid for a moment
    (root reads every file, whatever its mode)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everyone may enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="paychan-config-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_an_unreadable_file(open_dir: Path) -> None:
    path = write(open_dir, "network: main\n", mode=0o000)
    with unprivileged():
        assert "Permission denied" in error_of(path)


def test_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "paychan.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    assert "UTF-8 expected" in error_of(path)


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "network: main\nserver:\n  listen: [127.0.0.1:4242\n  enabled: true\n")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid YAML at line "), message
    assert "flow sequence that starts at line 3" in message
    bad_tabs = write(tmp_path, "network: main\nserver:\n\tenabled: true\n", name="tabs.yaml")
    assert "invalid YAML at line 3" in error_of(bad_tabs)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  listen: 127.0.0.1:1\n  listen: 127.0.0.1:2\n")
    message = error_of(path)
    assert "invalid YAML at line 3" in message and "duplicate key 'listen'" in message


@pytest.mark.parametrize(("mode", "who"), [
    (0o640, "readable by group (mode 640)"),
    (0o604, "readable by others (mode 604)"),
    (0o644, "readable by group and others (mode 644)"),
])
def test_a_readable_file_with_a_password_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    path = write(tmp_path, "bitcoind:\n  user: paychan\n  password: hunter2\n", mode=mode)
    message = error_of(path)
    assert message.startswith(f"{path}: bitcoind.password: the file holds a secret")
    assert who in message and "expected mode 600" in message
    assert f"chmod 600 {path}" in message
    path.chmod(0o600)
    assert load_config(path).bitcoind.password == "hunter2"


def test_a_postgresql_store_keeps_its_dsn_out_of_sight(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    text = "store:\n  engine: postgresql\n  dsn: postgresql://pay:{}@db.example/paychan\n"
    path = write(tmp_path, text.format("hunter2hunter2"), mode=0o644)
    message = error_of(path)
    assert message.startswith(f"{path}: store.dsn: the file holds a secret")
    monkeypatch.setenv("PAYCHAN_DB_PASSWORD", "from-the-environment")
    config = load_config(write(tmp_path, text.format("${PAYCHAN_DB_PASSWORD}"), mode=0o644))
    assert config.store.engine == "postgresql" and config.store.path is None
    assert config.store.dsn == "postgresql://pay:from-the-environment@db.example/paychan"
    assert "from-the-environment" not in repr(config)
    bad = write(tmp_path, "store:\n  engine: postgresql\n  dsn: 'postgresql://u:pa ss@h/x'\n")
    assert "pa ss" not in error_of(bad) and "store.dsn: not a PostgreSQL" in error_of(bad)


def test_a_readable_file_without_secrets_is_fine(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "network: signet\n", mode=0o644)).network == "signet"


# -- the cookie file, checked only when asked --------------------------------------------------


def test_the_cookie_file_is_checked_only_with_check_files(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    path = write(tmp_path, f"bitcoind:\n  cookie_file: {cookie}\n")
    assert load_config(path).bitcoind.cookie_file == cookie  # pure schema: no file needed
    message = error_of(path, check_files=True)
    assert message.startswith(f"{path}: bitcoind.cookie_file: found '{cookie}'")
    assert "does not exist; expected bitcoind's cookie file" in message
    cookie.write_text("__cookie__:abc")
    assert load_config(path, check_files=True).node_config().credentials() == (
        "__cookie__", "abc")


def test_a_cookie_path_that_is_a_directory(tmp_path: Path) -> None:
    path = write(tmp_path, f"bitcoind:\n  cookie_file: {tmp_path}\n")
    assert "which is not a file" in error_of(path, check_files=True)


def test_an_unreadable_cookie(open_dir: Path) -> None:
    cookie = open_dir / ".cookie"
    cookie.write_text("u:p")
    cookie.chmod(0)
    path = write(open_dir, f"bitcoind:\n  cookie_file: {cookie}\n", mode=0o644)
    with unprivileged():
        assert "cannot be read" in error_of(path, check_files=True)


def test_user_and_password_need_no_cookie_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bitcoind:\n  user: u\n  password: p\n")
    config = load_config(path, check_files=True)
    assert config.bitcoind.cookie_file is None
    assert config.node_config().credentials() == ("u", "p")


# -- the examples in contrib/ ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "mode"), [
    ("", 0o600), ("  cookie_mode: 0640\n", 0o640), ("  cookie_mode: '0640'\n", 0o640),
    ("  cookie_mode: '600'\n", 0o600), ("  cookie_mode: 0o640\n", 0o640)])
def test_control_cookie_mode(tmp_path: Path, text: str, mode: int) -> None:
    config = load_config(write(tmp_path, "control:\n" + text + "  cookie_group: operators\n"))
    assert config.control.cookie_mode == mode
    assert config.control.cookie_group == "operators"


@pytest.mark.parametrize("value", ["0644", "640", "'0660'", "true", "'rw'"])
def test_control_cookie_mode_refuses_what_others_could_read(tmp_path: Path, value: str) -> None:
    message = error_of(write(tmp_path, f"control:\n  cookie_mode: {value}\n"))
    assert "control.cookie_mode" in message and "expected 0600" in message


QUICKSTART_ENV = {"PAYCHAN_DIR": "/tmp/quickstart", "RPC_PORT": "18501", "SERVER_PORT": "18502",
                  "CONTROL_PORT": "18503"}


@pytest.mark.parametrize(("name", "network"), [
    ("regtest", "regtest"), ("signet", "signet"), ("mainnet", "main")])
def test_the_contrib_examples_load(name: str, network: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in QUICKSTART_ENV.items():  # what the README's quick start exports
        monkeypatch.setenv(variable, value)
    config = load_config(CONTRIB / f"paychan.{name}.yaml", check_files=False)
    assert config.network == network
    config.node_config()
    config.server_policy()
    config.watch_policy()
    assert config.fees.max_rate <= 100  # capped below the default 200 sat/vB
    if network == "regtest":
        assert config.server.enabled and config.client.enabled
        assert config.client.servers["self"] == config.server.listen
        assert config.client_policy("self").value == config.client.channel_size
    else:
        assert config.server.min_confirmations >= 1
        assert config.control.listen.startswith("127.0.0.1:")
    if network == "main":
        assert not config.server.enabled
        assert config.server.min_confirmations == 2


def test_peer_limits_come_from_the_server_section(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).server.limits == PeerLimits()
    config = load_config(write(tmp_path, "server:\n  max_connections_per_minute: 30\n"
                                         "  max_handshakes_per_ip: 4\n"
                                         "  max_contract_checks: 2\n"))
    assert config.server.limits == PeerLimits(max_connections_per_minute=30,
                                              max_handshakes_per_ip=4, max_contract_checks=2)


def test_trusted_proxies_come_from_the_server_section(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).server.proxies == TrustedProxies()
    config = load_config(write(tmp_path, "server:\n  trusted_proxies: [127.0.0.1, fd00::/8]\n"
                                         "  proxy_header: forwarded\n"))
    assert config.server.proxies == TrustedProxies.parse(["127.0.0.1/32", "fd00::/8"],
                                                         "forwarded")


def test_payout_address_must_belong_to_the_network(tmp_path: Path) -> None:
    good = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    config = load_config(write(tmp_path, f"server:\n  payout_address: {good}\n"))
    assert config.payout_script() == bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6")
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    message = error_of(write(tmp_path, f"server:\n  payout_address: {mainnet}\n"))
    assert "server.payout_address" in message and "regtest" in message
    assert load_config(write(tmp_path, "network: regtest\n")).payout_script() is None


def test_tls_files_are_checked_when_the_daemon_starts(tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    one, two = certs.issue("one"), certs.issue("two")
    (tmp_path / "node.cookie").write_text("__cookie__:secret")
    path = write(tmp_path, f"""
        bitcoind:
          cookie_file: node.cookie
        server:
          tls_cert_file: {one.cert_file.name}
          tls_key_file: {two.key_file.name}
        client:
          servers:
            shop: {{address: 10.0.0.1:4242, ca_file: missing.pem}}
        """)
    config = load_config(path)  # a schema check reads no files
    assert config.server.tls == ServerTLS(one.cert_file, two.key_file)
    assert config.client.tls == {"10.0.0.1:4242": ClientTLS(ca_file=tmp_path / "missing.pem")}
    message = error_of(path, check_files=True)
    assert message.startswith(f"{path}: server.tls_cert_file: "), message
    assert "the key does not belong to the certificate" in message
    path = write(tmp_path, path.read_text().replace(two.key_file.name, one.key_file.name))
    message = error_of(path, check_files=True)
    assert message.startswith(f"{path}: client.servers.shop.ca_file: "), message
    assert "missing.pem: cannot load the CA file" in message


def test_server_entries_choose_plain_tcp_a_ca_a_pin_or_the_system_cas(tmp_path: Path) -> None:
    pin = "sha256:" + "AB:" * 31 + "AB"
    path = write(tmp_path, f"""
        client:
          servers:
            plain: 10.0.0.1:4242
            with_ca: {{address: 10.0.0.2:4242, ca_file: ca.pem}}
            pinned: {{address: 10.0.0.3:4242, fingerprint: '{pin}'}}
            public: {{address: pay.example.com:4242, tls: true}}
            spelled_out: {{address: 10.0.0.4:4242, tls: false}}
        """)
    client = load_config(path).client
    assert client.servers["with_ca"] == "10.0.0.2:4242"
    assert client.tls == {"10.0.0.2:4242": ClientTLS(ca_file=tmp_path / "ca.pem"),
                          "10.0.0.3:4242": ClientTLS(fingerprint="sha256:" + "ab" * 32),
                          "pay.example.com:4242": ClientTLS()}


# -- every problem at once -------------------------------------------------------------------------


def test_every_problem_in_a_file_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        server:
          enabled: maybe
          listen: nowhere
          min_payment: -3
        bogus: 1
        control:
          cookie_mode: 0644
        bitcoind:
          cookie_file: /nonexistent/cookie
          poll_interval: soon
        """)
    lines = error_of(path, check_files=True).splitlines()
    keys = [line.removeprefix(f"{path}: ").split(":")[0] for line in lines]
    assert keys == ["server.enabled", "server.listen", "server.min_payment", "bogus",
                    "control.cookie_mode", "bitcoind.poll_interval",
                    "bitcoind.cookie_file"], lines  # the schema's in file order, then files
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_yaml_octal_is_shown_as_written(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "control:\n  cookie_mode: 0644\n"))
    assert "found 0644 (a number)" in message and "420" not in message
    message = error_of(write(tmp_path, "fees:\n  target: 0x0\n"))
    assert "found 0x0" in message, message


def test_the_daemon_reports_the_schema_before_missing_files(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        bitcoind:
          cookie_file: /nonexistent/cookie
        server:
          listen: 127.0.0.1:99999
        """)
    done = subprocess.run([sys.executable, "-m", "bitcoind_paychan.cli", "daemon", "--config",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    first, second = done.stderr.splitlines()
    assert "server.listen" in first and "bitcoind.cookie_file" in second, done.stderr


def test_a_bad_value_early_in_a_section_hides_none_of_its_later_mistakes(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        server:
          min_payment: -3
          listen: 127.0.0.1:4242
          min_time_window: 10
          payout_address: nowhere
          websocket: 8080
          trusted_proxies: 10.0.0.0/99
        client:
          servers:
            "bad:name": 127.0.0.1:1
            shop: 127.0.0.1:99999
          channel_size: 0
          payment_window: soon
        fees:
          target: 0
          max_rate: fast
        control:
          listen: 10.0.0.1:4243
          cookie_mode: 0644
          cookie_group: 7
        bitcoind:
          url: ftp://node
          user: alice
          zmq: udp://x
        store:
          dsn: postgresql://x@y/z
          path: 5
        """)
    lines = error_of(path).splitlines()
    keys = [line.removeprefix(f"{path}: ").split(":")[0] for line in lines]
    assert keys == ["server.min_payment", "server.min_time_window", "server.payout_address",
                    "server.websocket", "server.trusted_proxies", "client.servers",
                    "client.servers.shop", "client.channel_size", "client.payment_window",
                    "fees.target", "fees.max_rate", "control.listen", "control.cookie_mode",
                    "control.cookie_group", "bitcoind.password",  # missing: at its section
                    "bitcoind.url", "bitcoind.zmq", "store.dsn", "store.path"], lines
    assert all(line.startswith(f"{path}: ") and "expected" in line for line in lines), lines
    by_key = dict(zip(keys, lines, strict=True))
    assert "found -3" in by_key["server.min_payment"]
    assert "found 0644" in by_key["control.cookie_mode"]
    assert "'fast'" in by_key["fees.max_rate"] and "an integer" in by_key["fees.max_rate"]


def test_a_policy_is_built_only_from_its_valid_keys(tmp_path: Path) -> None:
    """A broken rule is reported once, under its key; the other keys still count."""
    path = write(tmp_path, "server:\n  min_channel_size: 5000\n  min_payment: 9000\n"
                           "  max_time_window: 0\n")
    lines = error_of(path).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["server.min_payment",
                                                        "server.max_time_window"], lines
    assert "less than server.min_channel_size (5000)" in lines[0]

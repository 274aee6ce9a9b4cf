"""Every key documented in docs/config.md takes effect: changing it changes what the daemon
runs with (probes on the services the daemon builds), or a named end-to-end test shows its
behaviour. Keys that were once validated but never applied get regtest tests here."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.daemon.config import config_from_dict
from bitcoind_paychan.daemon.daemon import Daemon
from bitcoind_paychan.errors import ChannelFailed, LocalProtocolError
from bitcoind_paychan.node import AsyncBitcoind
from bitcoind_paychan.store import MemoryStore
from regtest.node import RegtestNode, regtest_nodes
from tests.conftest import running_daemon as running
from tests.conftest import self_paying_daemon
from tests.daemon import test_daemon, test_daemon_postgres
from tests.gateway import test_gateway_e2e
from tests.transport.certs import CertFactory

DOCS = Path(__file__).parents[2] / "docs" / "config.md"
BOTH: dict[str, dict[str, Any]] = {
    "server": {"enabled": True}, "client": {"enabled": True},
    "bitcoind": {"cookie_file": "node.cookie"},  # relative to the configuration's folder
}
Probe = Callable[[Daemon], Any]


def documented_keys() -> list[str]:
    return re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)?)` \|", DOCS.read_text(), re.MULTILINE)


# Keys that act only beside another: the configuration both sides of their probe start from
# (section → its settings).
ROUTE = {"path": "/api", "upstream": "http://127.0.0.1:8080", "price": 10}
GATEWAY = {"gateway": {"enabled": True, "routes": [ROUTE]}}
NEEDS: dict[str, dict[str, dict[str, Any]]] = {
    "server.trusted_proxies": {"server": {"websocket": "127.0.0.1:4244/paychan"}},
    "server.proxy_header": {"server": {"websocket": "127.0.0.1:4244/paychan"}},
    "server.proxy_protocol": {"server": {"trusted_proxies": ["10.0.0.1"]}},
    "gateway.enabled": {"gateway": {"routes": [ROUTE]}},
    "gateway.endpoint": GATEWAY,
    "gateway.max_requests_per_session": GATEWAY,
    "gateway.routes": GATEWAY,
    "server.payout_above": {"server": {"reanchoring": True}},
    "server.renew_before": {"server": {"reanchoring": True}},
    "client.refill_below": {"client": {"reanchoring": True, "max_deposit": 3_000_000}},
    "client.refill_to": {"client": {"reanchoring": True, "refill_below": 100_000,
                                    "max_deposit": 3_000_000}},
    "client.max_deposit": {"client": {"reanchoring": True}},
    "client.renew_before": {"client": {"reanchoring": True}},
}


def base(key: str) -> dict[str, Any]:
    """Both roles enabled, and what `key` needs to act."""
    data: dict[str, Any] = {section: dict(values) for section, values in BOTH.items()}
    for section, values in NEEDS.get(key, {}).items():
        data.setdefault(section, {}).update(values)
    return data


def setting(key: str, value: Any) -> dict[str, Any]:
    """The configuration with `key` (section.name) set to `value`, both roles enabled."""
    data = base(key)
    if "." not in key:
        return {**data, key: value}
    section, name = key.split(".")
    data.setdefault(section, {})[name] = value
    if key in ("bitcoind.user", "bitcoind.password"):
        data["bitcoind"] = {"user": "u", "password": "p", name: value}
    return data


def built(data: dict[str, Any], folder: Path) -> Daemon:
    """The daemon's services as `paychan daemon` builds them from `data` (not started), the
    configuration file being in `folder`."""
    for cookie in ("node.cookie", "other.cookie"):
        (folder / cookie).write_text("__cookie__:" + "1" * 64)
    daemon = Daemon(config_from_dict(data, folder / "paychan.yaml"))
    daemon.build(AsyncBitcoind(daemon.node), MemoryStore())
    return daemon


def server(daemon: Daemon) -> Any:
    assert daemon.server is not None
    return daemon.server


def websocket(daemon: Daemon) -> Any:
    assert daemon.websocket is not None
    return daemon.websocket


def client(daemon: Daemon) -> Any:
    assert daemon.client is not None
    return daemon.client


def gateway(daemon: Daemon) -> Any:
    assert daemon.gateway is not None
    return daemon.gateway


def fees(daemon: Daemon) -> Any:
    """The fee policy, which must be the same object in every service that pays fees."""
    policy = server(daemon).watcher.policy.fees
    assert client(daemon).watcher.policy.fees is policy
    return policy


# key → (a value other than the default, what the daemon runs with for it)
PROBES: dict[str, tuple[Any, Probe]] = {
    "network": ("signet", lambda d: (d.node.config.chain, server(d).min_confirmations)),
    "bitcoind.url": ("http://10.1.2.3:18443", lambda d: d.node.config.url),
    "bitcoind.cookie_file": ("other.cookie", lambda d: d.node.config.cookie_file),
    "bitcoind.user": ("alice", lambda d: d.node.config.user),
    "bitcoind.password": ("secret", lambda d: d.node.config.password),
    "bitcoind.wallet": ("shop", lambda d: d.node.config.wallet),
    "bitcoind.zmq": ("tcp://127.0.0.1:28332", lambda d: server(d).watcher.zmq_endpoint),
    "bitcoind.poll_interval": (0.5, lambda d: client(d).watcher.poll_interval),
    "server.enabled": (False, lambda d: d.server is not None),
    "server.min_channel_size": (200_000, lambda d: server(d).policy.min_channel_size),
    "server.min_payment": (2_000, lambda d: server(d).policy.min_payment),
    "server.min_increment": (100, lambda d: server(d).policy.min_increment),
    "server.min_time_window": (5 * 3600, lambda d: server(d).policy.min_time_window),
    "server.max_time_window": (5 * 3600, lambda d: server(d).policy.max_time_window),
    "server.min_confirmations": (3, lambda d: server(d).min_confirmations),
    "server.max_connections_per_minute": (30, lambda d: server(d).gate.limits
                                          .max_connections_per_minute),
    "server.max_handshakes_per_ip": (4, lambda d: server(d).gate.limits.max_handshakes_per_ip),
    "server.max_contract_checks": (2, lambda d: server(d).gate.limits.max_contract_checks),
    "server.payout_address": ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
                              lambda d: server(d).payout_script),
    "server.websocket": ("127.0.0.1:4244/pay", lambda d: d.websocket and d.websocket.path),
    "server.trusted_proxies": (["127.0.0.1"], lambda d: websocket(d).trusted_proxies.networks),
    "server.proxy_header": ("forwarded", lambda d: websocket(d).trusted_proxies.header),
    "server.proxy_protocol": (True, lambda d: server(d).proxy_protocol),
    "client.enabled": (False, lambda d: d.client is not None),
    "client.servers": ({"shop": "10.0.0.1:4242"}, lambda d: d._server_address("shop")
                       if "shop" in d.config.client.servers else None),
    "client.channel_size": (300_000, lambda d: client(d).policy.value),
    "client.time_window": (7200, lambda d: client(d).policy.time_window),
    "client.max_min_payment": (500, lambda d: client(d).policy.max_min_payment),
    "client.payment_window": (4, lambda d: client(d).policy.payment_window),
    "client.reanchoring": (True, lambda d: client(d).policy.reanchoring),
    "client.refill_below": (200_000, lambda d: client(d).policy.refill_below),
    "client.refill_to": (2_000_000, lambda d: client(d).policy.refill_to),
    "client.max_deposit": (5_000_000, lambda d: client(d).policy.max_deposit),
    "client.renew_before": (3600, lambda d: client(d).policy.renew_before),
    "server.reanchoring": (True, lambda d: server(d).policy.reanchoring),
    "server.payout_above": (50_000, lambda d: server(d).policy.payout_above),
    "server.renew_before": (12_000, lambda d: server(d).policy.renew_before),
    "scheduler.settle_margin": (9000, lambda d: server(d).watcher.policy.settle_margin),
    "scheduler.forget_depth": (3, lambda d: client(d).watcher.policy.forget_depth),
    "scheduler.bump_after_blocks": (5, lambda d: server(d).watcher.policy.bump_after_blocks),
    "scheduler.review_interval": (7.0, lambda d: server(d).watcher.review_interval),
    "cluster.instance_id": ("shop-2", lambda d: server(d).leases.instance),
    "cluster.takeover_after": (9.0, lambda d: server(d).leases.policy.takeover_after),
    "fees.target": (2, lambda d: fees(d).target),
    "fees.min_rate": (5, lambda d: fees(d).floor),
    "fees.max_rate": (50, lambda d: fees(d).cap),
    "gateway.enabled": (True, lambda d: d.gateway is not None),
    "gateway.endpoint": ("/channels", lambda d: gateway(d).endpoint_path),
    "gateway.max_requests_per_session": (2, lambda d: gateway(d).max_requests_per_session),
    "gateway.routes": ([{**ROUTE, "per": "byte", "reserve": 500, "quantity": 1000}],
                       lambda d: gateway(d).routes[0].price),
}
# Keys the daemon uses outside the services: the end-to-end tests that show them at work.
SHOWN_BY: dict[str, Callable[..., None]] = {
    "server.listen": test_daemon.test_open_pay_list_close_through_the_cli,
    "store.path": test_daemon.test_graceful_shutdown_mid_stream_loses_nothing,
    "store.engine": test_daemon_postgres.test_a_server_daemon_on_postgresql_keeps_its_payments,
    "store.dsn": test_daemon_postgres.test_a_server_daemon_on_postgresql_keeps_its_payments,
    **dict.fromkeys(("store.statement_timeout", "store.lock_timeout",
                     "store.idle_in_transaction_session_timeout"),
                    test_daemon_postgres
                    .test_the_store_timeouts_bound_each_session_of_the_daemons_store),
    "logging.format": test_daemon.test_json_logs_and_sighup_reopens_the_log_file,
    "logging.file": test_daemon.test_json_logs_and_sighup_reopens_the_log_file,
    "control.listen": test_daemon.test_control_api_refuses_a_wrong_or_missing_cookie,
    "control.cookie_file": test_daemon.test_control_api_refuses_a_wrong_or_missing_cookie,
    "control.cookie_mode": test_daemon.test_control_cookie_mode_and_group_come_from_the_config,
    "control.cookie_group": test_daemon.test_control_cookie_mode_and_group_come_from_the_config,
    "metrics.enabled": test_daemon.test_open_pay_list_close_through_the_cli,
    "metrics.listen": test_daemon.test_open_pay_list_close_through_the_cli,
    "daemon.event_loop": test_daemon.test_a_server_daemon_on_uvloop_serves_channels_over_tls,
    "gateway.listen": test_gateway_e2e.test_the_daemons_gateway_sells_an_upstream_on_a_real_node,
}


def test_the_documented_keys_are_all_accounted_for() -> None:
    keys = documented_keys()
    assert len(keys) > 30
    assert sorted(keys) == sorted([*PROBES, *SHOWN_BY])


@pytest.mark.parametrize("key", sorted(PROBES))
def test_changing_a_key_changes_what_the_daemon_runs_with(key: str, tmp_path: Path) -> None:
    value, probe = PROBES[key]
    assert probe(built(setting(key, value), tmp_path)) != probe(built(base(key), tmp_path)), key


def test_the_services_share_the_policies_the_configuration_built(tmp_path: Path) -> None:
    daemon = built(BOTH, tmp_path)
    assert server(daemon).policy is daemon.config.server_policy()
    assert client(daemon).policy is daemon.config.client.policy
    assert server(daemon).watcher.policy is daemon.config.watch_policy()
    assert fees(daemon) is daemon.config.fees


@pytest.mark.parametrize("key", sorted(SHOWN_BY))
def test_keys_used_outside_the_services_are_shown_end_to_end(key: str) -> None:
    shown_by = SHOWN_BY[key]
    name = key.split(".")[1]
    # the test, or the daemons its module configures, sets the key
    assert f'"{name}"' in inspect.getsource(inspect.getmodule(shown_by)), key  # type: ignore[arg-type]


# -- keys that used to do nothing, on a real node ------------------------------------------------


@pytest.fixture(scope="module")
def node() -> Any:
    with regtest_nodes(1) as (node,):
        yield node


def test_client_time_window_sets_the_channel_lifetime(node: RegtestNode,
                                                      tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        async with running(node, tmp_path, client={"time_window": 5 * 3600}) as daemon:
            before = int(time.time())
            opened = await daemon.open("self", 200_000)
            return before, opened["expiry"]

    before, expiry = asyncio.run(scenario())
    # the server clamps into [4 h, 7 d]: 5 h is inside, so it is what the channel gets
    assert before + 5 * 3600 <= expiry <= int(time.time()) + 5 * 3600


def test_client_max_min_payment_refuses_a_greedy_server(node: RegtestNode,
                                                        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(node, tmp_path, server={"min_payment": 2_000},
                           client={"max_min_payment": 1_500}) as daemon:
            await daemon.open("self", 200_000)

    with pytest.raises((ChannelFailed, LocalProtocolError), match="MIN_PAYMENT_TOO_LARGE"):
        asyncio.run(scenario())


@pytest.mark.parametrize(("level", "shown"), [("info", True), ("warning", False)])
def test_logging_level_filters_the_log(node: RegtestNode, tmp_path: Path, level: str,
                                       shown: bool) -> None:
    async def scenario() -> None:
        async with running(node, tmp_path, logging={"level": level}):
            pass

    asyncio.run(scenario())
    assert ("paychan daemon ready" in (tmp_path / "daemon.log").read_text()) is shown


SHOWN_BY["logging.level"] = test_logging_level_filters_the_log


def test_logging_levels_set_a_subsystems_level(node: RegtestNode, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(node, tmp_path, logging={"levels": {"daemon": "warning",
                                                               "server": "debug"}}):
            pass

    asyncio.run(scenario())
    text = (tmp_path / "daemon.log").read_text()
    assert "paychan daemon ready" not in text  # the daemon's info lines: below its warning
    assert "payment server listening" in text  # the server's: shown, as the root's level says


SHOWN_BY["logging.levels"] = test_logging_levels_set_a_subsystems_level


def test_server_tls_files_and_a_pinned_server_carry_the_daemons_channels(
        node: RegtestNode, tmp_path: Path) -> None:
    issued = CertFactory(tmp_path).issue("server")
    address = self_paying_daemon(node, tmp_path)["client"]["servers"]["self"]

    async def scenario() -> tuple[dict[str, Any], str]:
        server = {"tls_cert_file": str(issued.cert_file), "tls_key_file": str(issued.key_file),
                  "listen": address}
        pinned = {"self": {"address": address, "fingerprint": issued.pin.fingerprint}}
        async with running(node, tmp_path, server=server, client={"servers": pinned}) as daemon:
            opened = await daemon.open("self", 200_000)
            await daemon.pay("self", 5_000, None)
            closed = await daemon.close(opened["contract_txid"])
        plain = {"self": address}  # the same server without TLS on the client's side
        async with running(node, tmp_path, server=server, client={"servers": plain}) as daemon:
            try:
                await daemon.open("self", 200_000, new=True)
                refused = ""
            except ChannelFailed as exc:
                refused = str(exc)
        return closed, refused

    closed, refused = asyncio.run(scenario())
    assert closed["status"] == "closing"
    assert "this server speaks TLS" in refused
    log = (tmp_path / "daemon.log").read_text()
    assert "(TLS)" in log and "TLS refused: the peer does not speak TLS" in log


SHOWN_BY["server.tls_cert_file"] = SHOWN_BY["server.tls_key_file"] = (
    test_server_tls_files_and_a_pinned_server_carry_the_daemons_channels)


# -- the daemon's own counts, on a real node ------------------------------------------------------


def test_open_of_the_live_channel_counts_its_opening_payment_once(node: RegtestNode,
                                                                   tmp_path: Path) -> None:
    """`Channel.resumed` says only whether a connection continues an earlier one: `open` of
    the channel live here already is reported resumed, and its opening payment (counted when
    it was opened) is not counted again."""
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], float | None]:
        async with running(node, tmp_path) as daemon:
            first = await daemon.open("self", 200_000)
            again = await daemon.open("self", 200_000)
            paid = daemon.metrics.registry.get_sample_value("paychan_payments_total",
                                                            {"role": "client"})
            return first, again, paid

    first, again, paid = asyncio.run(scenario())
    assert (first["resumed"], again["resumed"]) == (False, True)
    assert again["contract_txid"] == first["contract_txid"] and paid == 1

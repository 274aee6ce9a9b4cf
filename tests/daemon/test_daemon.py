"""`paychan daemon` end to end on regtest: a server daemon and a client daemon driven through
the CLI, graceful shutdown mid-stream, the control API's cookie, and metrics."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.store import SQLiteStore
from regtest.node import RegtestNode, free_port, regtest_nodes
from regtest.waiting import wait_until
from tests.daemon.test_control import operators_group
from tests.transport.certs import CertFactory

PAYCHAN = [sys.executable, "-m", "bitcoind_paychan.cli"]


class Daemons:
    """Writes the two daemons' configs and runs them and the CLI as separate processes."""

    def __init__(self, node: RegtestNode, tmp: Path) -> None:
        self.node, self.tmp = node, tmp
        self.server_port, self.metrics_port = free_port(), free_port()
        self.client_metrics_port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        common = {
            "network": "regtest",
            "bitcoind": {"url": node.rpc_url, "cookie_file": str(node.cookie_path),
                         "poll_interval": 0.2},
            "scheduler": {"forget_depth": 2, "review_interval": 0.5},
            "logging": {"level": "info", "file": None},
        }
        self.write("server", common, {
            "bitcoind": {"wallet": node.wallet},
            "server": {"enabled": True, "listen": f"127.0.0.1:{self.server_port}"},
            "metrics": {"enabled": True, "listen": f"127.0.0.1:{self.metrics_port}"},
        })
        self.write("client", common, {
            "bitcoind": {"wallet": "client"},
            "client": {"enabled": True, "servers": {"shop": f"127.0.0.1:{self.server_port}"},
                       "channel_size": 4_000_000},
            "metrics": {"enabled": True, "listen": f"127.0.0.1:{self.client_metrics_port}"},
        })

    def write(self, name: str, common: dict[str, Any], own: dict[str, Any]) -> None:
        config = json.loads(json.dumps(common))  # a deep copy
        for section, values in own.items():
            config.setdefault(section, {}).update(values)
        config["store"] = {"path": str(self.tmp / f"{name}.db")}
        config["control"] = {"listen": f"127.0.0.1:{free_port()}",
                             "cookie_file": str(self.tmp / f"{name}.cookie")}
        config["logging"]["file"] = str(self.tmp / f"{name}.log")
        path = self.config(name)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def config(self, name: str) -> Path:
        return self.tmp / f"{name}.yaml"

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen([*PAYCHAN, "daemon", "--config",
                                             str(self.config(name))])
        wait_until(lambda: self.cli(name, "getinfo", check=False).returncode == 0, 60,
                   interval=0.2, what=f"the {name} daemon to answer")

    def cli(self, name: str, *args: str, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*PAYCHAN, "--config", str(self.config(name)), *args],
                              capture_output=True, text=True, timeout=300)
        if check:
            assert done.returncode == 0, f"paychan {' '.join(args)}: {done.stderr}"
        return done

    def json(self, name: str, *args: str) -> Any:
        return json.loads(self.cli(name, "--json", *args).stdout)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    with regtest_nodes(1) as (node,):
        node.rpc("createwallet", "client")
        node.pay_in_block({node.rpc("getnewaddress", wallet="client"): 5})
        running = Daemons(node, tmp_path)
        try:
            yield running
        finally:
            running.stop_all()


def on_a_terminal(command: list[str]) -> str:
    """What `command` writes to its stderr when that is a terminal (a pseudo-terminal)."""
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(command, stderr=follower, stdout=subprocess.DEVNULL, timeout=300)
    finally:
        os.close(follower)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the terminal has no writer left
        while chunk := os.read(leader, 4096):
            chunks.append(chunk)
    os.close(leader)
    assert done.returncode == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's newlines


def metric(text: str, sample: str) -> float:
    """The value of one sample (`name{labels}` exactly as exposed) in a scrape."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"{sample} not in metrics:\n{text}")


def test_getinfo_and_metrics_say_whether_the_daemon_can_settle(daemons: Daemons) -> None:
    node = daemons.node
    assert node.wallet is not None
    wallets = node.datadir / node.chain / "wallets"
    daemons.start("server")
    info = daemons.json("server", "getinfo")
    assert (info["can_settle"], info["can_settle_reason"]) == (True, "ok")
    node.rpc("unloadwallet", node.wallet)  # as after a bitcoind restart without it
    assert daemons.json("server", "getinfo")["can_settle"]  # the daemon loaded it itself
    assert "had wallet 'paychan' on disk but not loaded" in daemons.log("server")
    node.rpc("unloadwallet", node.wallet)
    (wallets / node.wallet).rename(wallets / "elsewhere")  # now it cannot
    info = daemons.json("server", "getinfo")
    assert (info["can_settle"], info["can_settle_reason"]) == (False, "wallet_not_loaded")
    assert info["node"] == "up" and "load_on_startup=true" in info["can_settle_detail"]
    assert "CANNOT settle or refund (wallet_not_loaded)" in daemons.log("server")
    people = daemons.cli("server", "getinfo").stdout
    assert re.search(r"^can_settle +no$", people, re.MULTILINE) and "wallet_not_loaded" in people
    scraped = urllib.request.urlopen(
        f"http://127.0.0.1:{daemons.metrics_port}/metrics", timeout=10).read().decode()
    assert metric(scraped, 'paychan_can_settle{reason="wallet_not_loaded"}') == 0
    (wallets / "elsewhere").rename(wallets / node.wallet)
    assert daemons.json("server", "getinfo")["can_settle"]
    scraped = urllib.request.urlopen(
        f"http://127.0.0.1:{daemons.metrics_port}/metrics", timeout=10).read().decode()
    assert metric(scraped, 'paychan_can_settle{reason="ok"}') == 1


def test_close_prints_the_servers_reason_when_it_cannot_settle(daemons: Daemons) -> None:
    node = daemons.node
    assert node.wallet is not None
    wallets = node.datadir / node.chain / "wallets"
    daemons.start("server")
    daemons.start("client")
    txid = daemons.json("client", "open", "shop", "400000")["contract_txid"]
    daemons.cli("client", "pay", "shop", "2000")
    node.rpc("unloadwallet", node.wallet)
    (wallets / node.wallet).rename(wallets / "elsewhere")
    refused = daemons.cli("client", "close", "shop", check=False)
    (wallets / "elsewhere").rename(wallets / node.wallet)
    assert refused.returncode == 1
    assert "the server said: cannot settle now" in refused.stderr
    assert "wallet 'paychan' is not loaded" in refused.stderr
    assert "did not settle in time" not in refused.stderr
    scraped = urllib.request.urlopen(
        f"http://127.0.0.1:{daemons.client_metrics_port}/metrics", timeout=10).read().decode()
    assert metric(scraped, 'paychan_errors_total{code="OTHER",role="client"}') == 1  # counted
    closed = daemons.json("client", "close", txid)  # the server loads its wallet now
    assert closed["status"] == "closing" and closed["settlement_txid"]


def test_open_pay_list_close_through_the_cli(daemons: Daemons) -> None:
    daemons.start("server")
    daemons.start("client")
    info = daemons.json("client", "getinfo")
    assert info["network"] == "regtest" and info["client"] == ["shop"]
    opened_at = int(time.time())
    opened = daemons.json("client", "open", "shop", "400000")
    txid = opened["contract_txid"]
    assert opened["status"] == "open" and opened["paid"] == 1_000
    paid = daemons.cli("client", "pay", "shop", "2000", "hello", "--repeat", "10")
    assert "paid 10 × 2000 sat = 20000 sat (hello)" in paid.stdout, paid.stdout
    (client_view,) = daemons.json("client", "listchannels")
    (server_view,) = daemons.json("server", "listchannels", "open")
    assert client_view["paid"] == server_view["paid"] == 21_000
    table = daemons.cli("server", "listchannels").stdout
    assert "open" in table and txid[:16] in table
    payments = daemons.json("server", "listpayments", txid[:12])
    assert [p["amount"] for p in payments].count(2_000) == 10
    newest = daemons.json("server", "listpayments", "--limit", "3")
    assert [p["seq"] for p in newest] == [11, 10, 9]
    assert all(p["stored_at"] >= opened_at for p in newest)
    assert len(daemons.json("server", "listpayments", "--since", str(opened_at))) == 11
    assert daemons.json("server", "listpayments", "--since", "2999-01-01") == []
    bad = daemons.cli("server", "listpayments", "--since", "soon", check=False)
    assert bad.returncode != 0 and "listpayments --since: 'soon' is not a date" in bad.stderr
    assert "stored" in daemons.cli("server", "listpayments", "--limit", "1").stdout
    scraped = urllib.request.urlopen(
        f"http://127.0.0.1:{daemons.metrics_port}/metrics", timeout=10).read().decode()
    assert metric(scraped, 'paychan_payments_total{role="server"}') == 11
    assert metric(scraped, 'paychan_payment_amount_sat_total{role="server"}') == 21_000
    assert metric(scraped, 'paychan_channels{role="server",state="open"}') == 1
    assert metric(scraped, "paychan_node_up") == 1
    assert metric(scraped, 'paychan_next_deadline_seconds{role="server"}') > 0
    assert metric(scraped, 'paychan_settlements_unconfirmed{role="server"}') == 0
    assert metric(scraped, "paychan_store_size_bytes") > 0
    assert metric(scraped, 'paychan_payment_latency_seconds_count{role="server"}') == 11  # payments
    assert metric(scraped, 'paychan_errors_total{code="TIMEOUT",role="server"}') == 0  # at start
    assert metric(scraped, 'paychan_channels_lifetime{role="server"}') == 1
    assert metric(scraped, 'paychan_channels_forgotten{role="server"}') == 0
    closed = daemons.json("client", "close", txid)
    assert len(closed["settlement_txid"]) == 64
    daemons.node.mine(1)
    wait_until(lambda: daemons.json("server", "getchannel", txid)["status"] == "settled",
               what="the server daemon to record the settlement")
    assert daemons.cli("client", "stop").returncode == 0
    assert daemons.cli("server", "stop").returncode == 0
    assert daemons.procs["client"].wait(30) == 0 and daemons.procs["server"].wait(30) == 0


def test_open_and_close_do_exactly_what_they_say(daemons: Daemons) -> None:
    """Seen: `close` of a closing channel opened (and settled) a new one; `open` twice made
    two channels; after a restart `open` of another amount returned the existing channel."""
    daemons.start("server")
    daemons.start("client")
    first = daemons.json("client", "open", "shop", "400000")
    txid = first["contract_txid"]
    assert first["resumed"] is False
    twice = daemons.json("client", "open", "shop", "400000")
    assert (twice["contract_txid"], twice["resumed"]) == (txid, True)
    assert daemons.cli("client", "stop").returncode == 0
    assert daemons.procs["client"].wait(30) == 0
    daemons.start("client")
    other = daemons.cli("client", "open", "shop", "2100000000000000", check=False)
    assert other.returncode != 0
    assert txid in other.stderr and "400000 sat" in other.stderr
    assert "paychan open --new" in other.stderr and "new=True" not in other.stderr  # the CLI's
    resumed = daemons.json("client", "open", "shop", "400000")
    assert (resumed["contract_txid"], resumed["resumed"]) == (txid, True)
    closed = daemons.json("client", "close", txid)
    assert closed["status"] == "closing" and len(closed["settlement_txid"]) == 64
    for _ in range(2):  # again: the same answer, and nothing opened or spent
        assert daemons.json("client", "close", txid) == closed
    assert [v["contract_txid"] for v in daemons.json("client", "listchannels")] == [txid]
    assert len(daemons.json("server", "listchannels")) == 1
    extra = daemons.json("client", "open", "shop", "300000", "--new")
    assert extra["resumed"] is False and extra["contract_txid"] != txid
    settled = daemons.cli("server", "close", extra["contract_txid"])  # the server settles
    assert "settling the channel now" in settled.stderr, settled.stderr
    assert "asking the server" not in settled.stderr  # it is the server
    again = daemons.cli("server", "close", extra["contract_txid"])
    assert again.stderr == "" and "closing" in again.stdout  # reported as it is


def test_graceful_shutdown_mid_stream_loses_nothing(daemons: Daemons) -> None:
    daemons.start("server")
    daemons.start("client")
    txid = daemons.json("client", "open", "shop", "4000000")["contract_txid"]
    stream = subprocess.Popen([*PAYCHAN, "--config", str(daemons.config("client")), "pay",
                               "shop", "1000", "--repeat", "3000"], stderr=subprocess.PIPE,
                              text=True)
    with SQLiteStore(daemons.tmp / "server.db", read_only=True) as running:  # the daemon's
        wait_until(lambda: (rec := running.get(Role.SERVER, txid)) is not None
                   and rec.payments > 20,
                   what="the stream to be under way")
    daemons.procs["server"].send_signal(signal.SIGTERM)  # mid-stream
    assert daemons.procs["server"].wait(30) == 0
    assert stream.wait(60) != 0  # the stream broke off: the server went away
    with SQLiteStore(daemons.tmp / "server.db", read_only=True) as stopped:
        server_paid = stopped.get(Role.SERVER, txid)
    assert server_paid is not None
    client_view = daemons.json("client", "getchannel", txid)
    # Stored before sent, acknowledged after stored: the client is ahead by at most the one
    # payment in flight when the server stopped.
    assert client_view["paid"] - server_paid.paid in (0, 1_000)
    assert "finishing payments in flight" in daemons.log("server")
    daemons.start("server")  # back: the client resumes and settles everything it paid
    daemons.cli("client", "pay", "shop", "1000")
    closed = daemons.json("client", "close", txid)
    settlement = daemons.node.rpc("getrawtransaction", closed["settlement_txid"], True)
    change = round(settlement["vout"][0]["value"] * 100_000_000)
    assert change == 4_000_000 - daemons.json("client", "getchannel", txid)["paid"]


def test_control_api_refuses_a_wrong_or_missing_cookie(daemons: Daemons) -> None:
    daemons.start("server")
    config = yaml.safe_load(daemons.config("server").read_text())
    url = f"http://{config['control']['listen']}/"
    body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": "stop", "params": []}).encode()
    for headers in ({}, {"Authorization": "Basic X19jb29raWVfXzp3cm9uZw=="}):
        request = urllib.request.Request(url, data=body, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
    assert daemons.procs["server"].poll() is None  # `stop` was not executed
    wrong = daemons.tmp / "wrong.cookie"
    wrong.write_text("__cookie__:" + "0" * 64)
    os.chmod(wrong, 0o600)
    config["control"]["cookie_file"] = str(wrong)
    daemons.config("other").write_text(yaml.safe_dump(config))
    denied = daemons.cli("other", "getinfo", check=False)
    assert denied.returncode == 3 and "cookie" in denied.stderr.lower()  # unreachable


def test_json_logs_and_sighup_reopens_the_log_file(daemons: Daemons) -> None:
    config = yaml.safe_load(daemons.config("server").read_text())
    config["logging"]["format"] = "json"
    daemons.config("server").write_text(yaml.safe_dump(config))
    daemons.start("server")
    log = daemons.tmp / "server.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(entry["message"].startswith("paychan daemon ready") for entry in lines)
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    log.rename(daemons.tmp / "server.log.1")  # as logrotate does
    daemons.procs["server"].send_signal(signal.SIGHUP)
    wait_until(lambda: log.exists() and "log file reopened" in log.read_text(),
               what="a new log file")
    daemons.cli("server", "getinfo")
    assert daemons.procs["server"].poll() is None


def test_control_cookie_mode_and_group_come_from_the_config(daemons: Daemons) -> None:
    group = operators_group()
    config = yaml.safe_load(daemons.config("server").read_text())
    config["control"]["cookie_mode"] = "0640"
    config["control"]["cookie_group"] = group
    daemons.config("server").write_text(yaml.safe_dump(config))
    daemons.start("server")
    cookie = Path(config["control"]["cookie_file"]).stat()
    assert stat.S_IMODE(cookie.st_mode) == 0o640
    assert cookie.st_gid == grp.getgrnam(group).gr_gid


def test_daemon_refuses_to_start_without_its_node(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:" + "1" * 64)
    config = tmp_path / "paychan.yaml"
    config.write_text(yaml.safe_dump({
        "network": "regtest",
        "bitcoind": {"url": f"http://127.0.0.1:{free_port()}", "cookie_file": str(cookie)},
        "store": {"path": str(tmp_path / "store.db")},
        "control": {"listen": f"127.0.0.1:{free_port()}",
                    "cookie_file": str(tmp_path / "control.cookie")},
    }))
    done = subprocess.run([*PAYCHAN, "daemon", "--config", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "bitcoind does not answer" in done.stderr and "is it running" in done.stderr


# -- history, counts, one daemon per store (issue: history deleted, counts disagree) ---------


def _self_paying(daemons: Daemons) -> None:
    """The quick start's daemon: both roles in one process, one store, paying itself."""
    port = free_port()
    daemons.write("self", {
        "network": "regtest",
        "bitcoind": {"url": daemons.node.rpc_url, "cookie_file": str(daemons.node.cookie_path),
                     "wallet": daemons.node.wallet, "poll_interval": 0.2},
        "scheduler": {"forget_depth": 1, "review_interval": 0.5},
        "logging": {"level": "debug", "file": None},
    }, {
        "server": {"enabled": True, "listen": f"127.0.0.1:{port}", "min_confirmations": 0},
        "client": {"enabled": True, "servers": {"self": f"127.0.0.1:{port}"},
                   "channel_size": 1_000_000},
    })


def test_history_of_a_forgotten_channel_stays_and_counts_agree(daemons: Daemons) -> None:
    _self_paying(daemons)
    daemons.start("self")
    txid = daemons.json("self", "open", "self", "1000000")["contract_txid"]
    progress = on_a_terminal([*PAYCHAN, "--config", str(daemons.config("self")), "pay", "self",
                              "1000", "coffee", "--repeat", "5"])
    assert "\r1/5 payments, 1000 sat paid" in progress  # this run's, not the channel's
    assert "\r5/5 payments, 5000 sat paid" in progress and progress.endswith("\n")
    daemons.json("self", "close", txid)
    daemons.node.mine(1)  # forget_depth 1: buried at once
    wait_until(lambda: daemons.json("self", "listchannels") == [], what="the channel forgotten")
    for _ in range(2):  # and again after a restart
        (client, server) = sorted(daemons.json("self", "listchannels", "--all"),
                                  key=lambda row: row["role"])
        for row in (client, server):
            assert (row["contract_txid"], row["status"], row["forgotten"]) == (
                txid, "settled", True)
            assert (row["value"], row["paid"], row["payments"]) == (1_000_000, 6_000, 6)
            assert row["to_client"] + row["to_server"] + row["fee"] == 1_000_000
            assert row["to_server"] == 6_000 - row["fee"]
            assert row["opened_at"] <= row["closed_at"] and len(row["closing_txid"]) == 64
        assert daemons.json("self", "getchannel", txid[:10])["closing_txid"] == (
            client["closing_txid"])
        payments = daemons.json("self", "listpayments", txid[:10])
        for role in ("server", "client"):
            logged = [(p["seq"], p["amount"], p["info"]) for p in payments
                      if p["role"] == role]
            assert logged == [(n, 1000, "coffee") for n in range(6, 1, -1)] + [(1, 1000, "")]
        assert "(none)" not in daemons.cli("self", "listpayments").stdout
        daemons.cli("self", "stop")
        assert daemons.procs["self"].wait(30) == 0
        daemons.start("self")
    kept = daemons.cli("self", "prunehistory", "--before", "2000-01-01")
    assert "pruned  0" in kept.stdout and "before  2000-01-01 00:00 UTC" in kept.stdout
    future = daemons.cli("self", "prunehistory", "--before", "2999-01-01", check=False)
    assert future.returncode != 0 and "in the future" in future.stderr
    after = client["closed_at"] + 1
    wait_until(lambda: time.time() > after, what="a second after the close")
    assert daemons.json("self", "prunehistory", "--before", str(after))["pruned"] == 2
    assert daemons.json("self", "listchannels", "--all") == []
    assert daemons.json("self", "listpayments") == []


def test_a_second_daemon_on_the_same_store_is_refused(daemons: Daemons) -> None:
    daemons.start("server")
    config = yaml.safe_load(daemons.config("server").read_text())
    cookie = Path(config["control"]["cookie_file"]).read_text()
    config["server"]["listen"] = f"127.0.0.1:{free_port()}"
    config["control"] = {"listen": f"127.0.0.1:{free_port()}",
                         "cookie_file": str(daemons.tmp / "second.cookie")}
    config["metrics"]["enabled"] = False
    config["logging"]["file"] = None
    second = daemons.tmp / "second.yaml"
    second.write_text(yaml.safe_dump(config))
    second.chmod(0o600)
    done = subprocess.run([*PAYCHAN, "daemon", "--config", str(second)], capture_output=True,
                          text=True, timeout=60)
    pid = daemons.procs["server"].pid
    store = daemons.tmp / "server.db"
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert (f"error: the store {store} is in use by process {pid} (it holds {store}.lock)"
            in done.stderr)
    assert not (daemons.tmp / "second.cookie").exists()  # changed nothing
    assert Path(config["store"]["path"] + ".lock").read_text() == f"{pid}\n"
    assert Path(daemons.tmp / "server.cookie").read_text() == cookie
    daemons.cli("server", "getinfo")  # the first one runs on


@pytest.mark.parametrize("key", ["control.listen", "server.listen"])
def test_a_port_in_use_is_one_clear_line(daemons: Daemons, key: str) -> None:
    section, _ = key.split(".")
    config = yaml.safe_load(daemons.config("server").read_text())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config[section]["listen"] = address
        config["logging"]["file"] = str(daemons.tmp / "port.log")
        path = daemons.tmp / "port.yaml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        done = subprocess.run([*PAYCHAN, "daemon", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: cannot listen on {address} ({key}): ")
    assert f"set another {key}" in line
    SQLiteStore(daemons.tmp / "server.db").close()  # the failed daemon let its store go


def test_a_client_daemon_pays_a_server_daemon_over_its_websocket_listener(
        daemons: Daemons) -> None:
    """`server.websocket` adds a WebSocket listener beside the TCP one; a client daemon whose
    server is a ws:// URL opens, pays, resumes after a restart and settles through it."""
    ws_port = free_port()
    url = f"ws://127.0.0.1:{ws_port}/paychan"
    for name, section, values in (
            ("server", "server", {"websocket": f"127.0.0.1:{ws_port}/paychan"}),
            ("client", "client", {"servers": {"shop": url}})):
        path = daemons.config(name)
        config = yaml.safe_load(path.read_text())
        config[section].update(values)
        path.write_text(yaml.safe_dump(config))
    daemons.start("server")
    daemons.start("client")
    opened = daemons.json("client", "open", "shop", "400000")
    txid = opened["contract_txid"]
    daemons.cli("client", "pay", "shop", "2000", "--repeat", "5")
    assert daemons.cli("client", "stop").returncode == 0
    assert daemons.procs["client"].wait(30) == 0
    daemons.start("client")
    resumed = daemons.json("client", "open", "shop", "400000")
    assert (resumed["contract_txid"], resumed["resumed"]) == (txid, True)
    daemons.cli("client", "pay", "shop", "3000")
    (server_view,) = daemons.json("server", "listchannels", "open")
    assert server_view["paid"] == 1_000 + 5 * 2_000 + 3_000
    assert daemons.json("client", "getchannel", txid)["peer"] == url
    daemons.json("client", "close", txid)
    daemons.node.mine(1)
    wait_until(lambda: daemons.json("server", "getchannel", txid)["status"] == "settled",
               what="the server daemon to record the settlement")
    assert f"WebSocket on ws://127.0.0.1:{ws_port}/paychan" in daemons.log("server")


def test_a_server_daemon_on_uvloop_serves_channels_over_tls(daemons: Daemons,
                                                            tmp_path: Path) -> None:
    """`daemon.event_loop: uvloop`: the server daemon runs on uvloop (getinfo says so) and its
    TLS listener takes a client daemon's channel, payments and close as asyncio's does."""
    issued = CertFactory(tmp_path).issue("server")
    address = f"127.0.0.1:{daemons.server_port}"
    for name, changes in (
            ("server", {"daemon": {"event_loop": "uvloop"},
                        "server": {"tls_cert_file": str(issued.cert_file),
                                   "tls_key_file": str(issued.key_file)}}),
            ("client", {"client": {"servers": {"shop": {
                "address": address, "fingerprint": issued.pin.fingerprint}}}})):
        path = daemons.config(name)
        config = yaml.safe_load(path.read_text())
        for section, values in changes.items():
            config.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(config))
    daemons.start("server")
    daemons.start("client")
    assert daemons.json("server", "getinfo")["event_loop"] == "uvloop"
    assert daemons.json("client", "getinfo")["event_loop"] == "asyncio"
    txid = daemons.json("client", "open", "shop", "400000")["contract_txid"]
    daemons.cli("client", "pay", "shop", "2000", "--repeat", "20")
    (server_view,) = daemons.json("server", "listchannels", "open")
    assert server_view["paid"] == 1_000 + 20 * 2_000
    assert len(daemons.json("client", "close", txid)["settlement_txid"]) == 64
    assert "(TLS)" in daemons.log("server")

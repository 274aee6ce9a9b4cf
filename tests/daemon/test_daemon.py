"""`paychan daemon` end to end on regtest: a server daemon and a client daemon driven through
the CLI, graceful shutdown mid-stream, the control API's cookie, and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.store import SQLiteStore
from regtest.node import RegtestNode, free_port, regtest_nodes, wait_until

PAYCHAN = [sys.executable, "-m", "bitcoind_paychan.cli"]


class Daemons:
    """Writes the two daemons' configs and runs them and the CLI as separate processes."""

    def __init__(self, node: RegtestNode, tmp: Path) -> None:
        self.node, self.tmp = node, tmp
        self.server_port, self.metrics_port = free_port(), free_port()
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
        node.wallet_rpc("sendtoaddress", node.rpc("getnewaddress", wallet="client"), 5)
        node.mine(1)
        running = Daemons(node, tmp_path)
        try:
            yield running
        finally:
            running.stop_all()


def metric(text: str, sample: str) -> float:
    """The value of one sample (`name{labels}` exactly as exposed) in a scrape."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"{sample} not in metrics:\n{text}")


def test_open_pay_list_close_through_the_cli(daemons: Daemons) -> None:
    daemons.start("server")
    daemons.start("client")
    info = daemons.json("client", "getinfo")
    assert info["network"] == "regtest" and info["client"] == ["shop"]
    opened = daemons.json("client", "open", "shop", "400000")
    txid = opened["contract_txid"]
    assert opened["status"] == "open" and opened["paid"] == 1_000
    paid = daemons.cli("client", "pay", "shop", "2000", "hello", "--repeat", "10")
    assert "10/10 payments" in paid.stderr
    (client_view,) = daemons.json("client", "listchannels")
    (server_view,) = daemons.json("server", "listchannels", "open")
    assert client_view["paid"] == server_view["paid"] == 21_000
    table = daemons.cli("server", "listchannels").stdout
    assert "open" in table and txid[:16] in table
    payments = daemons.json("server", "listpayments", txid[:12])
    assert [p["amount"] for p in payments].count(2_000) == 10
    scraped = urllib.request.urlopen(
        f"http://127.0.0.1:{daemons.metrics_port}/metrics", timeout=10).read().decode()
    assert metric(scraped, 'paychan_payments_total{role="server"}') == 11
    assert metric(scraped, 'paychan_payment_amount_sat_total{role="server"}') == 21_000
    assert metric(scraped, 'paychan_channels{role="server",state="open"}') == 1
    assert metric(scraped, "paychan_node_up") == 1
    assert metric(scraped, 'paychan_payment_latency_seconds_count{role="server"}') == 10
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
    assert txid in other.stderr and "400000 sat" in other.stderr and "--new" in other.stderr
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


def test_graceful_shutdown_mid_stream_loses_nothing(daemons: Daemons) -> None:
    daemons.start("server")
    daemons.start("client")
    txid = daemons.json("client", "open", "shop", "4000000")["contract_txid"]
    stream = subprocess.Popen([*PAYCHAN, "--config", str(daemons.config("client")), "pay",
                               "shop", "1000", "--repeat", "3000"], stderr=subprocess.PIPE,
                              text=True)
    wait_until(lambda: SQLiteStore(daemons.tmp / "server.db").get(Role.SERVER, txid)
               is not None and SQLiteStore(daemons.tmp / "server.db").get(
                   Role.SERVER, txid).payments > 20,  # type: ignore[union-attr]
               what="the stream to be under way")
    daemons.procs["server"].send_signal(signal.SIGTERM)  # mid-stream
    assert daemons.procs["server"].wait(30) == 0
    assert stream.wait(60) != 0  # the stream broke off: the server went away
    server_paid = SQLiteStore(daemons.tmp / "server.db").get(Role.SERVER, txid)
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

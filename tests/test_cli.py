"""`paychan` as an operator types it, against a real daemon on regtest: whole txids, no
Python reprs, JSON errors, documented exit codes, a closed pipe, argument checks, did-you-mean,
the default configuration locations, and `getinfo` while the node is down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitcoind_paychan.cli import EXIT_PIPE, USAGE_ERROR, show
from bitcoind_paychan.daemon.config import SYSTEM_CONFIG, config_locations
from regtest.node import RegtestNode, free_port, regtest_nodes
from regtest.waiting import wait_until
from tests.conftest import self_paying_daemon

PAYCHAN = [sys.executable, "-m", "bitcoind_paychan.cli"]
TXID = re.compile(r"\b[0-9a-f]{64}\b")


def paychan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PAYCHAN, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


class Running:
    """A `paychan daemon` with both roles (its own server is `self`) beside a regtest node."""

    def __init__(self, node: RegtestNode, tmp: Path) -> None:
        self.node, self.tmp = node, tmp
        self.config = tmp / "paychan.yaml"
        self.config.write_text(yaml.safe_dump(self_paying_daemon(node, tmp)))
        self.process = subprocess.Popen([*PAYCHAN, "daemon", "--config", str(self.config)])
        wait_until(lambda: self.cli("getinfo").returncode == 0, 60, interval=0.2,
                   what="the daemon to answer")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return paychan("--config", str(self.config), *args)

    def restart(self) -> None:
        """Stop the daemon, then start it again on the same configuration and store."""
        self.stop()
        self.process = subprocess.Popen([*PAYCHAN, "daemon", "--config", str(self.config)])
        wait_until(lambda: self.cli("getinfo").returncode == 0, 60, interval=0.2,
                   what="the daemon to answer again")

    def json(self, *args: str) -> Any:
        done = self.cli("--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with regtest_nodes(1) as (node,):
        running = Running(node, tmp_path_factory.mktemp("cli"))
        try:
            opened = running.json("open", "self", "200000")
            running.cli("pay", opened["contract_txid"], "1000", "--repeat", "3")
            yield running
        finally:
            running.stop()


# -- output ----------------------------------------------------------------------------------


def test_txids_are_whole_in_every_output(daemon: Running) -> None:
    txid = daemon.json("listchannels")[0]["contract_txid"]  # the server's and client's view
    assert TXID.fullmatch(txid)
    for args in (["listchannels"], ["getchannel", txid[:10]], ["listpayments"]):
        out = daemon.cli(*args).stdout
        assert txid in out, out  # pasteable into bitcoin-cli
        assert "…" not in out


def test_getinfo_has_no_python_reprs(daemon: Running) -> None:
    out = daemon.cli("getinfo").stdout
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["client"] == "self"  # not ['self']
    assert lines["node"] == "up" and lines["node_error"] == "-"
    assert not re.search(r"[\[\]{}']|True|False|None", out), out
    counts = dict(re.findall(r"^channels (server|client) +(.*)$", out, re.M))
    for role in ("server", "client"):  # one channel, each side counted apart
        assert counts[role].startswith("open 1, closing 0"), out
        assert "forgotten 0" in counts[role] and "lifetime 1" in counts[role], out
    info = daemon.json("getinfo")["channels"]
    assert info["server"]["lifetime"] == info["client"]["lifetime"] == 1
    assert not re.search(r"[\[\]{}']|True|False|None", out), out


def test_stop_says_what_happens(capsys: pytest.CaptureFixture[str]) -> None:
    show("stop", {"stopping": True}, as_json=False)  # the daemon's answer to `stop`
    assert capsys.readouterr().out == "paychan daemon stopping\n"  # not "stopping  True"


# -- errors and exit codes -----------------------------------------------------------------------


def test_errors_with_json_are_json(daemon: Running) -> None:
    done = daemon.cli("--json", "getchannel", "ffff")
    assert done.returncode == 1 and done.stdout == ""
    assert json.loads(done.stderr) == {"code": -31, "message": "no channel 'ffff'"}
    usage = paychan("--json", "getinfo", "--jsno")
    assert usage.returncode == 2
    error = json.loads(usage.stderr)
    assert error["code"] == USAGE_ERROR and "did you mean '--json'" in error["message"]


def test_exit_codes_say_what_went_wrong(daemon: Running, tmp_path: Path) -> None:
    refused = daemon.cli("getchannel", "ffff")  # the daemon answered with an error
    assert refused.returncode == 1
    assert refused.stderr == "error: no channel 'ffff' (code -31)\n"
    assert daemon.cli("getchannel").returncode == 2  # usage
    nobody = tmp_path / "nobody.yaml"
    nobody.write_text(yaml.safe_dump({"control": {
        "listen": f"127.0.0.1:{free_port()}", "cookie_file": str(daemon.tmp / "control.cookie")}}))
    unreachable = paychan("--config", str(nobody), "getinfo")
    assert unreachable.returncode == 3 and "is `paychan daemon` running?" in unreachable.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("control:\n  listen: 10.1.2.3:4243\n")  # not a loopback address
    assert paychan("--config", str(bad), "getinfo").returncode == 2  # configuration


def test_a_reader_that_goes_away_is_no_traceback(daemon: Running) -> None:
    reader = subprocess.Popen([*PAYCHAN, "--config", str(daemon.config), "--json",
                               "listpayments"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # as `| head` does, before the answer arrives
    assert reader.wait(60) == EXIT_PIPE
    assert reader.stderr.read() == b""


def test_a_shell_pipe_into_head(daemon: Running) -> None:
    command = " ".join([*PAYCHAN, "--config", str(daemon.config), "--json", "listpayments"])
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -c 1"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == "[" and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [
    ["pay", "self", "1000", "--repeat", "0"],
    ["pay", "self", "0"],
    ["open", "self", "-5"],
    ["demo", "--payments", "-1"],
    ["demo", "--amount", "0"],
])
def test_counts_and_amounts_must_be_positive(args: list[str]) -> None:
    done = paychan(*args)
    assert done.returncode == 2
    assert "expected a whole number ≥ 1" in done.stderr and "None" not in done.stdout


@pytest.mark.parametrize(("args", "suggestion"), [
    (["getinf"], "did you mean 'getinfo'?"),
    (["listchanels"], "did you mean 'listchannels'?"),
    (["getinfo", "--jsn"], "did you mean '--json'?"),
    (["pay", "self", "1", "--repaet", "2"], "did you mean '--repeat'?"),
    (["--confg", "x", "getinfo"], "did you mean '--config'?"),
])
def test_typos_get_a_suggestion(args: list[str], suggestion: str) -> None:
    done = paychan(*args)
    assert done.returncode == 2 and suggestion in done.stderr, done.stderr


def test_version() -> None:
    from bitcoind_paychan import __version__

    done = paychan("--version")
    assert done.returncode == 0 and done.stdout == f"paychan {__version__}\n"


@pytest.mark.parametrize("amount", ["1000", "99"])
def test_open_too_small_says_too_small(daemon: Running, amount: str) -> None:
    done = daemon.cli("open", "self", amount, "--new")  # another channel beside the open one
    assert done.returncode == 1
    assert "too small" in done.stderr and "at least 100000 sat" in done.stderr, done.stderr
    assert "too large" not in done.stderr.lower().replace("channel_value_too_large", "")
    assert "CHANNEL_VALUE_TOO_LARGE" in done.stderr  # bitcoinj's wire code, explained
    assert done.stderr.rstrip().endswith("(code -34)"), done.stderr  # as other errors


@pytest.mark.parametrize("args", [
    ["open", "127.0.0.1:99999", "100000"],
    ["open", "127.0.0.1:abc", "100000"],
    ["pay", ":", "1000"],
    ["pay", "ws://127.0.0.1/nowhere", "1000"],
])
def test_a_malformed_address_is_a_usage_error(daemon: Running, args: list[str]) -> None:
    done = daemon.cli(*args)
    assert done.returncode == 2, done.stderr
    assert f"bad server address {args[1]!r}" in done.stderr, done.stderr
    assert "internal error" not in done.stderr
    assert "Traceback" not in (daemon.tmp / "daemon.log").read_text()
    refused = json.loads(daemon.cli("--json", *args).stderr)
    assert refused["code"] == -8


def test_a_port_in_use_is_not_a_bad_configuration(daemon: Running, tmp_path: Path) -> None:
    config = yaml.safe_load(daemon.config.read_text())
    config["store"]["path"] = str(tmp_path / "other.db")
    config["control"] = {"listen": f"127.0.0.1:{free_port()}",
                         "cookie_file": str(tmp_path / "other.cookie")}
    config["logging"]["file"] = str(tmp_path / "other.log")  # server.listen: the daemon's
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(config))
    done = subprocess.run([*PAYCHAN, "daemon", "--config", str(second)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # not 2: the file is right, the port is taken
    assert "address already in use" in done.stderr and "server.listen" in done.stderr


def test_a_bad_date_is_a_usage_error(daemon: Running) -> None:
    for date in ("yesterday", "2999-01-01"):
        done = daemon.cli("prunehistory", "--before", date)
        assert done.returncode == 2 and "prunehistory" in done.stderr, done.stderr


def test_messages_have_no_python_internals(daemon: Running) -> None:
    closed = daemon.cli("open", f"127.0.0.1:{free_port()}", "100000")
    assert closed.returncode == 1 and "connection refused" in closed.stderr, closed.stderr
    control = yaml.safe_load(daemon.config.read_text())["control"]["listen"]
    http = daemon.cli("open", control, "100000")  # an HTTP server, not a paychan one
    assert http.returncode == 1 and "speaks HTTP" in http.stderr, http.stderr
    assert "frame length" not in http.stderr
    server = yaml.safe_load(daemon.config.read_text())["server"]["listen"]
    tcp = daemon.cli("open", f"ws://{server}/paychan", "100000")  # TCP, not WebSocket
    assert tcp.returncode == 1 and "not a WebSocket listener" in tcp.stderr, tcp.stderr
    nobody = daemon.cli("open", f"ws://127.0.0.1:{free_port()}/paychan", "100000")
    assert nobody.returncode == 1 and "connection refused" in nobody.stderr, nobody.stderr
    for out in (closed.stderr, http.stderr, tcp.stderr, nobody.stderr):
        assert not re.search(r"Errno|ssl:default|\('|Error:|new=True", out), out
    log = (daemon.tmp / "daemon.log").read_text()
    assert not re.search(r"ChannelOpened|ChannelFinished|PaymentReceived", log)


def test_the_cli_reads_only_the_control_section(daemon: Running, tmp_path: Path) -> None:
    """An operator without the database password (or bitcoind's cookie) can run getinfo."""
    config = yaml.safe_load(daemon.config.read_text())
    config["store"] = {"engine": "postgresql",
                       "dsn": "postgresql://paychan:${PAYCHAN_TEST_UNSET}@127.0.0.1/paychan"}
    config["bitcoind"]["cookie_file"] = str(tmp_path / "not-readable-here")
    config["fees"] = {"max_rate": 0}  # the daemon's to check, not the CLI's
    copy = tmp_path / "operator.yaml"
    copy.write_text(yaml.safe_dump(config))
    done = paychan("--config", str(copy), "getinfo")
    assert done.returncode == 0, done.stderr
    config["control"]["cookie_mode"] = 0o644
    copy.write_text(yaml.safe_dump(config))
    bad = paychan("--config", str(copy), "getinfo")
    assert bad.returncode == 2 and "control.cookie_mode" in bad.stderr


def test_every_command_takes_json(daemon: Running) -> None:
    completion = json.loads(paychan("--json", "completion", "bash").stdout)
    assert completion["shell"] == "bash" and "paychan" in completion["script"]
    found = json.loads(paychan("bitcoind", "--json").stdout)
    assert Path(found["bitcoind"]).exists() and found["version"]
    paid = daemon.json("pay", "self", "7", "tea")
    assert (paid["amount"], paid["info"]) == (7, "tea")
    assert paid["paid"] == paid["value"] - paid["remaining"] and paid["payment"] >= 2


def test_pay_says_what_it_paid_and_the_channel_total(daemon: Running) -> None:
    before = daemon.json("getchannel", "self")
    done = daemon.cli("pay", "self", "10", "cake", "--repeat", "3")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # not a terminal: no progress line
    txid, paid = before["contract_txid"], before["paid"] + 30
    assert f"paid 3 × 10 sat = 30 sat (cake) through channel {txid}" in done.stdout
    assert (f"channel total: {paid} of {before['value']} sat paid in {before['payments'] + 3} "
            f"payments") in done.stdout, done.stdout


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_repeat_prints_a_summary(daemon: Running) -> None:
    payments = len(daemon.json("listpayments"))
    # As a shell starts a foreground command: Ctrl-C not ignored, even if this test runs as a
    # background job (which inherits SIGINT ignored, and so would the command: POSIX's rule).
    stream = subprocess.Popen([*PAYCHAN, "--config", str(daemon.config), "pay", "self", "1",
                               "--repeat", "100000"], stderr=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONFAULTHANDLER": "1"},
                              preexec_fn=_interruptible)
    wait_until(lambda: len(daemon.json("listpayments")) > payments + 4,
               what="the stream to be under way")
    stream.send_signal(signal.SIGINT)
    try:
        _, err = stream.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # where it is stuck: faulthandler's dump on SIGABRT
        stream.send_signal(signal.SIGABRT)
        _, err = stream.communicate(timeout=30)
        raise AssertionError(f"still running 60 s after SIGINT:\n{err}") from None
    assert stream.returncode == 130
    assert re.search(r"interrupted: \d+ of 100000 payments of 1 sat made", err), err
    assert "Traceback" not in err


# -- where the configuration is found ------------------------------------------------------------


def test_the_configuration_is_found_without_config(daemon: Running, tmp_path: Path) -> None:
    empty = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert paychan("getinfo", env=empty | {"PAYCHAN_CONF": str(daemon.config)}).returncode == 0
    user = tmp_path / "xdg" / "paychan" / "paychan.yaml"
    user.parent.mkdir(parents=True)
    user.write_text(daemon.config.read_text())
    assert paychan("getinfo", env=empty).returncode == 0
    assert config_locations()[-1] == SYSTEM_CONFIG == Path("/etc/paychan/paychan.yaml")
    home = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": ""}
    assert paychan("getinfo", env=home).returncode == 3  # ~/.config/paychan: none there


# -- the node goes away --------------------------------------------------------------------------


def test_getinfo_answers_while_the_node_is_down(tmp_path: Path) -> None:
    with regtest_nodes(1) as (node,):
        running = Running(node, tmp_path)
        try:
            height = running.json("getinfo")["height"]
            node.stop()
            info = running.json("getinfo")
            assert info["node"] == "down" and info["height"] == height
            assert "bitcoind" in info["node_error"] or "connect" in info["node_error"]
            human = running.cli("getinfo")
            assert human.returncode == 0 and re.search(r"^node +down$", human.stdout, re.M)
        finally:
            running.stop()


# -- commands find what they should ---------------------------------------------------------------


def test_pay_and_close_find_the_channel_they_are_told(tmp_path: Path) -> None:
    """Seen: after a restart `pay <txid>` said "unknown server"; with two open channels to one
    server `pay self` picked one while `close self` refused; `close` said it asked the server
    when it did not; the settlement txid showed in getchannel only seconds after `close`."""
    with regtest_nodes(1) as (node,):
        running = Running(node, tmp_path)
        try:
            txid = running.json("open", "self", "200000")["contract_txid"]
            running.restart()
            paid = running.json("pay", txid, "1000")  # resumed by its txid
            assert (paid["contract_txid"], paid["paid"]) == (txid, 2_000)
            other = running.json("open", "self", "300000", "--new")["contract_txid"]
            for command in (["pay", "self", "1000"], ["close", "self"]):  # one rule for both
                refused = running.cli(*command)
                assert refused.returncode == 1, refused.stderr
                assert "2 channels to server 'self' are open" in refused.stderr
                assert txid in refused.stderr and other in refused.stderr
                assert "asking the server" not in refused.stderr
            shown = running.json("getchannel", txid)
            assert shown["role"] == "client" and shown["server"]["role"] == "server"
            assert shown["server"]["paid"] == shown["paid"] == 2_000  # both sides of it
            closing = running.cli("close", txid)
            assert closing.returncode == 0, closing.stderr
            assert "asking the server to settle" in closing.stderr
            settlement = re.search(r"^settlement_txid +([0-9a-f]{64})$", closing.stdout, re.M)
            assert settlement, closing.stdout
            shown = running.json("getchannel", txid)  # at once: stored with the settlement
            assert shown["closing_txid"] == settlement.group(1)
            assert shown["server"]["closing_txid"] == settlement.group(1)
            again = running.cli("close", txid)  # reported as it is: nothing asked
            assert again.returncode == 0 and "asking" not in again.stderr
            closed = running.cli("pay", txid, "1000")
            assert closed.returncode == 1
            assert f"channel {txid} is closing; open a new one" in closed.stderr
            assert running.json("pay", "self", "1000")["contract_txid"] == other
        finally:
            running.stop()

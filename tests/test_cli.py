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
from regtest.node import RegtestNode, free_port, regtest_nodes, wait_until
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
    assert lines["channels"].startswith("open 2, closing 0")  # one channel, both sides
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
    bad.write_text("fees:\n  max_rate: 0\n")
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


def test_open_too_small_says_too_small(daemon: Running) -> None:
    done = daemon.cli("open", "self", "1000", "--new")  # another channel beside the open one
    assert done.returncode == 1
    assert "too small" in done.stderr and "at least 100000 sat" in done.stderr, done.stderr
    assert "too large" not in done.stderr.lower().replace("channel_value_too_large", "")


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

"""The main job, `paychan demo`: every version, and the JSON it prints last."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from bitcoind_paychan.demo import run_demo
from bitcoind_paychan.regtest.postgres import setup_steps

KEYS = {"version", "contract_txid", "settlement_txid", "payments", "paid_sat",
        "server_received_sat", "client_change_sat", "fee_sat", "settlement_confirmations"}


@pytest.mark.parametrize("version", [1, 2])
def test_demo_adds_up(version: int, caplog: pytest.LogCaptureFixture) -> None:
    log = io.StringIO()
    result = run_demo(version, payments=7, amount=2_000, out=log)
    assert result.version == version
    assert result.paid_sat == 1_000 + 7 * 2_000  # the initial payment, then 7 more
    assert result.server_received_sat + result.fee_sat == result.paid_sat
    assert result.settlement_confirmations == 1
    assert ("mined directly" in log.getvalue()) == (version == 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_cli_prints_one_json_object_last() -> None:
    done = subprocess.run([sys.executable, "-m", "bitcoind_paychan.cli", "demo", "--payments",
                           "5", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == KEYS
    assert result["version"] == 3 and result["payments"] == 5
    assert result["client_change_sat"] + result["paid_sat"] == 1_000_000
    assert "5/5 payments" in done.stderr


def test_demo_on_a_postgresql_store_adds_up() -> None:
    steps = setup_steps()  # what it changes on this machine (as root) before it runs
    done = subprocess.run([sys.executable, "-m", "bitcoind_paychan.cli", "demo", "--payments",
                           "4", "--store", "postgresql", "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["payments"] == 4 and result["client_change_sat"] + result["paid_sat"] == 1_000_000
    assert "server's store: PostgreSQL database" in done.stderr
    said = done.stderr.find("as root, the demo will first")
    assert (said >= 0) == bool(steps)  # said before it is done, or nothing to say
    assert all(0 <= said < done.stderr.find(step) for step in steps)
    assert said < done.stderr.find("starting a throwaway PostgreSQL server")

"""The main job, `paychan demo`: every version, and the JSON it prints last."""

from __future__ import annotations

import io
import json
import logging
import pwd
import subprocess
import sys

import pytest

from bitcoind_paychan import cli, demo
from bitcoind_paychan.channel.kinds.registry import DEFAULT_VERSION
from bitcoind_paychan.demo import run_demo
from bitcoind_paychan.errors import SystemChangeRefused
from bitcoind_paychan.regtest import postgres
from bitcoind_paychan.regtest.postgres import setup_steps

KEYS = {"version", "contract_txid", "settlement_txid", "payments", "paid_sat",
        "server_received_sat", "client_change_sat", "fee_sat", "settlement_confirmations"}


@pytest.mark.parametrize("version", [1, 2, 4])
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
    assert result["version"] == DEFAULT_VERSION and result["payments"] == 5
    assert result["client_change_sat"] + result["paid_sat"] == 1_000_000
    assert "5/5 payments" in done.stderr


def test_demo_on_a_postgresql_store_adds_up() -> None:
    steps = setup_steps()  # what it changes on this machine (as root) before it runs
    done = subprocess.run([sys.executable, "-m", "bitcoind_paychan.cli", "demo", "--payments",
                           "4", "--store", "postgresql", "--allow-system-changes", "--json"],
                          capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["payments"] == 4 and result["client_change_sat"] + result["paid_sat"] == 1_000_000
    assert "server's store: PostgreSQL database" in done.stderr
    said = done.stderr.find("as root, the demo will first")
    assert (said >= 0) == bool(steps)  # said before it is done, or nothing to say
    assert all(0 <= said < done.stderr.find(step) for step in steps)
    assert said < done.stderr.find("starting a throwaway PostgreSQL server")


WOULD = ["install Debian's postgresql package (apt-get update; apt-get install postgresql)",
         "create the system user paychan-pg (useradd --system; initdb refuses to run as root)"]


def _machine() -> tuple[object, bool, int]:
    """What the PostgreSQL set-up could change: the programs found, the system user's
    existence, and the throwaway servers running in this process."""
    try:
        pwd.getpwnam(postgres.SYSTEM_USER)
        user = True
    except KeyError:
        user = False
    return postgres._installed(), user, len(postgres._live)


def test_demo_refuses_to_change_the_machine_unless_asked() -> None:
    before, log = _machine(), io.StringIO()
    with pytest.raises(SystemChangeRefused) as refused:
        run_demo(3, payments=1, out=log, store="postgresql", needed=lambda: WOULD)
    message = str(refused.value)
    assert all(step in message for step in WOULD)  # names each change
    assert "--allow-system-changes" in message and "Nothing was changed" in message
    assert log.getvalue() == ""  # refused before any node or server started
    assert _machine() == before


def test_demo_says_what_it_will_change_before_it_starts_anything() -> None:
    log = io.StringIO()
    demo.check_system_changes("postgresql", True, log, needed=lambda: WOULD)
    assert log.getvalue().startswith("as root, the demo will first " + WOULD[0])
    quiet = io.StringIO()
    demo.check_system_changes("sqlite", False, quiet, needed=lambda: WOULD)  # sqlite: no set-up
    demo.check_system_changes("postgresql", False, quiet, needed=lambda: [])  # nothing to change
    assert quiet.getvalue() == ""


def test_cli_refusal_is_a_usage_error_naming_the_option(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "setup_steps", lambda: WOULD)  # as if on a fresh root machine
    before = _machine()
    assert cli.main(["demo", "--store", "postgresql", "--json"]) == 2
    message = json.loads(capsys.readouterr().err)["message"]
    assert "--allow-system-changes" in message and WOULD[1] in message
    assert _machine() == before

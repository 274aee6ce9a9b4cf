"""The daemon on a PostgreSQL store: `store: {engine: postgresql, dsn}` with the password from
the environment, payments kept across a restart, `getinfo` naming the store, and one clear line
when the database refuses. A real PostgreSQL and real regtest daemons."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.daemon.config import config_from_dict
from bitcoind_paychan.daemon.daemon import _open_store
from bitcoind_paychan.store.codec import SCHEMA_VERSION
from bitcoind_paychan.store.postgres import PostgresStore
from regtest.postgres import PostgresServer
from tests.daemon.test_daemon import PAYCHAN, Daemons, daemons

__all__ = ["daemons"]
PASSWORD_VARIABLE = "PAYCHAN_TEST_PGPASSWORD"


def on_postgresql(daemons: Daemons, name: str, dsn: str) -> None:
    """Point daemon `name`'s store at `dsn`."""
    path = daemons.config(name)
    config = yaml.safe_load(path.read_text())
    config["store"] = {"engine": "postgresql", "dsn": dsn}
    path.write_text(yaml.safe_dump(config))


def test_a_server_daemon_on_postgresql_keeps_its_payments(
        daemons: Daemons, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_server.new_database()
    monkeypatch.setenv(PASSWORD_VARIABLE, postgres_server.password)
    from_environment = f"${{{PASSWORD_VARIABLE}}}"  # the config file holds no password
    on_postgresql(daemons, "server", postgres_server.dsn(database, password=from_environment))
    daemons.start("server")
    daemons.start("client")
    store = daemons.json("server", "getinfo")["store"]
    assert store["engine"] == "postgresql" and store["schema_version"] == SCHEMA_VERSION
    assert database in store["location"] and postgres_server.password not in store["location"]
    txid = daemons.json("client", "open", "shop", "400000")["contract_txid"]
    daemons.cli("client", "pay", "shop", "2000", "--repeat", "5")
    assert daemons.cli("server", "stop").returncode == 0
    assert daemons.procs["server"].wait(30) == 0
    with PostgresStore(postgres_server.dsn(database), read_only=True) as looking:
        assert looking.get(Role.SERVER, txid).paid == 11_000  # type: ignore[union-attr]
    daemons.start("server")  # the same database again: nothing lost
    payments = daemons.json("server", "listpayments", txid[:12])
    assert [p["amount"] for p in payments].count(2_000) == 5
    assert postgres_server.password not in daemons.log("server")


def test_a_database_that_refuses_is_one_line_naming_key_and_file(
        daemons: Daemons, postgres_server: PostgresServer) -> None:
    on_postgresql(daemons, "server", postgres_server.dsn(password="not-the-password-9"))
    done = subprocess.run([*PAYCHAN, "daemon", "--config", str(daemons.config("server"))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert f"store.dsn in {daemons.config('server')}" in line
    assert "password authentication failed" in line and "wrong user or password" in line
    assert "not-the-password-9" not in line and Path(daemons.config("server")).exists()


def test_the_store_timeouts_bound_each_session_of_the_daemons_store(postgres_dsn: str) -> None:
    store: dict[str, Any] = {"engine": "postgresql", "dsn": postgres_dsn,
                             "statement_timeout": 45, "lock_timeout": 4,
                             "idle_in_transaction_session_timeout": 1.5}
    opened = _open_store(config_from_dict({"store": store}))
    assert isinstance(opened, PostgresStore)
    with opened, opened._connection("show the timeouts") as session:
        shown = [session.execute(f"SHOW {name}").fetchone()[0] for name in
                 ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")]
    assert shown == ["45s", "4s", "1500ms"]

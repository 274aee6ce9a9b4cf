"""The daemon's log lines: a channel's contract txid and peer on every line about it (JSON
fields, or a human prefix), and levels per subsystem (`logging.levels`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.daemon.logs import SUBSYSTEMS, HumanFormatter, JsonFormatter, Logs
from bitcoind_paychan.daemon.rpcclient import ControlClient
from bitcoind_paychan.logcontext import (
    ChannelFields,
    bind_channel,
    channel_fields,
    channel_logging,
)
from regtest.node import RegtestNode, regtest_nodes
from tests.conftest import running_daemon as running

TXID = "ab" * 32


def fields(made: logging.LogRecord) -> tuple[str, str]:
    return getattr(made, "contract_txid", ""), getattr(made, "peer", "")


def record(message: str, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("bitcoind_paychan.service.server", logging.INFO, __file__, 1,
                             message, (), None)
    made.__dict__.update(extra)
    ChannelFields().filter(made)
    return made


def test_formats_carry_the_channel() -> None:
    about = record("payment received", **channel_fields(TXID, "127.0.0.1:4242"))
    entry = json.loads(JsonFormatter().format(about))
    assert entry["contract_txid"] == TXID and entry["peer"] == "127.0.0.1:4242"
    line = HumanFormatter().format(about)
    assert f"bitcoind_paychan.service.server: [channel={TXID} peer=127.0.0.1:4242] " \
           "payment received" in line
    plain = record("listening")
    assert "contract_txid" not in json.loads(JsonFormatter().format(plain))
    assert HumanFormatter().format(plain).endswith("bitcoind_paychan.service.server: listening")


def test_context_binds_lines_to_a_channel_within_its_task_only() -> None:
    with channel_logging(TXID, "peer:1"):
        assert fields(record("x")) == (TXID, "peer:1")
    assert fields(record("x")) == ("", "")

    async def connection() -> tuple[str, str]:
        bind_channel(peer="peer:2")
        bind_channel(TXID)
        return fields(record("y"))

    async def main() -> None:
        assert await asyncio.create_task(connection()) == (TXID, "peer:2")
        assert fields(record("z")) == ("", "")  # the task's binding stayed in the task

    asyncio.run(main())


@pytest.fixture(scope="module")
def node() -> Iterator[RegtestNode]:
    with regtest_nodes(1) as (started,):
        yield started


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_real_daemon_tags_channel_lines_and_honours_subsystem_levels(
        node: RegtestNode, tmp_path: Path) -> None:
    async def scenario() -> str:
        levels = {"control": "debug", "daemon": "warning"}
        async with running(node, tmp_path, logging={"format": "json", "levels": levels}) as d:
            opened = await d.open("self", 200_000)
            client = ControlClient(f"http://{d.config.control.listen}",
                                   d.config.control.cookie_file, timeout=30)
            await asyncio.to_thread(client.call, "pay", opened["contract_txid"], 1000)
            await d.close(opened["contract_txid"])
            return str(opened["contract_txid"])

    txid = asyncio.run(scenario())
    log = lines(tmp_path / "daemon.log")
    about = [entry for entry in log if txid in entry["message"]]
    assert about and all(entry.get("contract_txid") == txid for entry in about), about
    connections = [e for e in about if e["logger"].rpartition(".")[2] in ("server", "client")]
    assert connections and all(entry.get("peer") for entry in connections), connections
    server = [e for e in log if e["logger"] == "bitcoind_paychan.service.server"
              and e.get("contract_txid") == txid]
    assert any(e["message"].startswith("broadcast contract") for e in server)
    assert any(e["message"].startswith("broadcast settlement") for e in server)
    # control at debug: its per-call lines show; daemon at warning: its info lines do not
    assert any(e["logger"].endswith("control") and e["level"] == "debug" for e in log)
    assert not any(e["logger"].endswith("daemon.daemon") and e["level"] == "info" for e in log)
    assert not any(e["level"] == "debug" and not e["logger"].endswith("control") for e in log)


def test_a_new_daemons_logs_forget_the_subsystem_levels_of_the_last(tmp_path: Path) -> None:
    Logs(file=tmp_path / "first.log", levels={"daemon": "warning", "server": "debug"})
    Logs(file=tmp_path / "second.log")
    for logger in SUBSYSTEMS.values():
        assert logging.getLogger(logger).level == logging.NOTSET
        assert logging.getLogger(logger).getEffectiveLevel() == logging.INFO

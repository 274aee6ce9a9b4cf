"""`paychan demo`: a whole channel's life on regtest, checked against both wallets.

Two regtest nodes (fetched if needed), a server beside one and a client beside the other:
open a channel, stream payments, close, mine the settlement, and show who got what.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from bitcoind_paychan.bitcoin.address import script_to_address
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.script import p2wpkh_script
from bitcoind_paychan.errors import SystemChangeRefused
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig, to_sat
from bitcoind_paychan.node.ports import NodePorts
from bitcoind_paychan.regtest.node import RegtestNode, regtest_nodes, sync_tips
from bitcoind_paychan.regtest.postgres import PostgresServer, setup_steps
from bitcoind_paychan.service.client import PaymentClient
from bitcoind_paychan.service.regtest import MiningBroadcaster, regtest_ports
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.store import ChannelStore, SQLiteStore, open_store


@dataclass(frozen=True)
class DemoResult:
    version: int
    contract_txid: str
    settlement_txid: str
    payments: int
    paid_sat: int
    server_received_sat: int
    client_change_sat: int
    fee_sat: int
    settlement_confirmations: int


def node_config(node: RegtestNode) -> NodeConfig:
    return NodeConfig(url=node.rpc_url, chain="regtest", wallet=node.wallet,
                      cookie_file=node.cookie_path)


class Progress:
    """A one-line progress bar on a terminal (plain lines elsewhere)."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.out, self.start = total, out, time.perf_counter()
        self.tty = out.isatty()
        self.step = max(total // 10, 1)

    def update(self, done: int, paid: int) -> None:
        if not self.tty and done % self.step and done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed else 0.0
        filled = 30 * done // self.total
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} payments, "
                f"{paid} sat, {rate:.0f}/s")
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n",
              file=self.out, flush=True)
        if self.tty and done == self.total:
            print(file=self.out)


async def stream_payments(server_node: RegtestNode, client_node: RegtestNode, version: int,
                          payments: int, amount: int, workdir: Path, out: TextIO,
                          server_store: ChannelStore) -> tuple[str, str, int, list[str]]:
    server_rpc = AsyncBitcoind(Bitcoind(node_config(server_node)))
    mining = MiningBroadcaster(server_rpc, server_rpc)
    server = PaymentServer(NodePorts.of(server_rpc, broadcaster=mining), server_store)
    client = PaymentClient(regtest_ports(Bitcoind(node_config(client_node))),
                           SQLiteStore(workdir / "client.db"))
    host, port = await server.listen()
    value = max(1_000_000, (payments + 2) * amount + 50_000)
    print(f"server listening on {host}:{port}; client opens a {value} sat channel "
          f"(version {version})", file=out)
    channel = await client.open(host, port, value, version=version)
    expiry = dt.datetime.fromtimestamp(channel.record.contract.expiry, dt.UTC)
    print(f"contract {channel.contract_txid} broadcast by the server; the client's refund "
          f"unlocks at {expiry:%Y-%m-%d %H:%M} UTC", file=out)
    progress = Progress(payments, out)
    for i in range(payments):
        await channel.pay(amount, f"demo payment {i + 1}".encode())
        progress.update(i + 1, channel.paid)
    settlement = await channel.close()
    await server.stop()
    print(f"closed: settlement {settlement.txid_hex} received and checked by the client",
          file=out)
    return channel.contract_txid, settlement.txid_hex, channel.paid, mining.mined


ALLOW_OPTION = "--allow-system-changes"


def check_system_changes(engine: str, allowed: bool, out: TextIO,
                         needed: Callable[[], list[str]] | None = None) -> None:
    """Before anything starts: what the store's set-up would change on this machine (`needed`:
    installing PostgreSQL, creating its system user). Refused unless `allowed`; said first
    when allowed."""
    steps = (needed or setup_steps)() if engine == "postgresql" else []
    if not steps:
        return
    if not allowed:
        raise SystemChangeRefused(
            "the PostgreSQL demo would first change this machine: " + "; and ".join(steps)
            + f" (kept afterwards). Nothing was changed: run it again with {ALLOW_OPTION} "
            "to allow this (on a throwaway machine or container), or install PostgreSQL "
            "yourself, or use the default --store sqlite")
    print("as root, the demo will first " + "; and ".join(steps) + " (kept afterwards)",
          file=out, flush=True)


def server_store(engine: str, workdir: Path, stack: ExitStack, out: TextIO) -> ChannelStore:
    """The server's store: an SQLite file, or a database on a throwaway PostgreSQL server."""
    if engine == "sqlite":
        return stack.enter_context(SQLiteStore(workdir / "server.db"))
    print("starting a throwaway PostgreSQL server for the server's store…", file=out)
    database = stack.enter_context(PostgresServer())
    store = stack.enter_context(open_store(engine="postgresql",
                                           dsn=database.dsn(database.new_database())))
    print(f"server's store: {store.info().location}", file=out)
    return store


def run_demo(version: int = 3, payments: int = 100, amount: int = 1_000,
             out: TextIO = sys.stderr, store: str = "sqlite", *,
             allow_system_changes: bool = False,
             needed: Callable[[], list[str]] | None = None) -> DemoResult:
    """Run the demo (the server's store of engine `store`); progress goes to `out`; returns
    the checked outcome. Raises SystemChangeRefused, before anything starts, when the store's
    set-up would change this machine (`needed`) and `allow_system_changes` is false."""
    check_system_changes(store, allow_system_changes, out, needed)
    print("starting two regtest nodes (server side, client side)…", file=out)
    with regtest_nodes(2, connected=True) as (server_node, client_node), \
            tempfile.TemporaryDirectory(prefix="paychan-demo-") as tmp, ExitStack() as stack:
        contract_txid, settlement_txid, paid, mined = asyncio.run(stream_payments(
            server_node, client_node, version, payments, amount, Path(tmp), out,
            server_store(store, Path(tmp), stack, out)))
        if mined:
            print("note: Bitcoin Knots refuses to relay bare multisig outputs, so the version 1 "
                  f"contract {mined[0]} was mined directly with generateblock (regtest only)",
                  file=out)
        burn = script_to_address(p2wpkh_script(PrivateKey.generate().pub.hash160()),
                                 Network.REGTEST)
        server_node.mine(1, burn)  # to an address neither wallet owns
        sync_tips([server_node, client_node])
        return checked_result(server_node, client_node, version, contract_txid,
                              settlement_txid, payments, paid)


def checked_result(server_node: RegtestNode, client_node: RegtestNode, version: int,
                   contract_txid: str, settlement_txid: str, payments: int, paid: int
                   ) -> DemoResult:
    """Read the outcome from the chain and both wallets; raise if anything disagrees."""
    settlement = client_node.rpc("getrawtransaction", settlement_txid, True)
    contract = client_node.rpc("getrawtransaction", contract_txid, True)
    value = _sat(contract["vout"][0]["value"])
    outputs = [_sat(o["value"]) for o in settlement["vout"]]
    change = outputs[0] if len(outputs) == 2 else 0
    received = outputs[-1]
    fee = value - sum(outputs)
    server_coin = _wallet_coin(server_node, settlement_txid, len(outputs) - 1)
    client_coin = _wallet_coin(client_node, settlement_txid, 0) if change else 0
    problems = []
    if server_coin != received:
        problems.append(f"server wallet holds {server_coin}, settlement pays it {received}")
    if client_coin != change:
        problems.append(f"client wallet holds {client_coin}, settlement pays it {change}")
    if change != value - paid:
        problems.append(f"client change {change} is not value {value} − paid {paid}")
    if received + fee != paid:
        problems.append(f"server got {received} + fee {fee}, but {paid} was paid")
    if problems:
        raise RuntimeError("demo outcome does not add up: " + "; ".join(problems))
    return DemoResult(version, contract_txid, settlement_txid, payments, paid, received, change,
                      fee, int(settlement.get("confirmations", 0)))


def _sat(btc: Decimal) -> int:
    return to_sat(btc)


def _wallet_coin(node: RegtestNode, txid: str, vout: int) -> int:
    for coin in node.wallet_rpc("listunspent", 0):
        if coin["txid"] == txid and coin["vout"] == vout:
            return _sat(coin["amount"])
    return 0


def print_summary(result: DemoResult, out: TextIO) -> None:
    rows = [
        ("channel version", str(result.version)),
        ("contract", result.contract_txid),
        ("settlement", f"{result.settlement_txid} ({result.settlement_confirmations} conf)"),
        ("payments", str(result.payments)),
        ("client paid", f"{result.paid_sat} sat (the opening payment included)"),
        ("server received", f"{result.server_received_sat} sat (in its wallet)"),
        ("client change", f"{result.client_change_sat} sat (in its wallet)"),
        ("settlement fee", f"{result.fee_sat} sat (from the server's share)"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nsummary (checked against both wallets):", file=out)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)


def main(version: int, payments: int, amount: int, as_json: bool, store: str = "sqlite",
         allow_system_changes: bool = False) -> int:
    result = run_demo(version, payments, amount, sys.stderr if as_json else sys.stdout, store,
                      allow_system_changes=allow_system_changes)
    if as_json:
        print(json.dumps(asdict(result)))
    else:
        print_summary(result, sys.stdout)
    return 0

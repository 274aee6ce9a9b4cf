"""A server or a client in a process of its own, for kill -9 tests.

    python -m tests.service.side_process server NODE.json STORE PORT [--hold N] [--after N]
        [--instance NAME] [--reanchoring]
    python -m tests.service.side_process client NODE.json STORE PORT --pays K [--close]
        [--reanchoring]

NODE.json: {"url", "cookie", "wallet"}. Each line printed is one JSON event. `--hold N` makes
the server wait before its Nth broadcast, `--after N` after it, until the file STORE.go
exists (so a test can kill it at exactly that point). A STORE that is a postgresql:// DSN is
that shared database (with `--instance`, the instance's name among those sharing it);
`--reanchoring`: the server takes re-anchors (issue 23); the client re-anchors its channel
(a renewal) after its payments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.effects import PaymentReceived
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
from bitcoind_paychan.node.ports import NodePorts
from bitcoind_paychan.service.client import PaymentClient
from bitcoind_paychan.service.regtest import MiningBroadcaster, regtest_ports
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import ChannelStore, SQLiteStore, open_store
from bitcoind_paychan.store.leases import ClusterPolicy, leases_for
from tests.service.conftest import FAST


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class HoldingBroadcaster(MiningBroadcaster):
    """Stops before (or after) the broadcast of its Nth distinct transaction until a file
    appears. A rebroadcast (the watcher's, of an unconfirmed contract) does not count: the
    Nth is the same transaction whenever the watcher runs."""

    def __init__(self, node: AsyncBitcoind, gate: Path, before: int, after: int) -> None:
        super().__init__(node, node)
        self.gate, self.before, self.after = gate, before, after
        self.seen: list[str] = []

    async def broadcast(self, tx: Transaction) -> str:
        new = tx.txid_hex not in self.seen
        if new:
            self.seen.append(tx.txid_hex)
        count = len(self.seen) if new else -1  # never a hold (0: none asked)
        if count == self.before:
            await self._hold("before", tx, count)
        txid = await super().broadcast(tx)
        if count == self.after:
            await self._hold("after", tx, count)
        return txid

    async def _hold(self, when: str, tx: Transaction, count: int) -> None:
        say("holding", when=when, n=count, txid=tx.txid_hex)
        while not self.gate.exists():
            await asyncio.sleep(0.05)


def node_of(path: str) -> Bitcoind:
    info = json.loads(Path(path).read_text())
    return Bitcoind(NodeConfig(url=info["url"], chain="regtest", wallet=info["wallet"],
                               cookie_file=Path(info["cookie"])))


async def serve(args: argparse.Namespace) -> None:
    gate = Path(args.store + ".go")
    node = AsyncBitcoind(node_of(args.node))
    wallet = NodePorts.of(node, broadcaster=HoldingBroadcaster(node, gate, args.hold,
                                                               args.after))

    def report(event: ServerEvent) -> None:
        if isinstance(event, PaymentReceived):
            say("payment", contract=event.record.contract_txid, paid=event.record.paid)
        else:
            say(type(event).__name__, contract=getattr(getattr(event, "record", None),
                                                       "contract_txid", None))

    store = store_of(args.store)
    server = PaymentServer(wallet, store, ServerPolicy(reanchoring=args.reanchoring),
                           on_event=report, autopilot=FAST,
                           poll_interval=0.2, review_interval=0.5,
                           leases=leases_for(store, ClusterPolicy(args.instance or None, 1.0)))
    await server.listen("127.0.0.1", args.port)
    say("listening")
    await asyncio.Event().wait()


def store_of(name: str) -> ChannelStore:
    if name.startswith("postgresql://"):
        return open_store(engine="postgresql", dsn=name)
    return SQLiteStore(name)


async def pay(args: argparse.Namespace) -> None:
    client = PaymentClient(regtest_ports(node_of(args.node)), SQLiteStore(args.store),
                           autopilot=FAST, poll_interval=0.2, review_interval=0.5,
                           policy=ClientPolicy(1_000_000, reanchoring=args.reanchoring))
    version = 3 if args.reanchoring else None  # re-anchoring: version 3 (issue 23)
    channel = await client.open("127.0.0.1", args.port, 1_000_000, version=version)
    say("opened", contract=channel.contract_txid, paid=channel.paid)
    for _ in range(args.pays):
        await channel.pay(1_000)
        say("paid", contract=channel.contract_txid, paid=channel.paid)
    if args.reanchoring:
        say("reanchoring")
        signed = await channel.reanchor(0, 2 * 24 * 3600)
        say("reanchored", contract=signed.channel_id)
    if args.close:
        settlement = await channel.close()
        say("closed", settlement=settlement.txid_hex)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("node")
    parser.add_argument("store")
    parser.add_argument("port", type=int)
    parser.add_argument("--hold", type=int, default=0)
    parser.add_argument("--after", type=int, default=0)
    parser.add_argument("--pays", type=int, default=0)
    parser.add_argument("--close", action="store_true")
    parser.add_argument("--instance", default="")
    parser.add_argument("--reanchoring", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args) if args.role == "server" else pay(args))


if __name__ == "__main__":
    main()

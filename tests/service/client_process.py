"""A client in its own process, for kill -9 tests: opens (or resumes) and pays forever.

    python -m tests.service.client_process RPC_URL COOKIE WALLET STORE HOST PORT VERSION
Prints one JSON line per acknowledged payment: {"contract": txid, "paid": sat}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
from bitcoind_paychan.service.client import PaymentClient
from bitcoind_paychan.store import SQLiteStore


async def main(url: str, cookie: str, wallet: str, store: str, host: str, port: str,
               version: str) -> None:
    node = Bitcoind(NodeConfig(url=url, chain="regtest", wallet=wallet, cookie_file=Path(cookie)))
    client = PaymentClient(AsyncBitcoind(node), SQLiteStore(store))
    channel = await client.open(host, int(port), 1_000_000, version=int(version))
    while True:
        await channel.pay(1_000)
        print(json.dumps({"contract": channel.contract_txid, "paid": channel.paid}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:8]))

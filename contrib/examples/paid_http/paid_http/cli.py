"""`python -m paid_http serve|offer|get|close`: the paid API and its client from a shell.

    python -m paid_http serve --wallet api --store api.db --listen 127.0.0.1:8402 --price 100
    python -m paid_http offer http://127.0.0.1:8402/api/hello
    python -m paid_http get http://127.0.0.1:8402/api/hello --wallet reader --store reader.db
    python -m paid_http close http://127.0.0.1:8402/api/hello --wallet reader --store reader.db

Each side needs a bitcoind wallet (`--cookie`, `--wallet`, `--rpc-url`) and its own store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import PaychanError
from bitcoind_paychan.gateway.payer import DEFAULT_VALUE
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
from bitcoind_paychan.service.server import ServerManager
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport.paidhttp import Offer

from paid_http.client import PaidClient, client_manager
from paid_http.server import ENDPOINT, PaidApi, run_api

log = logging.getLogger("paid_http")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m paid_http", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the paid API")
    serve.add_argument("--listen", default="127.0.0.1:8402", help="HOST:PORT (default %(default)s)")
    serve.add_argument("--price", type=int, default=100, help="sat per request (%(default)s)")
    get = commands.add_parser("get", help="GET a URL of the paid API, paying for it")
    get.add_argument("url")
    get.add_argument("--repeat", type=int, default=1, help="how many times (%(default)s)")
    get.add_argument("--value", type=int, default=DEFAULT_VALUE,
                     help="sat to lock in a new channel (%(default)s)")
    close = commands.add_parser("close", help="settle the channel that pays for a URL")
    close.add_argument("url")
    offer = commands.add_parser("offer", help="print a URL's offer (its 402 answer)")
    offer.add_argument("url")
    for command in (serve, get, close):
        command.add_argument("--rpc-url", default="http://127.0.0.1:18443",
                             help="bitcoind's RPC (%(default)s)")
        command.add_argument("--cookie", type=Path, required=True, help="bitcoind's .cookie")
        command.add_argument("--wallet", required=True, help="the bitcoind wallet to use")
        command.add_argument("--chain", default="regtest", help="(default %(default)s)")
        command.add_argument("--store", type=Path, required=True, help="the channel store")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(show_offer(args.url) if args.command == "offer" else run(args))
    except (PaychanError, OSError, aiohttp.ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def run(args: argparse.Namespace) -> int:
    wallet = AsyncBitcoind(Bitcoind(NodeConfig(url=args.rpc_url, chain=args.chain,
                                               wallet=args.wallet, cookie_file=args.cookie)))
    store = SQLiteStore(args.store)
    try:
        if args.command == "serve":
            return await serve(wallet, store, args.listen, args.price)
        async with client_manager(wallet, store, getattr(args, "value", DEFAULT_VALUE)
                                  ) as client:
            if args.command == "get":
                for _ in range(args.repeat):
                    response = await client.get(args.url)
                    print(response.status, response.body.decode(errors="replace"), flush=True)
                    if response.status != 200:
                        return 1
                print(f"paid {client.paid} sat", file=sys.stderr)
            else:
                settlement = await client.close(args.url)
                print(json.dumps({"settlement_txid": settlement.txid_hex}))
        return 0
    finally:
        store.close()


async def show_offer(url: str) -> int:
    """Print the offer a paid URL answers an unpaid request with."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        body = await response.text()
    if response.status != 402:
        print(f"{url} answered {response.status}, not 402: {body[:300]}", file=sys.stderr)
        return 1
    print(Offer.from_json(body).to_json())
    return 0


async def serve(wallet: AsyncBitcoind, store: SQLiteStore, listen: str, price: int) -> int:
    policy = ServerPolicy()
    api = PaidApi(policy, price)
    manager = ServerManager(wallet, store, policy, on_event=api.on_event)
    host, _, port = listen.rpartition(":")
    runner = await run_api(api, manager, host.strip("[]"), int(port))
    print(f"paid API on http://{listen}/api/ at {price} sat a request; "
          f"channels at http://{listen}{ENDPOINT}", file=sys.stderr, flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await runner.cleanup()
    with contextlib.suppress(PaychanError):
        await manager.stop()
    return 0


__all__ = ["PaidClient", "main"]

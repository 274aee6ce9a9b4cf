"""Paid requests per second of the pay-per-request HTTP example (contrib/examples/paid_http).

The paid API runs in its own process (`python -m paid_http serve`, a durable SQLite store,
beside its regtest node); this process runs N paying clients (each a ClientManager with its
own store and channel, beside a second, peered regtest node). Each client opens its channel
with one request (not timed), then makes M paid requests one after another (each: sign and
store a payment, the HTTP request carrying it, the server verifying and storing it, the
answer carrying the ack); the N clients run concurrently. Then every channel is settled and
the server's stored total checked against the prices paid.
Usage: python bench/paid_requests.py [--clients N] [--requests M] [--price SAT] [--json]
(prints figures, then one JSON object last)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "contrib" / "examples" / "paid_http"
sys.path.insert(0, str(EXAMPLE))  # the example is not installed

from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig, to_btc  # noqa: E402
from bitcoind_paychan.store import SQLiteStore  # noqa: E402
from regtest.node import RegtestNode, free_port, regtest_nodes, sync_tips  # noqa: E402
from regtest.waiting import wait_until  # noqa: E402

from paid_http.client import PaidClient, client_manager  # noqa: E402

VALUE = 1_000_000  # sat per channel: room for 9,000 requests at 100 sat


def config_for(node: RegtestNode) -> NodeConfig:
    return NodeConfig(url=node.rpc_url, chain="regtest", wallet=node.wallet,
                      cookie_file=node.cookie_path)


def start_api(node: RegtestNode, tmp: Path, port: int, price: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)])}
    api = subprocess.Popen(
        [sys.executable, "-m", "paid_http", "serve", "--rpc-url", node.rpc_url,
         "--cookie", str(node.cookie_path), "--wallet", str(node.wallet),
         "--store", str(tmp / "api.db"), "--listen", f"127.0.0.1:{port}",
         "--price", str(price)], env=env)
    wait_until(lambda: api.poll() is not None or listening(port), 60, what="the paid API")
    if api.poll() is not None:
        raise RuntimeError("the paid API did not start (see its error above)")
    return api


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def one_client(node: RegtestNode, store: SQLiteStore, url: str, requests: int,
                     opening: asyncio.Lock, start: asyncio.Event, latencies: list[float],
                     finished: list[float]) -> PaidClient:
    wallet = AsyncBitcoind(Bitcoind(config_for(node)))
    async with client_manager(wallet, store, VALUE, poll_interval=1.0) as client:
        async with opening:  # one at a time: the wallet imports each channel's key
            assert (await client.get(url)).status == 200  # opens the channel
        await start.wait()
        for i in range(requests):
            began = time.perf_counter()
            response = await client.get(f"{url}item?n={i}")
            latencies.append(time.perf_counter() - began)
            if response.status != 200:
                raise RuntimeError(f"request {i}: {response.status} {response.body[:200]!r}")
        finished.append(time.perf_counter())
        await client.close(url)  # not timed
        return client


async def run_clients(node: RegtestNode, tmp: Path, url: str, clients: int,
                      requests: int) -> tuple[float, list[float], int]:
    start, opening = asyncio.Event(), asyncio.Lock()
    latencies: list[float] = []
    finished: list[float] = []
    stores = [SQLiteStore(tmp / f"client{i}.db") for i in range(clients)]
    tasks = [asyncio.ensure_future(one_client(node, store, url, requests, opening, start,
                                                latencies, finished))
             for store in stores]
    while sum(1 for store in stores if store.channels()) < clients:  # every channel open
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.05)
    began = time.perf_counter()
    start.set()
    done = await asyncio.gather(*tasks)
    elapsed = max(finished) - began
    for store in stores:
        store.close()
    return elapsed, latencies, sum(client.paid for client in done)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=500, help="per client")
    parser.add_argument("--price", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="(the JSON object is always last)")
    args = parser.parse_args()
    with (regtest_nodes(2, connected=True) as (server_node, client_node),
          tempfile.TemporaryDirectory(prefix="paychan-bench-") as tmp_name):
        tmp = Path(tmp_name)
        coin = to_btc(VALUE + 100_000)
        client_node.pay_in_block({client_node.new_address(): coin
                                  for _ in range(args.clients)})
        sync_tips([client_node, server_node])
        port = free_port()
        api = start_api(server_node, tmp, port, args.price)
        try:
            elapsed, latencies, paid = asyncio.run(run_clients(
                client_node, tmp, f"http://127.0.0.1:{port}/api/", args.clients,
                args.requests))
        finally:
            api.terminate()
            api.wait(30)
        server = SQLiteStore(tmp / "api.db")
        stored = sum(r.paid for r in server.channels())
        server.close()
    total = args.clients * args.requests
    rate = total / elapsed
    ms = sorted(1000 * t for t in latencies)
    figures = {
        "clients": args.clients, "requests": total, "seconds": round(elapsed, 3),
        "paid_requests_per_s": round(rate, 1),
        "latency_ms_p50": round(statistics.median(ms), 2),
        "latency_ms_p99": round(ms[int(0.99 * (len(ms) - 1))], 2),
        "paid_sat": paid, "server_stored_sat": stored, "cpus": os.cpu_count(),
    }
    print(f"{total} paid requests from {args.clients} clients in {elapsed:.2f} s: "
          f"{rate:.0f} requests/s; latency p50 {figures['latency_ms_p50']} ms, "
          f"p99 {figures['latency_ms_p99']} ms")
    print(f"server stored {stored} sat = {args.clients} openings + {paid} sat of prices")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Paid requests per second through the gateway, beside the same upstream direct, and a paid
stream's throughput.

The gateway (on a ServerManager with a durable SQLite store) runs in this process, an aiohttp
upstream in another, and each of N paying clients in a process of its own (a ClientManager
with its own store and channel), so neither the clients' nor the upstream's work is counted
as the gateway's (`gateway_cpu_ms_per_paid`: this process's CPU per paid request). The chain is
the in-process one (regtest/memchain: the node is not what is measured), forked into the
clients with their coins before anything runs. Each client opens its channel with one paid
request (not timed), then makes M requests one after another over keep-alive: first to the
upstream directly, then through the gateway, each paid, all clients at once. With
--prepay 0 each carries its own payment (sign and store it, carry it, the gateway verifies
and stores it, takes the price from the credit, forwards, the answer carries the ack); with
--prepay K (the default) a payment adds K requests' worth of credit and the requests it
covers carry no payment: the gateway decides the take of the price at once against its
ledger's bound (its SQLite store is its alone: gateway/ledger.py) and commits it, written to
the WAL without an fsync (docs/paid-http.md §4): on its loop when the store is free, else
group-committed by the takes' thread with the other clients' takes while the request is
forwarded; it answers once the take is committed. A payment's take is made in the payment's
own commit (`gateway_commits_per_paid`: commits of payments and takes per paid request).
The overhead per request is the paid latency less the direct one (p50, p99). Then one
metered stream (per byte, of unknown length) of the given size is read through the gateway,
its credit drawn for every 64 KB part sent. The money is checked: what the gateway stored
is what the clients paid, and what it took is what was served.
Usage: python bench/gateway.py [--clients N] [--requests M] [--prepay K] [--stream-mb S]
[--loop asyncio|uvloop] [--json]   (prints figures, then one JSON object last)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bitcoind_paychan.channel.server import ServerPolicy  # noqa: E402
from bitcoind_paychan.daemon import eventloop  # noqa: E402
from bitcoind_paychan.gateway import Gateway, Price, Route  # noqa: E402
from bitcoind_paychan.gateway.payer import Payer  # noqa: E402
from bitcoind_paychan.node.bitcoind import COIN  # noqa: E402
from bitcoind_paychan.service.client import ClientManager  # noqa: E402
from bitcoind_paychan.service.server import ServerManager  # noqa: E402
from bitcoind_paychan.store import SQLiteStore  # noqa: E402
from bitcoind_paychan.transport.http import WebServer  # noqa: E402
from bitcoind_paychan.transport.paidhttp import Offer  # noqa: E402
from bitcoind_paychan.transport.paidhttp.link import http_dialer  # noqa: E402
from regtest.memchain import MemChain  # noqa: E402
from regtest.memnode import MemNode  # noqa: E402

PRICE = 10
PART = 64 * 1024  # bytes of a stream's part: its credit is drawn part by part
RESERVE = 10_000  # the stream route's reserve


def upstream_app() -> web.Application:
    async def hello(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse()
        await answer.prepare(request)
        part = b"x" * PART
        for _ in range(int(request.query["parts"])):
            await answer.write(part)
        await answer.write_eof()
        return answer

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/stream", stream)
    return app


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def stream_cost(parts: int) -> int:
    return -(-parts * PART // 1000)  # 1 sat per 1000 bytes, rounded up


async def timed(calls: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    latencies = []
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def upstream_process(pipe: Connection, loop: str) -> None:
    """Serve the upstream until the parent says "stop" (its URL sent first)."""
    async def serve() -> None:
        up = WebServer(upstream_app(), "127.0.0.1", 0)
        host, port = await up.start()
        pipe.send(f"http://{host}:{port}")
        await asyncio.to_thread(pipe.recv)
        await up.stop()
    eventloop.run(serve(), loop)


# -- a client (in its own process) ---------------------------------------------------------

def client_process(pipe: Connection, node: MemNode, store: Path, requests: int, prepay: int,
                   loop: str) -> None:
    eventloop.run(client(pipe, node, store, requests, prepay), loop)


async def client(pipe: Connection, node: MemNode, path: Path, requests: int,
                 prepay: int) -> None:
    """Open a channel at the gateway the parent names, then do what it says: "direct" and
    "paid" (M timed requests: their latencies), "stream" (parts: bytes and seconds), "stop"
    (what this client paid in all)."""
    url, upstream = await asyncio.to_thread(pipe.recv)
    store = SQLiteStore(path)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/hello") as response:
                offer = Offer.from_json(await response.text())
            async with ClientManager(node, store, dial=http_dialer(http),
                                     poll_interval=0.5) as manager:
                payer = Payer(manager, 2_000_000)
                credit = 0  # as the last receipt said

                async def direct() -> None:
                    async with http.get(upstream + "/hello") as answer:
                        await answer.read()

                async def paid() -> None:
                    nonlocal credit
                    payment = (await payer.spend(offer) if credit >= PRICE else
                               await payer.pay(offer, PRICE - credit, ahead=prepay * PRICE))
                    async with http.get(url + "/api/hello", headers=payment.header) as answer:
                        await answer.read()
                        receipt = await payment.settle(answer.headers)
                        assert answer.status == 200 and receipt is not None, answer.status
                        credit = receipt.credit

                async def stream(parts: int) -> tuple[int, float]:
                    payment = await payer.pay(offer, stream_cost(parts) + RESERVE - credit)
                    began = time.perf_counter()
                    async with http.get(f"{url}/live/stream?parts={parts}",
                                        headers=payment.header) as answer:
                        await payment.settle(answer.headers)
                        streamed = 0
                        async for chunk in answer.content.iter_chunked(PART):
                            streamed += len(chunk)
                    return streamed, time.perf_counter() - began

                await paid()  # opens the channel
                pipe.send("ready")
                while (command := await asyncio.to_thread(pipe.recv)) != "stop":
                    if command == "direct":
                        pipe.send(await timed(requests, direct))
                    elif command == "paid":
                        pipe.send(await timed(requests, paid))
                    else:
                        pipe.send(await stream(int(command)))
        pipe.send(payer.paid)
    finally:
        store.close()


# -- the gateway and the upstream (this process) -------------------------------------------

async def ask(pipes: list[Connection], command: Any) -> tuple[list[Any], float]:
    """Send every client `command`; their answers, and the seconds until the last came."""
    began = time.perf_counter()
    for pipe in pipes:
        pipe.send(command)
    answers = [await asyncio.to_thread(pipe.recv) for pipe in pipes]
    return answers, time.perf_counter() - began


async def run(server_node: MemNode, upstream: str, pipes: list[Connection], requests: int,
              stream_mb: int, tmp: Path) -> dict[str, object]:
    policy = ServerPolicy()
    store = SQLiteStore(tmp / "gateway.db")
    gateway = Gateway([Route("/api", upstream, Price("request", PRICE)),
                       Route("/live", upstream, Price("byte", 1, reserve=RESERVE,
                                                      quantity=1000))], policy, store=store)
    manager = ServerManager(server_node, store, policy, on_event=gateway.on_event,
                            poll_interval=0.5)
    await manager.start()
    front = WebServer(gateway.app(manager), "127.0.0.1", 0)
    host, port = await front.start()
    try:
        for pipe in pipes:
            pipe.send((f"http://{host}:{port}", upstream))
        for pipe in pipes:  # each opened its channel
            assert await asyncio.to_thread(pipe.recv) == "ready"
        direct, direct_s = await ask(pipes, "direct")
        cpu, commits = time.process_time(), manager.payments.commits + gateway.credit.all_commits
        paid, paid_s = await ask(pipes, "paid")
        cpu = time.process_time() - cpu
        commits = manager.payments.commits + gateway.credit.all_commits - commits
        direct_ms = [ms for run in direct for ms in run]
        paid_ms = [ms for run in paid for ms in run]
        parts = max(1, stream_mb * 1024 * 1024 // PART)
        pipes[0].send(str(parts))
        streamed, stream_s = await asyncio.to_thread(pipes[0].recv)
        payers_paid, _ = await ask(pipes, "stop")
        total = len(paid_ms) + len(pipes)
        views = manager.views()
        server_paid = sum(view.paid for view in views)
        assert server_paid == sum(payers_paid), (server_paid, payers_paid)
        left = sum([await gateway.credit.of(view.contract_txid) for view in views])
        assert server_paid - left == total * PRICE + stream_cost(parts), (server_paid, left)
    finally:
        await front.stop()
        await manager.stop()
        store.close()
    overhead = [p - d for p, d in zip(sorted(paid_ms), sorted(direct_ms), strict=True)]
    return {
        "clients": len(pipes), "requests": requests, "price": PRICE,
        "loop": eventloop.event_loop_name(),
        "gateway_commits_per_paid": round(commits / len(paid_ms), 3),  # payments', takes'
        "direct_per_s": round(len(direct_ms) / direct_s, 1),
        "paid_per_s": round(len(paid_ms) / paid_s, 1),
        "gateway_cpu_ms_per_paid": round(cpu * 1000 / len(paid_ms), 3),  # with the upstream
        "direct_p50_ms": round(statistics.median(direct_ms), 3),
        "paid_p50_ms": round(statistics.median(paid_ms), 3),
        "paid_p99_ms": round(percentile(paid_ms, 0.99), 3),
        "overhead_p50_ms": round(statistics.median(overhead), 3),
        "overhead_p99_ms": round(percentile(overhead, 0.99), 3),
        "paid_requests": total, "server_paid": server_paid,
        "stream_bytes": streamed,
        "stream_mb_per_s": round(streamed / stream_s / 1e6, 1),
    }


def bench(clients: int, requests: int, prepay: int, stream_mb: int, loop: str
          ) -> dict[str, object]:
    chain = MemChain()
    server_node = MemNode(chain)
    server_node.wallet.receive(50 * COIN)
    forks = multiprocessing.get_context("fork")  # the clients take the chain, coins and all
    with tempfile.TemporaryDirectory() as tmp:
        up, theirs = forks.Pipe()
        processes = [forks.Process(target=upstream_process, args=(theirs, loop), daemon=True)]
        processes[0].start()
        pipes = []
        for n in range(clients):
            node = MemNode(chain)
            node.wallet.receive(50 * COIN)
            ours, theirs = forks.Pipe()
            process = forks.Process(target=client_process, args=(
                theirs, node, Path(tmp) / f"client{n}.db", requests, prepay, loop),
                daemon=True)
            process.start()
            pipes.append(ours)
            processes.append(process)
        try:
            upstream = up.recv()
            result = eventloop.run(run(server_node, upstream, pipes, requests, stream_mb,
                                       Path(tmp)), loop)
        finally:
            up.send("stop")
            for process in processes:
                process.join(30)
                if process.is_alive():
                    process.kill()
    return result | {"prepay": prepay}


def main() -> int:
    top = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    top.add_argument("--clients", type=int, default=4)
    top.add_argument("--requests", type=int, default=200, help="per client (%(default)s)")
    top.add_argument("--prepay", type=int, default=100, help="requests' worth a payment "
                     "adds (0: each request carries its own payment; %(default)s)")
    top.add_argument("--stream-mb", type=int, default=64, help="(%(default)s)")
    top.add_argument("--loop", choices=eventloop.EVENT_LOOPS, default="asyncio")
    top.add_argument("--json", action="store_true", help="only the JSON object")
    args = top.parse_args()
    result = bench(args.clients, args.requests, args.prepay, args.stream_mb, args.loop)
    if not args.json:
        print(f"{result['paid_per_s']} paid requests/s through the gateway "
              f"({result['direct_per_s']}/s direct), overhead p50 {result['overhead_p50_ms']} "
              f"ms, p99 {result['overhead_p99_ms']} ms; a paid stream at "
              f"{result['stream_mb_per_s']} MB/s", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

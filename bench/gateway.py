"""Paid requests per second through the gateway, beside the same upstream direct, and a paid
stream's throughput.

One process holds everything (so the figures understate a deployment, where the upstream,
the gateway and the clients have a core each): an aiohttp upstream, the gateway on a
ServerManager with a durable SQLite store, and N paying clients (each a ClientManager with its
own store and channel), on the in-process chain (regtest/memchain: the node is not what is
measured). Each client opens its channel with one paid request (not timed), then makes M
requests one after another over keep-alive: first to the upstream directly, then through the
gateway, each paid. With --prepay 0 each carries its own payment (sign and store it, carry
it, the gateway verifies and stores it, takes the price from the credit, forwards, the answer
carries the ack); with --prepay K (the default) a payment adds K requests' worth of credit
and the requests it covers carry no payment: the gateway takes the price from the credit
(group-committed with the other clients' takes) and forwards. The overhead per request is
the paid latency less the direct one (p50, p99). Then one metered stream (per byte, of
unknown length) of the given size is read through the gateway, its credit drawn for every
64 KB part sent.
Usage: python bench/gateway.py [--clients N] [--requests M] [--prepay K] [--stream-mb S]
[--loop asyncio|uvloop] [--json]
(prints figures, then one JSON object last)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

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


async def timed(calls: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    latencies = []
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


async def run(clients: int, requests: int, prepay: int, stream_mb: int, tmp: Path
              ) -> dict[str, object]:
    chain = MemChain()
    server_node = MemNode(chain)
    server_node.wallet.receive(50 * COIN)
    up = WebServer(upstream_app(), "127.0.0.1", 0)
    host, port = await up.start()
    upstream = f"http://{host}:{port}"
    policy = ServerPolicy()
    store = SQLiteStore(tmp / "gateway.db")
    gateway = Gateway([Route("/api", upstream, Price("request", PRICE)),
                       Route("/live", upstream, Price("byte", 1, reserve=10_000,
                                                      quantity=1000))], policy, store=store)
    manager = ServerManager(server_node, store, policy, on_event=gateway.on_event,
                            poll_interval=0.5)
    await manager.start()
    front = WebServer(gateway.app(manager), "127.0.0.1", 0)
    host, port = await front.start()
    url = f"http://{host}:{port}"
    stores = [SQLiteStore(tmp / f"client{n}.db") for n in range(clients)]
    nodes = [MemNode(chain) for _ in range(clients)]
    for node in nodes:
        node.wallet.receive(50 * COIN)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/hello") as response:
                offer = Offer.from_json(await response.text())
            managers = [ClientManager(node, s, dial=http_dialer(http), poll_interval=0.5)
                        for node, s in zip(nodes, stores, strict=True)]
            for m in managers:
                await m.start()
            payers = [Payer(m, 2_000_000) for m in managers]

            async def direct() -> None:
                async with http.get(upstream + "/hello") as answer:
                    await answer.read()

            credit = dict.fromkeys(payers, 0)  # as each client's last receipt said

            async def paid(payer: Payer) -> None:
                payment = (await payer.spend(offer) if credit[payer] >= PRICE else
                           await payer.pay(offer, PRICE - credit[payer],
                                           ahead=prepay * PRICE))
                async with http.get(url + "/api/hello", headers=payment.header) as answer:
                    await answer.read()
                    assert answer.status == 200, answer.status
                    receipt = await payment.settle(answer.headers)
                    assert receipt is not None
                    credit[payer] = receipt.credit

            for payer in payers:  # open each channel (not timed)
                await paid(payer)
            began = time.perf_counter()
            direct_ms = [ms for run in await asyncio.gather(
                *[timed(requests, direct) for _ in payers]) for ms in run]
            direct_s = time.perf_counter() - began
            began = time.perf_counter()
            paid_ms = [ms for run in await asyncio.gather(
                *[timed(requests, functools.partial(paid, p)) for p in payers]) for ms in run]
            paid_s = time.perf_counter() - began
            parts = max(1, stream_mb * 1024 * 1024 // PART)
            cost = -(-parts * PART // 1000)
            payment = await payers[0].pay(offer, cost + 10_000 - credit[payers[0]])
            began = time.perf_counter()
            async with http.get(f"{url}/live/stream?parts={parts}",
                                headers=payment.header) as answer:
                await payment.settle(answer.headers)
                streamed = 0
                async for chunk in answer.content.iter_chunked(PART):
                    streamed += len(chunk)
            stream_s = time.perf_counter() - began
            for m in managers:
                await m.stop()
            total = len(paid_ms) + clients
            views = manager.views()
            server_paid = sum(view.paid for view in views)
            assert server_paid == sum(payer.paid for payer in payers), server_paid
            left = sum([await gateway.credit.of(view.contract_txid) for view in views])
            assert server_paid - left == total * PRICE + cost, (server_paid, left)
    finally:
        await front.stop()
        await manager.stop()
        await up.stop()
        for s in [store, *stores]:
            s.close()
    overhead = [p - d for p, d in zip(sorted(paid_ms), sorted(direct_ms), strict=True)]
    return {
        "clients": clients, "requests": requests, "price": PRICE, "prepay": prepay,
        "loop": eventloop.event_loop_name(), "takes_per_commit": round(
            len(paid_ms) / max(gateway.credit.commits, 1), 2),
        "direct_per_s": round(len(direct_ms) / direct_s, 1),
        "paid_per_s": round(len(paid_ms) / paid_s, 1),
        "direct_p50_ms": round(statistics.median(direct_ms), 3),
        "paid_p50_ms": round(statistics.median(paid_ms), 3),
        "paid_p99_ms": round(percentile(paid_ms, 0.99), 3),
        "overhead_p50_ms": round(statistics.median(overhead), 3),
        "overhead_p99_ms": round(percentile(overhead, 0.99), 3),
        "paid_requests": total, "server_paid": server_paid,
        "stream_bytes": streamed,
        "stream_mb_per_s": round(streamed / stream_s / 1e6, 1),
    }


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
    with tempfile.TemporaryDirectory() as tmp:
        result = eventloop.run(run(args.clients, args.requests, args.prepay, args.stream_mb,
                                   Path(tmp)), args.loop)
    if not args.json:
        print(f"{result['paid_per_s']} paid requests/s through the gateway "
              f"({result['direct_per_s']}/s direct), overhead p50 {result['overhead_p50_ms']} "
              f"ms, p99 {result['overhead_p99_ms']} ms; a paid stream at "
              f"{result['stream_mb_per_s']} MB/s", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

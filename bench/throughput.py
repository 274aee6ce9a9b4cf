"""End-to-end payment throughput: a client process paying a server process over loopback.

Real code paths on both sides (PaymentClient/PaymentServer: signing, full verification),
durable SQLiteStores on temporary files, and two peered regtest bitcoinds (one per side).
Channels are opened and funded before timing; then every channel makes M payments of 1000 sat
concurrently (one at a time per channel, each awaiting its ack), and each payment's latency is
measured from pay() to ack. Usage: python bench/throughput.py [--channels N] [--payments M]
[--version 1|2|3] [--json]   (--json prints one JSON object last)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from hardware import fsync_latency_ms, verify_rate  # bench/hardware.py

from bitcoind_paychan.channel.effects import PaymentReceived
from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig, to_btc
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.regtest import MiningBroadcaster
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import SQLiteStore
from regtest.node import RegtestNode, regtest_nodes, sync_tips

AMOUNT = 1_000  # sat per payment: the server's default minimum
INFO = b"bench"  # marks the timed payments (the opening payment has no info)
FUNDING_SPARE = 100_000  # sat per funding coin beyond the channel value: the contract's fee
MAX_FUNDING = 49 * 100_000_000  # the client node's wallet starts with one 50 BTC coinbase


def channel_value(payments: int) -> int:
    """The opening payment, `payments` more, and change kept well above dust."""
    return AMOUNT * (payments + 1) + 100_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def config_for(node: RegtestNode) -> NodeConfig:
    return NodeConfig(url=node.rpc_url, chain="regtest", wallet=node.wallet,
                      cookie_file=node.cookie_path)


def child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us
    logging.basicConfig(level=logging.WARNING, format="%(processName)s: %(message)s")
    logging.getLogger("bitcoind_paychan.service.regtest").setLevel(logging.ERROR)  # v1 mining


# -- the server process ------------------------------------------------------------------


def server_process(conn: Connection, config: NodeConfig, db: Path) -> None:
    child_setup()
    asyncio.run(serve(conn, config, db))


async def serve(conn: Connection, config: NodeConfig, db: Path) -> None:
    """Serve until the parent says stop (or goes away); then report what was received."""
    seen = 0

    def on_event(event: ServerEvent) -> None:
        nonlocal seen
        if isinstance(event, PaymentReceived) and event.info == INFO:
            seen += 1

    with SQLiteStore(db) as store:
        server = PaymentServer(MiningBroadcaster(Bitcoind(config)), store, on_event=on_event)
        conn.send(await server.listen())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
        loop.remove_reader(conn.fileno())
        await server.stop()
        logged = sum(1 for p in store.payments(Role.SERVER) if p.info == INFO)  # not openings
    conn.send({"seen": seen, "logged": logged, "rss_mb": peak_rss_mb()})


# -- the client process ------------------------------------------------------------------


def client_process(conn: Connection, config: NodeConfig, tmp: Path, address: tuple[str, int],
                   channels: int, payments: int, version: int) -> None:
    child_setup()
    conn.send(asyncio.run(pay_all(config, tmp, address, channels, payments, version)))


async def pay_all(config: NodeConfig, tmp: Path, address: tuple[str, int], channels: int,
                  payments: int, version: int) -> dict[str, Any]:
    wallet = AsyncBitcoind(Bitcoind(config))
    store = SQLiteStore(tmp / "client.db")
    client = PaymentClient(wallet, store)
    try:
        started = time.perf_counter()
        opened = [await client.open(*address, channel_value(payments), version=version,
                                    new=True) for _ in range(channels)]
        open_s = time.perf_counter() - started
        started = time.perf_counter()
        latencies = await asyncio.gather(*(pay(channel, payments) for channel in opened))
        wall = time.perf_counter() - started
        await asyncio.gather(*(channel.close() for channel in opened))
    finally:
        store.close()
    return {"latencies_ms": [ms for per_channel in latencies for ms in per_channel],
            "wall_s": wall, "open_s": open_s, "version": opened[0].version, "rss_mb": peak_rss_mb()}


async def pay(channel: Channel, payments: int) -> list[float]:
    latencies = []
    for _ in range(payments):
        t0 = time.perf_counter_ns()
        await channel.pay(AMOUNT, INFO)
        latencies.append((time.perf_counter_ns() - t0) / 1e6)
    return latencies


# -- the parent --------------------------------------------------------------------------


def fund_client(client: RegtestNode, server: RegtestNode, channels: int, value: int) -> None:
    """One confirmed coin per channel, so no open waits for or chains unconfirmed change."""
    coin = to_btc(value + FUNDING_SPARE)
    client.wallet_rpc("sendmany", "", {client.new_address(): coin for _ in range(channels)})
    client.mine(1)
    sync_tips([client, server])


def receive(conn: Connection, who: str) -> Any:
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"the {who} process failed (see its error above)") from None


def run(channels: int, payments: int, version: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    processes: list[SpawnProcess] = []
    pipes: list[Connection] = []

    def start(target: Any, *args: Any) -> Connection:
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=target, args=(theirs, *args), daemon=True)
        process.start()
        theirs.close()
        processes.append(process)
        pipes.append(ours)
        return ours

    done = False
    with (regtest_nodes(2, connected=True) as (server_node, client_node),
          tempfile.TemporaryDirectory(prefix="paychan-bench-") as tmp):
        fund_client(client_node, server_node, channels, channel_value(payments))
        try:
            server = start(server_process, config_for(server_node), Path(tmp) / "server.db")
            address = receive(server, "server")
            client = start(client_process, config_for(client_node), Path(tmp), address,
                           channels, payments, version)
            paid = receive(client, "client")
            server.send("stop")
            served = receive(server, "server")
            done = True
        finally:
            for pipe in pipes:
                pipe.close()  # a server still running stops once its pipe closes
            for process in processes:
                process.join(10 if done else 0)
                if process.is_alive():
                    process.terminate()
                    process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join()
        fsync_ms = fsync_latency_ms(Path(tmp))
    verifies = verify_rate()
    latencies = sorted(paid["latencies_ms"])
    total = channels * payments
    rate = total / paid["wall_s"]
    two_fsyncs_s = 2 * fsync_ms / 1000
    return {
        "channels": channels,
        "payments": payments,
        "version": paid["version"],
        "total_payments": total,
        "wall_s": round(paid["wall_s"], 3),
        "open_s": round(paid["open_s"], 3),
        "payments_per_s": round(total / paid["wall_s"], 1),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p90_ms": round(percentile(latencies, 0.90), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "server_rss_mb": round(served["rss_mb"], 1),
        "client_rss_mb": round(paid["rss_mb"], 1),
        "server_seen": served["seen"],
        "server_logged": served["logged"],
        "fsync_ms": round(fsync_ms, 3),
        "verify_per_s": round(verifies),
        "rate_over_verify": round(rate / verifies, 3),
        "rate_over_two_fsyncs": round(rate * two_fsyncs_s, 3),
        "load_average": round(os.getloadavg()[0], 2),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--version", type=int, choices=(1, 2, 3), default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if args.channels < 1 or args.payments < 1:
        parser.error("--channels and --payments must be at least 1")
    if args.channels * (channel_value(args.payments) + FUNDING_SPARE) > MAX_FUNDING:
        parser.error("channels × payments needs more than the client wallet's 50 BTC")
    try:
        r = run(args.channels, args.payments, args.version)
    except KeyboardInterrupt:
        print("interrupted; nodes, processes and files cleaned up", file=sys.stderr)
        return 130
    print(f"paychan v{r['version']}: {r['channels']} channel(s) × {r['payments']} payments of "
          f"{AMOUNT} sat, client and server processes over loopback")
    print(f"  opening     {r['channels']} channel(s) in {r['open_s']} s (sequential, untimed)")
    print(f"  throughput  {r['total_payments']} payments in {r['wall_s']} s = "
          f"{r['payments_per_s']} payments/s")
    print(f"  latency     p50 {r['p50_ms']} ms   p90 {r['p90_ms']} ms   p99 {r['p99_ms']} ms "
          "(pay() to ack)")
    print(f"  machine     fsync {r['fsync_ms']} ms (p50, store's disk), {r['verify_per_s']} "
          f"verifies/s; load average {r['load_average']}")
    print(f"  ratios      rate / verify rate {r['rate_over_verify']}   rate × 2 fsyncs "
          f"{r['rate_over_two_fsyncs']} (1.0: one payment per two fsyncs in series)")
    print(f"  peak RSS    server {r['server_rss_mb']} MB   client {r['client_rss_mb']} MB")
    ok = r["server_seen"] == r["server_logged"] == r["total_payments"]
    if not ok:
        print(f"error: the server received {r['server_seen']} payments and stored "
              f"{r['server_logged']}, not {r['total_payments']}", file=sys.stderr)
    if args.json:
        print(json.dumps(r))
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

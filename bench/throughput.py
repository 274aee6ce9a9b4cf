"""End-to-end payment throughput: a client process paying a server process over loopback.

Real code paths on both sides (PaymentClient/PaymentServer: signing, full verification),
durable SQLiteStores on temporary files, and two peered regtest bitcoinds (one per side).
Channels are opened and funded before timing; then every channel makes M payments of 1000 sat
concurrently (W in flight per channel, --window W; 1: each awaits its ack), and each payment's
latency is measured from pay() to ack. Beside the figures: the CPU each process spent per
payment, the store disk's fsync latency and coincurve's ECDSA and Schnorr verify rates, measured
in the same run. Several versions (--version 3 4) run in turn, each reported.
--transport ws: the same over WebSocket (one binary message per protocol message).
Usage: python bench/throughput.py [--channels N] [--payments M] [--window W]
[--version 1|2|3|4 ...] [--transport tcp|ws] [--tls] [--capacity] [--uvloop] [--profile FILE]
[--json] (--json: one JSON object last, {"runs": [...]} for several versions; --tls: over
TLS, wss:// for ws, a test CA's certificate checked by the client)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from hardware import (  # bench/hardware.py
    fsync_latency_ms,
    schnorr_sign_rate,
    schnorr_verify_rate,
    sign_rate,
    verify_rate,
)
from hot_path import server_floor  # bench/hot_path.py
from replay import load  # bench/replay.py

from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.effects import PaymentReceived
from bitcoind_paychan.channel.kinds import registry as kinds
from bitcoind_paychan.channel.kinds.v4_taproot import Schnorr
from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.daemon import eventloop
from bitcoind_paychan.daemon.process import freeze_heap, raise_fd_limit
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig, to_btc
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.regtest import regtest_ports
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport import websocket
from bitcoind_paychan.transport.dial import split_peer
from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS
from regtest.node import RegtestNode, regtest_nodes, sync_tips
from tests.transport.certs import CertFactory  # test certificates (the dev dependencies)

AMOUNT = 1_000  # sat per payment: the server's default minimum
UVLOOP_ENV = "PAYCHAN_BENCH_UVLOOP"  # "1": every process of the run on uvloop (--uvloop)
FLOOR_PAYMENTS = 2000  # payments the bare server path is measured on (capacity mode)
INFO = b"bench"  # marks the timed payments (the opening payment has no info)
FUNDING_SPARE = 100_000  # sat per funding coin beyond the channel value: the contract's fee
MAX_FUNDING = 49 * 100_000_000  # the client node's wallet starts with one 50 BTC coinbase


def channel_value(payments: int) -> int:
    """The opening payment, `payments` more, and change kept well above dust."""
    return AMOUNT * (payments + 1) + 100_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def context_switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def config_for(node: RegtestNode) -> NodeConfig:
    return NodeConfig(url=node.rpc_url, chain="regtest", wallet=node.wallet,
                      cookie_file=node.cookie_path)


def child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us
    logging.basicConfig(level=logging.WARNING, format="%(processName)s: %(message)s")
    logging.getLogger("bitcoind_paychan.service.regtest").setLevel(logging.ERROR)  # v1 mining


# -- the server process ------------------------------------------------------------------


def profiled(profile: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` (on uvloop with --uvloop); with a `profile` path, under cProfile (the event
    loop's thread only: the store's writer thread is not in it), its stats written there."""
    loop = "uvloop" if os.environ.get(UVLOOP_ENV) == "1" else "asyncio"
    if not profile:
        return eventloop.run(main, loop)
    profiler = cProfile.Profile(time.thread_time)  # CPU of the loop thread, not wall time
    try:
        return profiler.runcall(eventloop.run, main, loop)
    finally:
        profiler.dump_stats(profile)


def server_process(conn: Connection, config: NodeConfig, db: Path, transport: str,
                   expected: int, profile: str, tls: ServerTLS | None) -> None:
    child_setup()
    profiled(profile and f"{profile}.server", serve(conn, config, db, transport, expected, tls))


async def serve(conn: Connection, config: NodeConfig, db: Path, transport: str,
                expected: int, tls: ServerTLS | None) -> None:
    """Serve until the parent says stop (or goes away); then report what was received. The
    parent is told the peer to dial: host:port, or a ws:// URL."""
    seen = 0
    cpu = [0.0, 0.0]  # process CPU (every thread) at the first and the last timed payment
    commits = [0, 0]  # the writer's commits, at the same two moments
    writer_cpu = [0.0, 0.0]  # the writer thread's CPU in its commits, likewise
    switches = [0, 0]  # the process's context switches (voluntary and not), likewise

    def on_event(event: ServerEvent) -> None:
        nonlocal seen
        if isinstance(event, PaymentReceived) and event.info == INFO:
            seen += 1
            if seen in (1, expected):  # the clock is read twice, not once per payment
                cpu[seen > 1] = time.process_time()
                commits[seen > 1] = server.payments.commits
                writer_cpu[seen > 1] = server.payments.cpu_s
                switches[seen > 1] = context_switches()

    with SQLiteStore(db) as store:
        server = PaymentServer(regtest_ports(Bitcoind(config)), store, on_event=on_event,
                               tls=tls)
        raise_fd_limit()  # as `paychan daemon` does: a socket per channel
        host, port = await server.listen()
        freeze_heap()
        listener = websocket.Listener(server.gate, server.serve, "/paychan", server.tls_door())
        if transport == "ws":
            host, port = await listener.listen("127.0.0.1", 0)
        scheme = "wss" if tls else "ws"
        conn.send(f"{scheme}://{host}:{port}/paychan" if transport == "ws" else f"{host}:{port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
        loop.remove_reader(conn.fileno())
        listener.close()
        await server.stop()
        await listener.stop()
        logged = sum(1 for p in store.payments(Role.SERVER) if p.info == INFO)  # not openings
    cpu_per_payment = (cpu[1] - cpu[0]) / (seen - 1) if seen == expected > 1 else 0.0
    conn.send({"seen": seen, "logged": logged, "rss_mb": peak_rss_mb(),
               "cpu_us": cpu_per_payment * 1e6,
               "per_commit": (seen - 1) / max(commits[1] - commits[0], 1),
               "writer_cpu_us": (writer_cpu[1] - writer_cpu[0]) / max(seen - 1, 1) * 1e6,
               "switches": (switches[1] - switches[0]) / max(seen - 1, 1)})


# -- the client process ------------------------------------------------------------------


def client_process(conn: Connection, config: NodeConfig, tmp: Path, address: str,
                   channels: int, payments: int, version: int, window: int,
                   capacity: bool, profile: str, tls: ClientTLS | None) -> None:
    child_setup()
    conn.send(profiled(profile and f"{profile}.client", pay_all(
        config, tmp, address, channels, payments, version, window, capacity, tls)))


def load_process(conn: Connection, tmp: Path, address: tuple[str, int], payments: int,
                 window: int) -> None:
    """Server-capacity mode: replay payments signed before timing (bench/replay.py)."""
    child_setup()
    conn.send(profiled("", load(tmp / "client.db", address, payments, AMOUNT, INFO, window)))


async def pay_all(config: NodeConfig, tmp: Path, address: str, channels: int,
                  payments: int, version: int, window: int, capacity: bool,
                  tls: ClientTLS | None) -> dict[str, Any]:
    """Open the channels, then pay (timed); or, for `capacity`, hang up and leave them open
    for the load process."""
    wallet = AsyncBitcoind(Bitcoind(config))
    store = SQLiteStore(tmp / "client.db")
    client = PaymentClient(wallet, store, policy=ClientPolicy(payment_window=window),
                           tls={address: tls} if tls else None)
    try:
        started = time.perf_counter()
        opened = [await client.open_channel(address, channel_value(payments), version=version,
                                            new=True) for _ in range(channels)]
        open_s = time.perf_counter() - started
        if capacity:
            await client.stop()
            return {"open_s": open_s, "version": opened[0].version}
        started, cpu = time.perf_counter(), time.process_time()
        latencies = await asyncio.gather(*(pay(channel, payments, window)
                                           for channel in opened))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        await asyncio.gather(*(channel.close() for channel in opened))
    finally:
        store.close()
    return {"latencies_ms": [ms for per_channel in latencies for ms in per_channel],
            "wall_s": wall, "open_s": open_s, "version": opened[0].version, "rss_mb": peak_rss_mb(),
            "cpu_us": cpu / (channels * payments) * 1e6}


async def pay(channel: Channel, payments: int, window: int) -> list[float]:
    """`payments` on `channel`, `window` of them in flight at a time."""
    latencies: list[float] = []

    async def payer(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter_ns()
            await channel.pay(AMOUNT, INFO)
            latencies.append((time.perf_counter_ns() - t0) / 1e6)

    shares = [payments // window + (i < payments % window) for i in range(window)]
    await asyncio.gather(*(payer(count) for count in shares if count))
    return latencies


# -- the parent --------------------------------------------------------------------------


def fund_client(client: RegtestNode, server: RegtestNode, channels: int, value: int) -> None:
    """One confirmed coin per channel, so no open waits for or chains unconfirmed change."""
    coin = to_btc(value + FUNDING_SPARE)
    client.pay_in_block({client.new_address(): coin for _ in range(channels)})
    sync_tips([client, server])


def receive(conn: Connection, who: str) -> Any:
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"the {who} process failed (see its error above)") from None


def run(channels: int, payments: int, version: int, window: int, capacity: bool,
        profile: str = "", transport: str = "tcp", tls: bool = False) -> dict[str, Any]:
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
        certs = CertFactory(Path(tmp)) if tls else None
        try:
            server = start(server_process, config_for(server_node), Path(tmp) / "server.db",
                           transport, channels * payments, profile,
                           certs.issue("server").server if certs else None)
            address = receive(server, "server")
            client = start(client_process, config_for(client_node), Path(tmp), address,
                           channels, payments, version, window, capacity, profile,
                           certs.ca.trusted() if certs else None)
            paid = receive(client, "client")
            if capacity:
                loader = start(load_process, Path(tmp), split_peer(address), payments, window)
                paid |= receive(loader, "load") | {"rss_mb": 0.0}
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
        floor_us = server_floor(FLOOR_PAYMENTS, Path(tmp)) if capacity else 0.0
    ecdsa, schnorr = verify_rate(), schnorr_verify_rate()
    ecdsa_signs, schnorr_signs = sign_rate(), schnorr_sign_rate()
    # The rate of the scheme this version's payments are signed with.
    verifies = schnorr if isinstance(kinds.kind_of(version).scheme, Schnorr) else ecdsa
    latencies = sorted(paid["latencies_ms"])
    total = channels * payments
    rate = total / paid["wall_s"]
    # One channel, stop and wait: each payment waits for two fsyncs and both sides' CPU.
    serial_s = 2 * fsync_ms / 1000 + (served["cpu_us"] + paid["cpu_us"]) / 1e6
    return {
        "channels": channels,
        "window": window,
        "mode": "capacity" if capacity else "end-to-end",
        "transport": transport,
        "tls": tls,
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
        "server_cpu_us": round(served["cpu_us"], 1),  # per payment, every thread
        "server_floor_us": round(floor_us, 1),  # the bare path (capacity mode), hot_path.py
        "server_payments_per_commit": round(served["per_commit"], 1),
        "server_writer_cpu_us": round(served["writer_cpu_us"], 1),  # of server_cpu_us
        "server_switches_per_payment": round(served["switches"], 2),
        "client_cpu_us": round(paid["cpu_us"], 1),
        "fsync_ms": round(fsync_ms, 3),
        "verify_per_s": round(verifies),
        "ecdsa_verify_per_s": round(ecdsa),
        "schnorr_verify_per_s": round(schnorr),
        "ecdsa_sign_per_s": round(ecdsa_signs),
        "schnorr_sign_per_s": round(schnorr_signs),
        "rate_over_verify": round(rate / verifies, 3),
        "serial_bound_per_s": round(1 / serial_s, 1),
        "rate_over_serial_bound": round(rate * serial_s, 3),
        "load_average": round(os.getloadavg()[0], 2),
        "event_loop": "uvloop" if os.environ.get(UVLOOP_ENV) == "1" else "asyncio",
    }


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--version", type=int, choices=kinds.VERSIONS, nargs="+",
                        default=[kinds.DEFAULT_VERSION],
                        help=f"one or more, run in turn: {kinds.describe()}")
    parser.add_argument("--window", type=int, default=1,
                        help="payments in flight per channel (the server accepts up to 64)")
    parser.add_argument("--capacity", action="store_true",
                        help="server capacity: a load process replays payments signed before "
                             "timing (client figures are then the load's)")
    parser.add_argument("--transport", choices=("tcp", "ws"), default="tcp",
                        help="TCP (length-prefixed frames) or WebSocket (a message each)")
    parser.add_argument("--tls", action="store_true",
                        help="over TLS (wss:// for ws): a test CA's certificate, verified by "
                             "the client")
    parser.add_argument("--profile", default="", metavar="FILE",
                        help="profile server and client (cProfile): FILE.server, FILE.client")
    parser.add_argument("--uvloop", action="store_true",
                        help="run every process on uvloop's event loop (if installed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if args.uvloop:
        eventloop.loop_factory("uvloop")  # fails now, with what to install, if it is missing
        os.environ[UVLOOP_ENV] = "1"  # the spawned processes inherit it
    if min(args.channels, args.payments, args.window) < 1:
        parser.error("--channels, --payments and --window must be at least 1")
    if args.channels * (channel_value(args.payments) + FUNDING_SPARE) > MAX_FUNDING:
        parser.error("channels × payments needs more than the client wallet's 50 BTC")
    if args.capacity and (args.transport != "tcp" or args.tls):
        parser.error("--capacity replays frames over plain TCP only")
    results = []
    for version in args.version:
        try:
            r = run(args.channels, args.payments, version, args.window, args.capacity,
                    args.profile, args.transport, args.tls)
        except KeyboardInterrupt:
            print("interrupted; nodes, processes and files cleaned up", file=sys.stderr)
            return 130
        results.append((r, report(r)))
    if args.json:
        runs = [r for r, _ in results]
        print(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}))
    sys.stdout.flush()
    return 0 if all(ok for _, ok in results) else 1


def report(r: dict[str, Any]) -> bool:
    """Print one run's figures; False if the server did not store every payment."""
    print(f"paychan v{r['version']}: {r['channels']} channel(s) × {r['payments']} payments of "
          f"{AMOUNT} sat, window {r['window']}, {r['mode']} (client or load process, and server, "
          f"over loopback {r['transport']}{' with TLS' if r['tls'] else ''}), "
          f"{r['event_loop']} event loop")
    print(f"  opening     {r['channels']} channel(s) in {r['open_s']} s (sequential, untimed)")
    print(f"  throughput  {r['total_payments']} payments in {r['wall_s']} s = "
          f"{r['payments_per_s']} payments/s")
    print(f"  latency     p50 {r['p50_ms']} ms   p90 {r['p90_ms']} ms   p99 {r['p99_ms']} ms "
          "(pay() to ack)")
    print(f"  CPU         server {r['server_cpu_us']} µs   client {r['client_cpu_us']} µs "
          "per payment (process time, every thread)")
    if r["server_floor_us"]:
        print(f"  floor       {r['server_floor_us']} µs per payment: the bare server path "
              "(decode, machine, ack, SQLite commits of 100; no loop, sockets or threads)")
    print(f"  server      {r['server_payments_per_commit']} payments per commit, "
          f"{r['server_switches_per_payment']} context switches per payment, its writer "
          f"thread {r['server_writer_cpu_us']} µs of CPU per payment")
    print(f"  machine     fsync {r['fsync_ms']} ms (p50, store's disk); verifies/s: ECDSA "
          f"{r['ecdsa_verify_per_s']}, Schnorr {r['schnorr_verify_per_s']}; signs/s: ECDSA "
          f"{r['ecdsa_sign_per_s']}, Schnorr {r['schnorr_sign_per_s']}; load average "
          f"{r['load_average']}")
    print(f"  ratios      rate / verify rate {r['rate_over_verify']}   rate / serial bound "
          f"{r['rate_over_serial_bound']} (bound {r['serial_bound_per_s']}/s: two fsyncs and both "
          "sides' CPU per payment, in series)")
    print(f"  peak RSS    server {r['server_rss_mb']} MB   client {r['client_rss_mb']} MB")
    ok = bool(r["server_seen"] == r["server_logged"] == r["total_payments"])
    if not ok:
        print(f"error: the server received {r['server_seen']} payments and stored "
              f"{r['server_logged']}, not {r['total_payments']}", file=sys.stderr)
    return ok


if __name__ == "__main__":
    sys.exit(main())

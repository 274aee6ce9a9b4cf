"""Spam: an honest channel keeps paying while a stranger with no money floods the server.

The server runs in its own process beside a regtest node, with a durable SQLite store. An
honest client (this process, beside a second node) pays 1000 sat at a time without pause.
A stranger process sends `--attempts` channel opens whose contracts spend coins that do not
exist (fake segwit inputs, its own key, a valid initial payment), spread over many loopback
source addresses (127.0.0.2, 127.0.0.3, ...: a botnet, so most of them pass the per-address
limits and reach the contract check), plus `--junk` junk connections from one address (raw
garbage, or a connect-and-close). Then `--blocks` blocks arrive. Loopback only; bounded by
`--timeout` seconds of spam.

Prints the server's store (rows, database bytes; the WAL apart) before and after, the honest
payments/s before, during the spam and while blocks arrive, the longest wait for an ack, the
server's CPU while idle after the spam, and ONE JSON object last with --json.
Usage: python bench/spam.py [--attempts 10000] [--junk 2000] [--blocks 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from throughput import child_setup, config_for, receive

from bitcoind_paychan.daemon.process import freeze_heap, raise_fd_limit
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig, to_btc
from bitcoind_paychan.service.client import PaymentClient
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.store import SQLiteStore
from regtest.node import regtest_nodes, sync_tips
from regtest.stranger import fake_open

AMOUNT = 1_000
CHANNEL_VALUE = 200_000_000  # 2 BTC: ~200,000 payments of AMOUNT
SOURCES = 200  # loopback source addresses of the fake opens
CONCURRENCY = 16  # the stranger's attempts in flight at once
PHASE_S = 3.0  # how long the honest channel is measured before and after


# -- the server process ------------------------------------------------------------------


def server_process(conn: Connection, config: NodeConfig, db: Path) -> None:
    child_setup()
    asyncio.run(serve(conn, config, db))


async def serve(conn: Connection, config: NodeConfig, db: Path) -> None:
    """Serve; answer "stats" with the store's rows, bytes and this process's CPU seconds."""
    with SQLiteStore(db) as store:
        server = PaymentServer(AsyncBitcoind(Bitcoind(config)), store, poll_interval=0.1)
        raise_fd_limit()  # as `paychan daemon` does: a socket per connection
        conn.send(await server.listen())
        freeze_heap()
        while await asyncio.to_thread(_recv, conn) == "stats":
            wal = Path(f"{db}-wal")
            conn.send({"rows": len(store.channels()), "bytes": db.stat().st_size,
                       "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                       "cpu_s": time.process_time()})
        await server.stop()


def _recv(conn: Connection) -> str:
    try:
        return str(conn.recv())
    except EOFError:
        return "stop"


# -- the stranger process ----------------------------------------------------------------


def stranger_process(conn: Connection, address: tuple[str, int], attempts: int, junk: int,
                     timeout: float) -> None:
    child_setup()
    conn.send(asyncio.run(spam(address, attempts, junk, timeout)))


async def spam(address: tuple[str, int], attempts: int, junk: int,
               timeout: float) -> dict[str, Any]:
    host, port = address
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + timeout

    kinds = ["fake"] * attempts + ["junk"] * junk
    random.Random(1).shuffle(kinds)

    async def one(n: int) -> None:
        try:
            if kinds[n] == "junk":
                outcome = await junk_connection(host, port, n)
            else:
                source = f"127.0.0.{2 + n % SOURCES}"
                code = await fake_open(host, port, 3, timeout=10, source=source)
                outcome = "opened!" if code is None else code.name
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            outcome = f"hung up ({type(exc).__name__})"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    started = time.monotonic()
    await bounded(len(kinds), one, deadline)
    return {"outcomes": outcomes, "spam_s": time.monotonic() - started}


async def bounded(total: int, task: Callable[[int], Awaitable[None]], deadline: float) -> None:
    """Run task(0..total-1), CONCURRENCY at a time, none started after `deadline`."""
    queue = iter(range(total))

    async def worker() -> None:
        for n in queue:
            if time.monotonic() > deadline:
                return
            await task(n)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def junk_connection(host: str, port: int, n: int) -> str:
    """From one address: garbage bytes (answered with ERROR, or hung up on by the per-address
    limits), or a connect-and-close."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.1.250", 0))
    try:
        if n % 2:
            return "junk connect-and-close"
        writer.write(b"\x00\x00\x00\x05junk!")
        await writer.drain()
        answered = await asyncio.wait_for(reader.read(), 10)
        return "junk answered" if answered else "junk hung up"
    except ConnectionError:
        return "junk hung up"
    finally:
        writer.close()


# -- the honest client (this process) ----------------------------------------------------


class Payer:
    """Pays without pause; keeps each ack's time."""

    def __init__(self) -> None:
        self.acks: list[float] = []
        self.stop = False

    async def run(self, pay: Callable[[], Awaitable[object]]) -> None:
        while not self.stop:
            await pay()
            self.acks.append(time.monotonic())

    def rate(self, start: float, end: float) -> float:
        count = sum(1 for t in self.acks if start <= t < end)
        return round(count / (end - start), 1) if end > start else 0.0

    def longest_gap(self, start: float, end: float) -> float:
        times = [start, *(t for t in self.acks if start <= t < end), end]
        return round(max(b - a for a, b in itertools.pairwise(times)) * 1000, 1)


async def honest(config: NodeConfig, tmp: Path, address: tuple[str, int], server: Connection,
                 mine: Callable[[], object], attempts: int, junk: int, blocks: int,
                 timeout: float) -> dict[str, Any]:
    def stats() -> Awaitable[dict[str, Any]]:
        return asyncio.to_thread(ask, server)

    client = PaymentClient(AsyncBitcoind(Bitcoind(config)), SQLiteStore(tmp / "client.db"))
    channel = await client.open(*address, CHANNEL_VALUE)
    before = await stats()
    payer = Payer()
    paying = asyncio.create_task(payer.run(lambda: channel.pay(AMOUNT)))
    marks = [time.monotonic()]
    await asyncio.sleep(PHASE_S)
    marks.append(time.monotonic())
    spam_starts = await stats()
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    stranger = ctx.Process(target=stranger_process, args=(theirs, address, attempts, junk,
                                                          timeout), daemon=True)
    stranger.start()
    theirs.close()
    spammed = await asyncio.to_thread(receive, ours, "stranger")
    stranger.join(10)
    marks.append(time.monotonic())
    after_spam = await stats()
    await asyncio.sleep(PHASE_S)  # the server idles (but for the honest channel)
    idle = await stats()
    marks.append(time.monotonic())
    for _ in range(blocks):
        await asyncio.to_thread(mine)
        await asyncio.sleep(0.2)
    marks.append(time.monotonic())
    payer.stop = True
    await paying
    await channel.close()
    after = await stats()
    await client.stop()
    phases = ("before", "spam", "after_spam", "blocks")
    return {
        "attempts": attempts, "junk": junk, "blocks": blocks,
        "outcomes": spammed["outcomes"], "spam_s": round(spammed["spam_s"], 1),
        "attempts_per_s": round((attempts + junk) / spammed["spam_s"], 1),
        "rows_before": before["rows"], "rows_after": after["rows"],
        "store_bytes_before": before["bytes"], "store_bytes_after": after["bytes"],
        "rows_after_spam": after_spam["rows"], "store_bytes_after_spam": after_spam["bytes"],
        "wal_bytes_before": before["wal_bytes"], "wal_bytes_after": after["wal_bytes"],
        **{f"payments_per_s_{p}": payer.rate(marks[i], marks[i + 1])
           for i, p in enumerate(phases)},
        "longest_ack_gap_ms": payer.longest_gap(marks[0], marks[-1]),
        **{f"longest_ack_gap_ms_{p}": payer.longest_gap(marks[i], marks[i + 1])
           for i, p in enumerate(phases)},
        "server_cpu_percent_spam": round(
            100 * (after_spam["cpu_s"] - spam_starts["cpu_s"]) / spammed["spam_s"], 1),
        "server_cpu_percent_idle_after_spam": round(
            100 * (idle["cpu_s"] - after_spam["cpu_s"]) / PHASE_S, 1),
        "payments": len(payer.acks),
    }


def ask(server: Connection) -> dict[str, Any]:
    server.send("stats")
    result: dict[str, Any] = receive(server, "server")
    return result


# -- the parent --------------------------------------------------------------------------


def run(attempts: int, junk: int, blocks: int, timeout: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with (regtest_nodes(2, connected=True) as (server_node, client_node),
          tempfile.TemporaryDirectory(prefix="paychan-spam-") as tmp):
        client_node.pay_in_block({client_node.new_address(): to_btc(CHANNEL_VALUE + 100_000)})
        sync_tips([client_node, server_node])
        ours, theirs = ctx.Pipe()
        server = ctx.Process(target=server_process, daemon=True, args=(
            theirs, config_for(server_node), Path(tmp) / "server.db"))
        server.start()
        theirs.close()
        try:
            address = receive(ours, "server")
            return asyncio.run(honest(config_for(client_node), Path(tmp), address, ours,
                                      server_node.mine, attempts, junk, blocks, timeout))
        finally:
            ours.close()  # the server stops once its pipe closes
            server.join(15)
            if server.is_alive():
                server.kill()
                server.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--attempts", type=int, default=10_000, help="fake channel opens")
    parser.add_argument("--junk", type=int, default=2_000, help="junk connections")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds of spam at most")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if args.attempts < 1 or args.junk < 0 or args.blocks < 0 or args.timeout <= 0:
        parser.error("--attempts ≥ 1, --junk ≥ 0, --blocks ≥ 0, --timeout > 0")
    try:
        r = run(args.attempts, args.junk, args.blocks, args.timeout)
    except KeyboardInterrupt:
        print("interrupted; nodes, processes and files cleaned up", file=sys.stderr)
        return 130
    print(f"a stranger: {r['attempts']} fake channel opens from {SOURCES} loopback addresses, "
          f"{r['junk']} junk connections from one; then {r['blocks']} blocks")
    print(f"  spam        {r['spam_s']} s ({r['attempts_per_s']}/s): {r['outcomes']}")
    print(f"  store       {r['rows_before']} rows, {r['store_bytes_before']} bytes before; "
          f"{r['rows_after_spam']} rows, {r['store_bytes_after_spam']} bytes after the spam; "
          f"{r['rows_after']} rows, {r['store_bytes_after']} bytes at the end (the WAL, "
          f"{r['wal_bytes_before']} → {r['wal_bytes_after']} bytes, holds honest payments)")
    print(f"  honest      {r['payments_per_s_before']} payments/s before, "
          f"{r['payments_per_s_spam']} during the spam, {r['payments_per_s_after_spam']} after, "
          f"{r['payments_per_s_blocks']} while blocks arrive")
    print(f"  ack gaps    longest {r['longest_ack_gap_ms']} ms (before "
          f"{r['longest_ack_gap_ms_before']}, spam {r['longest_ack_gap_ms_spam']}, blocks "
          f"{r['longest_ack_gap_ms_blocks']})")
    print(f"  server CPU  {r['server_cpu_percent_spam']} % during the spam, "
          f"{r['server_cpu_percent_idle_after_spam']} % idle after it (but for the honest "
          "channel)")
    if args.json:
        print(json.dumps(r))
    sys.stdout.flush()
    return 0 if r["rows_after_spam"] <= r["rows_before"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

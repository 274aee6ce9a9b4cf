"""record_payment throughput and latency of a store engine: SQLite on a temporary file, or
PostgreSQL (a throwaway server started here, fsync on, or the database `--dsn` names).

Each payment (or each `--batch` of them, as the PaymentWriter's group commit stores them) is one
committed, durable transaction, so the figures are mostly the disk's fsync latency. Usage:
python bench/store_payments.py [--engine sqlite|postgresql] [--dsn DSN] [--payments N]
[--channels K] [--batch B] [--dir DIR] [--json]   (--json prints one JSON object last)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.store import ENGINES, ChannelStore, open_store
from bitcoind_paychan.store.base import Payment
from regtest.postgres import PostgresServer

SIGNATURE = bytes(71) + b"\x83"  # payments are not verified here: only stored


def new_channel(value: int) -> ChannelRecord:
    client, server = PrivateKey.generate(), PrivateKey.generate()
    tx = Transaction(2, (TxIn(OutPoint(os.urandom(32), 0)),),
                     (TxOut(value, b"\x00\x20" + bytes(32)),), 0)
    contract = Contract(3, client.pub.data, server.pub.data, 1_700_000_000,
                        OutPoint(tx.txid, 0), value)
    return ChannelRecord(Role.SERVER, contract, tx.serialize(), server, value, SIGNATURE)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@contextlib.contextmanager
def opened(engine: str, dsn: str | None, directory: str | None) -> Iterator[ChannelStore]:
    """A new, empty store of `engine`."""
    with contextlib.ExitStack() as stack:
        if engine == "sqlite":
            tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=directory))
            yield stack.enter_context(open_store(Path(tmp) / "bench.db"))
            return
        if dsn is None:
            server = stack.enter_context(PostgresServer())
            dsn = server.dsn(server.new_database())
        yield stack.enter_context(open_store(engine="postgresql", dsn=dsn))


def run(payments: int, channels: int, batch: int, store: ChannelStore) -> dict[str, object]:
    records = [new_channel(10 * payments + 1000) for _ in range(channels)]
    store.put_many(records)
    latencies: list[float] = []  # per commit
    started = time.perf_counter()
    for first in range(0, payments, batch):
        group: list[Payment] = []
        for i in range(first, min(first + batch, payments)):
            rec = records[i % channels]
            rec = records[i % channels] = rec.with_payment(rec.change - 10, SIGNATURE)
            group.append((rec, 10, b"bench"))
        t0 = time.perf_counter_ns()
        assert store.record_payments(group) == [None] * len(group)
        latencies.append((time.perf_counter_ns() - t0) / 1e6)
    elapsed = time.perf_counter() - started
    assert len(store.payments(Role.SERVER, limit=payments + 1)) == payments
    latencies.sort()
    return {
        "engine": store.info().engine,
        "payments": payments,
        "channels": channels,
        "batch": batch,
        "where": store.info().location,
        "seconds": round(elapsed, 3),
        "payments_per_second": round(payments / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "max_ms": round(latencies[-1], 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="payments per commit")
    parser.add_argument("--engine", choices=ENGINES, default="sqlite")
    parser.add_argument("--dsn", help="postgresql: this database (default: a throwaway server)")
    parser.add_argument("--dir", help="where to put the temporary store (default: system temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    with opened(args.engine, args.dsn, args.dir) as store:
        result = run(args.payments, args.channels, max(args.batch, 1), store)
    print(f"{args.engine} record_payments, {result['payments']} payments over "
          f"{result['channels']} channel(s), {result['batch']} per commit, in {result['where']}")
    print(f"  throughput  {result['payments_per_second']} payments/s "
          f"({result['seconds']} s)")
    print(f"  commit      p50 {result['p50_ms']} ms   p99 {result['p99_ms']} ms   "
          f"max {result['max_ms']} ms   mean {result['mean_ms']} ms")
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""record_payment throughput and latency of SQLiteStore on a temporary file.

Each payment is one committed, fsynced transaction, so the figures are mostly the disk's
fsync latency. Usage: python bench/store_payments.py [--payments N] [--channels K]
[--dir DIR] [--json]   (--json prints one JSON object last)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.store import SQLiteStore

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


def run(payments: int, channels: int, directory: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "bench.db"
        with SQLiteStore(path) as store:
            records = [new_channel(10 * payments + 1000) for _ in range(channels)]
            for rec in records:
                store.put(rec)
            latencies: list[float] = []
            started = time.perf_counter()
            for i in range(payments):
                rec = records[i % channels]
                rec = records[i % channels] = rec.with_payment(rec.change - 10, SIGNATURE)
                t0 = time.perf_counter_ns()
                store.record_payment(rec, 10, b"bench")
                latencies.append((time.perf_counter_ns() - t0) / 1e6)
            elapsed = time.perf_counter() - started
            assert len(store.payments(Role.SERVER, limit=payments + 1)) == payments
        latencies.sort()
        return {
            "payments": payments,
            "channels": channels,
            "dir": str(Path(tmp).parent),
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
    parser.add_argument("--dir", help="where to put the temporary store (default: system temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    result = run(args.payments, args.channels, args.dir)
    print(f"SQLiteStore.record_payment, {result['payments']} payments over "
          f"{result['channels']} channel(s) in {result['dir']}")
    print(f"  throughput  {result['payments_per_second']} payments/s "
          f"({result['seconds']} s)")
    print(f"  latency     p50 {result['p50_ms']} ms   p99 {result['p99_ms']} ms   "
          f"max {result['max_ms']} ms   mean {result['mean_ms']} ms")
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Re-anchoring a live channel (issue 23): what it costs while the channel keeps paying.

One version-3 channel between a PaymentServer and a PaymentClient (one process, two peered
regtest bitcoinds, durable SQLite stores) pays continuously, W payments in flight (--window),
while it is re-anchored N times by hand (--reanchors), in turn a renewal, a top-up, and a
top-up with a renewal; the server adds its payout to each (what the client acknowledged).
After each, a block confirms R and the bench waits for the channel to move to the new contract
(promotion) before the next one; where promotion does not happen within --promotion-timeout
seconds, the run stops there and says so. Figures: re-anchors done, the round trip of one
(Channel.reanchor: PROPOSE to the server's ACK), the longest gap between acknowledgements
(overall and during re-anchors), payments/s over the run, and R's vbytes beside closing the
channel and opening a new one (settlement + contract).
Usage: python bench/renew.py [--reanchors N] [--window W] [--promotion-timeout S] [--json]
(prints figures, then one JSON object last)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.reanchor import promotion_depth
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import ChannelFailed
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig, to_btc
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.regtest import regtest_ports
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.store import SQLiteStore
from regtest.node import RegtestNode, regtest_nodes, sync_tips

VALUE = 2_000_000  # sat: the channel's opening value
AMOUNT = 10  # sat per payment: room for the whole run
TOP_UP = 100_000
WINDOWS = (2 * 86_400, 3 * 86_400)  # renewals alternate, so each moves the expiry
KINDS = ("renewal", "topup", "topup+renewal")


def config_for(node: RegtestNode) -> NodeConfig:
    return NodeConfig(url=node.rpc_url, chain="regtest", wallet=node.wallet,
                      cookie_file=node.cookie_path)


class Stream:
    """W tasks paying AMOUNT in a loop; the time of every acknowledgement."""

    def __init__(self, channel: Channel, window: int) -> None:
        self.channel, self.acks = channel, [time.perf_counter()]
        self.failure = ""
        self.stop = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._pay()) for _ in range(window)]

    async def _pay(self) -> None:
        while not self.stop.is_set():
            try:
                await self.channel.pay(AMOUNT)
            except ChannelFailed as exc:  # the run says why it stopped
                self.failure = str(exc)
                return
            self.acks.append(time.perf_counter())

    async def end(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    def longest_gap(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The longest time without an acknowledgement among the gaps that overlap
        [start, end], in seconds."""
        times = sorted(self.acks)
        return max((b - a for a, b in itertools.pairwise(times)
                    if b >= start and a <= end), default=0.0)


async def promoted(channel: Channel, txid: str, timeout: float) -> bool:
    """Wait (bounded) until the channel's contract is R's output: promotion."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if channel.record.contract_txid == txid:
            return True
        await asyncio.sleep(0.05)
    return False


async def run(server_node: RegtestNode, client_node: RegtestNode, tmp: Path, reanchors: int,
              window: int, promotion_timeout: float) -> dict[str, Any]:
    server_store, client_store = SQLiteStore(tmp / "server.db"), SQLiteStore(tmp / "client.db")
    server = PaymentServer(regtest_ports(Bitcoind(config_for(server_node))), server_store,
                           ServerPolicy(reanchoring=True), poll_interval=0.2)
    client = PaymentClient(AsyncBitcoind(Bitcoind(config_for(client_node))), client_store,
                           policy=ClientPolicy(VALUE, payment_window=window,
                                               reanchoring=True), poll_interval=0.2)
    host, port = await server.listen()
    channel = await client.open(host, port, VALUE, version=3)
    stream = Stream(channel, window)
    started = time.perf_counter()
    round_trips: list[float] = []
    during: list[float] = []
    sizes: dict[str, list[int]] = {}
    stopped = ""
    for i in range(reanchors):
        kind = KINDS[i % len(KINDS)]
        top_up = TOP_UP if "topup" in kind else 0
        time_window = WINDOWS[i % 2] if "renewal" in kind else 0
        began = time.perf_counter()
        record = await channel.reanchor(top_up, time_window)
        ended = time.perf_counter()
        round_trips.append(ended - began)
        assert record.pending is not None
        r = Transaction.parse(record.pending.tx)
        sizes.setdefault(kind, []).append(r.vsize)
        # Its mempool holds R (the server broadcast it); a top-up R is promoted only once
        # forget_depth deep (reanchor.promotion_depth), by both sides.
        server_node.mine(promotion_depth(r, 1, max(server.watcher.policy.forget_depth,
                                                   client.watcher.policy.forget_depth)))
        sync_tips([server_node, client_node])
        during.append(stream.longest_gap(began, ended))
        if not await promoted(channel, r.txid_hex, promotion_timeout):
            stopped = (f"re-anchor {i + 1} was not promoted within {promotion_timeout:g} s "
                       "of its confirmation (the watcher's promotion: not built here)"
                       + (f"; the stream ended: {stream.failure}" if stream.failure else ""))
            break
    await stream.end()
    elapsed = time.perf_counter() - started
    payments = len(stream.acks) - 1
    # Close plus reopen, for comparison: a channel of the same kind opened, paid, settled.
    other = await client.open(host, port, VALUE, version=3, new=True)
    await other.pay(AMOUNT)
    settlement = await other.close()
    opening = Transaction.parse(other.record.contract_tx)
    await client.stop()
    await server.stop()
    server_store.close()
    client_store.close()
    renewal = statistics.mean(sizes.get("renewal") or [0])
    return {
        "reanchors": len(round_trips),
        "promotion": not stopped,
        "stopped": stopped or None,
        "window": window,
        "reanchor_round_trip_ms": round(statistics.median(round_trips) * 1000, 1),
        "reanchor_round_trip_max_ms": round(max(round_trips) * 1000, 1),
        "longest_ack_gap_ms": round(stream.longest_gap() * 1000, 1),
        "longest_ack_gap_during_reanchor_ms": round(max(during) * 1000, 1),
        "payments": payments,
        "payments_per_s": round(payments / elapsed, 1),
        "vbytes_per_renewal": round(renewal, 1),
        "vbytes_by_kind": {kind: round(statistics.mean(v), 1) for kind, v in sizes.items()},
        "vbytes_close_plus_reopen": settlement.vsize + opening.vsize,
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reanchors", type=int, default=10)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--promotion-timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="(the JSON object is always last)")
    args = parser.parse_args()
    with (regtest_nodes(2, connected=True) as (server_node, client_node),
          tempfile.TemporaryDirectory(prefix="paychan-bench-") as tmp):
        client_node.pay_in_block({client_node.new_address(): to_btc(VALUE + 100_000)
                                  for _ in range(2 + args.reanchors)})
        sync_tips([client_node, server_node])
        result = asyncio.run(run(server_node, client_node, Path(tmp), args.reanchors,
                                 args.window, args.promotion_timeout))
    print(f"re-anchors: {result['reanchors']} ({result['stopped'] or 'all promoted'})")
    print(f"round trip of one re-anchor: {result['reanchor_round_trip_ms']} ms (median), "
          f"{result['reanchor_round_trip_max_ms']} ms (max)")
    print(f"longest gap between acknowledgements: {result['longest_ack_gap_ms']} ms "
          f"(during a re-anchor: {result['longest_ack_gap_during_reanchor_ms']} ms)")
    print(f"payments: {result['payments']} at {result['payments_per_s']}/s "
          f"(window {result['window']})")
    print(f"on chain: {result['vbytes_per_renewal']} vbytes per renewal "
          f"({result['vbytes_by_kind']}) beside {result['vbytes_close_plus_reopen']} for "
          "close plus reopen")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 23's end to end, on real regtest nodes: one channel paying continuously (16 payments
in flight) lives through at least ten re-anchors driven by the autopilot alone (the server's
payouts, the client's top-ups and renewals, and all three in one), each R mined and the
channel promoted; the stream never stops; at the end every sat adds up against both
wallets (a top-up R mined forget_depth deep before both promote it). The longest gap
between acknowledgements is printed, not asserted."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from dataclasses import dataclass, field

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.reanchor import promotion_depth
from bitcoind_paychan.channel.reanchor_autopilot import kinds
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.node import to_sat
from bitcoind_paychan.service.client import Channel
from regtest.waiting import until
from tests.service.conftest import FAST, Sides

VALUE = 1_000_000
AMOUNT = 20  # sat per payment
WINDOW = 16
RENEW_BEFORE = 5 * 3600
CLIENT = ClientPolicy(VALUE, reanchoring=True, payment_window=WINDOW, refill_below=985_000,
                      refill_to=VALUE, max_deposit=20 * VALUE, renew_before=RENEW_BEFORE)
SERVER = ServerPolicy(reanchoring=True, payout_above=8_000)


class Clock:
    """Both sides' clock: real time plus what the test skips ahead (to bring expiries near)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped


@dataclass
class Stream:
    """WINDOW tasks paying AMOUNT each until told to stop: what was acknowledged, and when."""

    channel: Channel
    acked: int = 0
    acks: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def pay(self) -> None:
        while not self.stop.is_set():
            await self.channel.pay(AMOUNT)
            self.acked += AMOUNT
            self.acks.append(time.perf_counter())

    def longest_gap(self) -> float:
        return max((b - a for a, b in itertools.pairwise(sorted(self.acks))), default=0.0)


def test_one_channel_lives_through_ten_autopilot_reanchors(sides: Sides) -> None:
    clock = Clock()
    before = to_sat(sides.client_node.wallet_rpc("getbalances")["mine"]["trusted"])

    async def scenario() -> tuple[ChannelRecord, Stream, list[tuple[Transaction, int,
                                                                     tuple[str, ...]]],
                                  Transaction, Transaction]:
        server = sides.server(SERVER, clock=clock)
        host, port = await server.listen()
        client = sides.client(policy=CLIENT, clock=clock)
        channel = await client.open(host, port, VALUE, version=3)
        opening = Transaction.parse(channel.record.contract_tx)
        stream = Stream(channel)
        payers = [asyncio.ensure_future(stream.pay()) for _ in range(WINDOW)]
        done: list[tuple[Transaction, int, tuple[str, ...]]] = []
        skips = 0
        for round_ in range(20):
            await until(lambda: channel.record.pending is not None
                        and channel.record.pending.complete, 60, "the autopilot's re-anchor")
            record = channel.record
            assert record.pending is not None
            r = Transaction.parse(record.pending.tx)
            done.append((r, record.pending.payout, kinds(record)))
            all_three = any(len(did) == 3 for _, _, did in done)
            # Bring the next contract's expiry near: the client renews on it (with a top-up
            # to refill_to riding along, and the server's payout): all three in one.
            if skips < 5 and not all_three and round_ % 2 == 0 and round_ > 0:
                clock.skipped += record.pending.contract.expiry - clock() - RENEW_BEFORE + 60
                skips += 1
            sides.mine(promotion_depth(r, 1, FAST.forget_depth))  # a top-up R: that deep
            await until(functools.partial(promoted, channel, r.txid_hex), 60,
                        "the channel's promotion")
            if len(done) >= 10 and all_three:
                break
        stream.stop.set()
        await asyncio.gather(*payers)
        record = channel.record
        settlement = await channel.close()
        await client.stop()
        await server.stop()
        return record, stream, done, settlement, opening

    record, stream, done, settlement, opening = asyncio.run(scenario())
    sides.mine(1)
    seen = {kind for _, _, did in done for kind in did}
    print(f"\nre-anchors: {len(done)} {[d for _, _, d in done]}; payments acknowledged: "
          f"{len(stream.acks)}; longest gap between acknowledgements: "
          f"{stream.longest_gap() * 1000:.1f} ms")

    assert len(done) >= 10 and seen == {"topup", "payout", "renewal"}
    assert any(set(did) == {"topup", "payout", "renewal"} for _, _, did in done)
    # The server: what the client paid (every acknowledged payment and the opening one) is
    # exactly what the re-anchors paid it out (gross) and its share of the last contract.
    paid = 1_000 + stream.acked
    last = record.contract
    assert sum(payout for _, payout, _ in done) + last.value - record.change == paid
    server_out = sum(r.outputs[1].value for r, payout, _ in done if payout)
    server_fees = sum(payout - r.outputs[1].value for r, payout, _ in done if payout)
    settled_to_server = sum(o.value for o in settlement.outputs[1:])
    settle_fee = last.value - sum(o.value for o in settlement.outputs)
    assert server_out + settled_to_server == paid - server_fees - settle_fee
    # The client's wallet: funded + top-ups − paid − its fees, to the sat.
    after = to_sat(sides.client_node.wallet_rpc("getbalances")["mine"]["trusted"])
    assert settlement.outputs[0].value == record.change
    r_fees = sum(fee(sides, r) for r, _, _ in done)
    client_fees = fee(sides, opening) + r_fees - server_fees
    assert before - after == paid + client_fees


def promoted(channel: Channel, txid: str) -> bool:
    return channel.record.contract_txid == txid


def fee(sides: Sides, tx: Transaction) -> int:
    """What `tx` paid in fees, by its inputs' values on the server's node."""
    spent = 0
    for txin in tx.inputs:
        prev = sides.server_node.rpc("getrawtransaction", txin.prevout.txid_hex, True)
        spent += to_sat(prev["vout"][txin.prevout.index]["value"])
    return spent - sum(o.value for o in tx.outputs)

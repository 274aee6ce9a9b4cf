"""The re-anchoring autopilot (issue 23) on the in-process chain: the server quotes a payout
once `payout_above` sat are acknowledged, the client tops up below `refill_below` (never
funding more than `max_deposit`) and renews within `renew_before` of the expiry; the stream
goes on meanwhile. Clocks are the test's; nothing waits on time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.kinds.registry import DEFAULT_VERSION, OFFERED, kind_of
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import InvalidParameter, LocalProtocolError
from bitcoind_paychan.service.client import Channel
from bitcoind_paychan.service.server import PaymentServer
from tests.service.conftest import MemSides

VALUE, START = 1_000_000, 1_800_000_000
R = TypeVar("R")


class Clock:
    """One clock both sides read; the test moves it."""

    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


async def pay_until_reanchored(channel: Channel, amount: int, limit: int = 50
                               ) -> ChannelRecord:
    """Pay `amount` until the client holds a complete re-anchor (its ACK read between
    payments); the record then. A bounded count, not a time."""
    for _ in range(limit):
        await channel.pay(amount)
        pending = channel.record.pending
        if pending is not None and pending.complete:
            return channel.record
    raise AssertionError(f"no re-anchor completed within {limit} payments")


def run(sides: MemSides, server_policy: ServerPolicy, client_policy: ClientPolicy,
        scenario: Callable[[Channel, Clock], Awaitable[R]], clock: Clock | None = None) -> R:
    async def main() -> R:
        clock_ = clock or Clock()
        server = sides.server(server_policy, clock=clock_)
        host, port = await server.listen()
        client = sides.client(policy=client_policy, clock=clock_)
        channel = await client.open(host, port, VALUE, version=3)
        try:
            return await scenario(channel, clock_)
        finally:
            await server.stop()

    return asyncio.run(main())


def test_the_server_quotes_a_payout_once_payout_above_is_acknowledged(
        mem_sides: MemSides) -> None:
    paid_before: list[int] = []

    async def scenario(channel: Channel, clock: Clock) -> ChannelRecord:
        for _ in range(6):  # 1,000 + 6 × 3,000 = 19,000: below the threshold, no quote
            await channel.pay(3_000)
        assert channel.record.pending is None
        paid_before.append(channel.record.paid)
        return await pay_until_reanchored(channel, 3_000)

    record = run(mem_sides, ServerPolicy(reanchoring=True, payout_above=20_000),
                 ClientPolicy(VALUE, reanchoring=True), scenario)
    assert isinstance(record, ChannelRecord) and record.pending is not None
    r = Transaction.parse(record.pending.tx)
    # Quoted after the payment that crossed 20,000 sat: all of it, no renewal, no top-up.
    assert record.pending.payout == 22_000 and len(r.inputs) == 1
    assert record.pending.contract.expiry == record.contract.expiry
    assert r.txid_hex in {tx.txid_hex for tx in mem_sides.chain.mempool.values()}
    stored = mem_sides.store("server").get(Role.SERVER, record.channel_id)
    assert stored is not None and stored.pending is not None and stored.pending.complete
    assert stored.paid == record.paid > paid_before[0]  # payments went on meanwhile


def test_the_client_tops_up_below_refill_below_up_to_refill_to(mem_sides: MemSides) -> None:
    policy = ClientPolicy(VALUE, reanchoring=True, refill_below=900_000, refill_to=1_200_000,
                          max_deposit=3_000_000)

    async def scenario(channel: Channel, clock: Clock) -> tuple[int, ChannelRecord]:
        await channel.pay(150_000)  # 849,000 left: below refill_below
        left = channel.record.change
        return left, await pay_until_reanchored(channel, 1_000)

    left, record = run(mem_sides, ServerPolicy(reanchoring=True), policy, scenario)
    assert isinstance(record, ChannelRecord) and record.pending is not None
    r = Transaction.parse(record.pending.tx)
    assert len(r.inputs) >= 2  # the contract and the client's coins
    top_up = record.pending.contract.value - VALUE + record.pending.payout
    assert top_up == 1_200_000 - left


def test_a_payout_and_a_top_up_due_together_go_in_one_r(mem_sides: MemSides) -> None:
    """The server's payout and the client's top-up fall due on the same payment: whichever
    side speaks first, one R pays out and tops up (the client's autopilot answers the
    server's unasked payout with its own proposal, or takes the crossing quote as the
    answer to its own), never a payout alone with the top-up left for later."""
    policy = ClientPolicy(VALUE, reanchoring=True, refill_below=975_000, refill_to=VALUE,
                          max_deposit=3 * VALUE)

    async def scenario(channel: Channel, clock: Clock) -> ChannelRecord:
        await channel.pay(30_000)  # 31,000 acknowledged, 969,000 left: both due
        return await pay_until_reanchored(channel, 1_000)

    record = run(mem_sides, ServerPolicy(reanchoring=True, payout_above=20_000), policy,
                 scenario)
    assert isinstance(record, ChannelRecord) and record.pending is not None
    r = Transaction.parse(record.pending.tx)
    assert len(r.inputs) >= 2 and record.pending.payout >= 31_000
    top_up = record.pending.contract.value - VALUE + record.pending.payout
    assert top_up == VALUE - 969_000  # back to refill_to from where it stood when due


def test_a_top_up_never_funds_the_channel_above_max_deposit(mem_sides: MemSides) -> None:
    policy = ClientPolicy(VALUE, reanchoring=True, refill_below=900_000, refill_to=1_000_000,
                          max_deposit=1_100_000)

    async def scenario(channel: Channel, clock: Clock) -> ChannelRecord:
        with pytest.raises(InvalidParameter, match=r"above client\.max_deposit"):
            await channel.reanchor(top_up=200_000)  # by hand: refused, nothing asked
        assert channel.record.pending is None
        await channel.pay(150_000)
        return await pay_until_reanchored(channel, 1_000)

    record = run(mem_sides, ServerPolicy(reanchoring=True), policy, scenario)
    assert isinstance(record, ChannelRecord) and record.pending is not None
    assert record.pending.contract.value - VALUE + record.pending.payout == 100_000


def test_the_client_renews_within_renew_before_of_the_expiry(mem_sides: MemSides) -> None:
    policy = ClientPolicy(VALUE, reanchoring=True, renew_before=5 * 3600)

    async def scenario(channel: Channel, clock: Clock) -> tuple[int, ChannelRecord]:
        await channel.pay(1_000)
        expiry = channel.record.contract.expiry
        clock.now = expiry - 5 * 3600 - 1  # not yet due
        await channel.pay(1_000)
        assert channel.record.pending is None
        clock.now += 2  # due: the next payment asks for it, and the stream goes on
        return int(clock.now), await pay_until_reanchored(channel, 1_000)

    now, record = run(mem_sides, ServerPolicy(reanchoring=True), policy, scenario)
    assert isinstance(record, ChannelRecord) and record.pending is not None
    assert record.pending.contract.expiry == now + policy.time_window
    assert len(Transaction.parse(record.pending.tx).inputs) == 1  # no top-up


def test_the_autopilot_asks_nothing_while_nothing_is_due(mem_sides: MemSides) -> None:
    async def scenario(channel: Channel, clock: Clock) -> ChannelRecord:
        for _ in range(20):
            await channel.pay(1_000)
        with pytest.raises(LocalProtocolError):  # and a quote by hand finds nothing to do
            await mem_sides_server[0].quote(channel.record.channel_id, payout=False)
        return channel.record

    mem_sides_server: list[PaymentServer] = []
    policy = ClientPolicy(VALUE, reanchoring=True, refill_below=500_000, max_deposit=VALUE * 2,
                          renew_before=3600)

    async def main() -> ChannelRecord:
        server = mem_sides.server(ServerPolicy(reanchoring=True, payout_above=50_000,
                                               renew_before=4 * 3600 - 60))
        mem_sides_server.append(server)
        host, port = await server.listen()
        client = mem_sides.client(policy=policy)
        channel = await client.open(host, port, VALUE, version=3)
        try:
            return await scenario(channel, Clock())
        finally:
            await server.stop()

    record = asyncio.run(main())
    assert record.pending is None and record.paid == 21_000
    assert {tx.txid_hex for tx in mem_sides.chain.mempool.values()} <= {record.contract_txid}


def test_a_client_asking_for_reanchoring_opens_the_newest_kind_that_can(
        mem_sides: MemSides) -> None:
    async def main() -> tuple[int, int]:
        server = mem_sides.server(ServerPolicy(reanchoring=True))
        host, port = await server.listen()
        try:
            living = await mem_sides.client(policy=ClientPolicy(VALUE, reanchoring=True)).open(
                host, port, VALUE)
            plain = await mem_sides.client("plain").open(host, port, VALUE)
            return living.version, plain.version
        finally:
            await server.stop()

    living, plain = asyncio.run(main())
    assert living == max(v for v in OFFERED if kind_of(v).capabilities.reanchoring)
    assert plain == DEFAULT_VERSION

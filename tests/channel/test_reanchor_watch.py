"""A channel after its re-anchor R is signed (issue 23, docs/design/reanchoring.md 4, 5):
the chain watcher's decisions as pure functions (R is never taken for a settlement), and
the server machine across its promotion."""

from __future__ import annotations

from dataclasses import replace

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.effects import (
    Broadcast,
    PaymentReceived,
    PromoteChannel,
    Purpose,
    ReanchorEnded,
    SettleChannel,
)
from bitcoind_paychan.channel.reanchor import promoted, promotion_depth
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus
from bitcoind_paychan.channel.watch import (
    INCREMENTAL_RELAY_FEE,
    Tip,
    WatchPolicy,
    promoted_closing,
    replacing_rate,
    review,
)
from regtest.chainrules import spend_problem
from tests.channel.pump import PAYOUT
from tests.channel.test_reanchor import NOW, opened, rec, renewed

POLICY = WatchPolicy(forget_depth=3)
RATE = 2_000


def server_record(paid_after: int = 0) -> tuple[ChannelRecord, Transaction]:
    """The server's record once a renewal with a payout is complete (R unconfirmed), then
    `paid_after` sat paid on both contracts."""
    pump = opened()
    r = renewed(pump)
    if paid_after:
        pump.run(pump.client.pay(paid_after))
    return rec(pump.server), r


def at(height: int, time: int = NOW) -> Tip:
    return Tip(height, time - 3600, time)


def test_r_in_the_mempool_or_a_shallow_block_is_no_settlement() -> None:
    record, r = server_record()
    seen = ChainState(contract_height=100, spender=r.serialize())
    assert review(record, seen, at(101), RATE, POLICY, 2) == []  # waits: R in the mempool
    confirmed = replace(seen, spender_height=101)
    assert review(record, confirmed, at(101), RATE, POLICY, 2) == []  # 1 of 2
    assert review(record, confirmed, at(102), RATE, POLICY, 2) == [
        PromoteChannel(record.channel_id)]
    assert review(record, confirmed, at(101), RATE, POLICY, 0) == [  # at least one
        PromoteChannel(record.channel_id)]


def test_a_top_up_r_is_promoted_only_forget_depth_deep() -> None:
    """A top-up R spends the client's wallet coins, which a reorg could let it spend
    elsewhere: promoted at forget_depth however few confirmations promote a plain R (else C
    could come back funded with neither its settlement nor its refund held)."""
    pump = opened()
    r = renewed(pump, top_up=100_000)
    mined = ChainState(contract_height=100, spender=r.serialize(), spender_height=101)
    for record in (rec(pump.server), rec(pump.client)):
        assert promotion_depth(r, 1, POLICY.forget_depth) == POLICY.forget_depth == 3
        assert review(record, mined, at(102), RATE, POLICY, 1) == []  # 2 of 3
        assert review(record, mined, at(103), RATE, POLICY, 1) == [
            PromoteChannel(record.channel_id)]
    server = rec(pump.server)
    assert review(closing(server), mined, at(102), RATE, POLICY, 1) == []  # settling C
    assert review(closing(server), mined, at(103), RATE, POLICY, 1) == [
        PromoteChannel(server.channel_id)]
    assert promotion_depth(r, 5, POLICY.forget_depth) == 5  # min_confirmations above it
    plain = server_record()[1]
    assert promotion_depth(plain, 0, POLICY.forget_depth) == 1


def test_the_server_broadcasts_its_complete_r_until_it_is_seen() -> None:
    record, r = server_record()
    effects = review(record, ChainState(contract_height=100), at(101), RATE, POLICY)
    assert effects == [Broadcast(r, Purpose.REANCHOR, record.channel_id)]


def test_the_deadline_or_a_dead_r_settles_the_contract() -> None:
    record, r = server_record()
    deadline = record.contract.expiry - POLICY.settle_margin
    seen = ChainState(contract_height=100, spender=r.serialize())
    assert review(record, seen, at(101, deadline), RATE, POLICY) == [
        SettleChannel(record.channel_id)]
    (dead,) = review(record, ChainState(contract_height=100), at(101), RATE, POLICY,
                     reanchor_dead=True)
    assert isinstance(dead, SettleChannel) and "never confirm" in dead.reason


def test_a_dead_top_up_gives_the_client_its_coins_back() -> None:
    pump = opened()
    r = renewed(pump, top_up=100_000)
    client = rec(pump.client)
    (ended,) = review(client, ChainState(contract_height=100), at(101), RATE, POLICY,
                      reanchor_dead=True)
    assert isinstance(ended, ReanchorEnded) and ended.tx == r


def test_the_settlement_outbids_r() -> None:
    record, r = server_record()
    assert record.pending is not None
    r_fee = record.contract.value - sum(o.value for o in r.outputs)
    rate = replacing_rate(record, PAYOUT)
    fee = record.contract.settlement_fee(record.change, PAYOUT, rate)
    vsize = record.contract.settlement_fee(record.change, PAYOUT, 1000)
    assert fee >= r_fee + INCREMENTAL_RELAY_FEE * vsize // 1000
    assert rate > r_fee * 1000 // r.vsize + INCREMENTAL_RELAY_FEE
    assert replacing_rate(replace(record, pending=None), PAYOUT) == 0


def closing(record: ChannelRecord) -> ChannelRecord:
    settlement = record.contract.settlement(record.change, record.signature, record.key,
                                            PAYOUT, RATE)
    return replace(record, status=ChannelStatus.CLOSING, settlement_tx=settlement.serialize())


def test_r_beating_the_decided_settlement_moves_it_to_the_next_contract() -> None:
    record, r = server_record(paid_after=20_000)
    pending = record.pending
    assert pending is not None
    decided = closing(record)
    mined = ChainState(contract_height=100, spender=r.serialize(), spender_height=101)
    assert review(decided, mined, at(101), RATE, POLICY) == [PromoteChannel(record.channel_id)]
    unmined = replace(mined, spender_height=0)  # racing: the settlement goes out again
    assert [e.purpose for e in review(decided, unmined, at(101), RATE, POLICY)
            if isinstance(e, Broadcast)] == [Purpose.SETTLEMENT]
    moved = promoted_closing(decided, RATE)
    assert moved is not None and moved.status is ChannelStatus.CLOSING
    assert moved.generation == 1 and moved.change == pending.change
    again = Transaction.parse(moved.settlement_tx or b"")
    assert again.inputs[0].prevout == pending.contract.outpoint
    assert again.outputs[0].value == pending.change
    assert again.outputs[-1].script_pubkey == PAYOUT
    assert spend_problem(moved.contract, again, NOW) is None  # a valid spend of C'


def test_r_beating_it_with_nothing_earned_since_leaves_the_channel_to_its_refund() -> None:
    record, _ = server_record()  # R paid out everything acknowledged
    moved = promoted_closing(closing(record), RATE)
    assert moved is not None and moved.generation == 1
    assert moved.status is ChannelStatus.CLOSING and moved.settlement_tx is None


def test_r_folded_in_before_the_promotion_was_stored_is_no_settlement() -> None:
    """The race seen on real nodes: R's block folded into the chain state against the record
    of the old generation (R its contract's spender), while the promotion (the live
    connection's REANCHOR_LOCKED) stored the new generation. The promoted record with that
    chain state is open on its new contract, confirmed in R's block: not settled, not
    settling."""
    record, r = server_record()
    moved = promoted(record)
    stale = ChainState(contract_height=100, spender=r.serialize(), spender_height=101)
    assert review(moved, stale, at(102), RATE, POLICY) == []
    assert review(moved, ChainState(contract_height=101), at(102), RATE, POLICY) == []


def test_a_payment_answered_after_the_promotion_is_acknowledged_on_the_next_contract() -> None:
    """A payment stored on both contracts whose answer comes after the connection's
    promotion: what the server counts as acknowledged is its change on the next contract
    (a later quote's payout is bounded by it)."""
    pump = opened()
    renewed(pump, top_up=100_000)  # the offset is positive: C' holds more than C
    pump.hold = {PaymentReceived}
    pump.run(pump.client.pay(5_000))
    (received,) = pump.held
    assert isinstance(received, PaymentReceived) and received.record.pending is not None
    pump.hold = set()
    pump.run(pump.server.reanchor_confirmed(promoted(rec(pump.server))), "server")
    pump.run(pump.server.payment_answered(received), "server")
    assert pump.server.acked_change == received.record.pending.change == rec(pump.server).change

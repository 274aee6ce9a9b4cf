"""The chain watcher's decisions, as pure functions over records, chain state and the tip."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import Branch
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelFinished,
    ClosingSeen,
    DiscardChannel,
    Effect,
    ForgetChannel,
    MarkChannel,
    Purpose,
    SettleChannel,
    StoreChainState,
)
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import SETTLEMENT_MARGIN
from bitcoind_paychan.channel.watch import (
    Tip,
    WatchPolicy,
    apply_block,
    is_refund,
    observe_mempool,
    observe_missing_inputs,
    revert_block,
    review,
)
from bitcoind_paychan.store.base import discard_refusal
from regtest.chainrules import spend_problem
from tests.channel.pump import PAYOUT
from tests.channel.test_client import NOW, opened

POLICY = WatchPolicy(forget_depth=3, bump_after_blocks=2)
RATE = 2_000


def records(version: int = 3) -> tuple[ChannelRecord, ChannelRecord]:
    """(server record, client record) of one channel with 50 000 sat paid."""
    pump = opened(version)
    pump.run(pump.client.pay(49_000))
    client = pump.client.record
    assert client is not None
    return pump.server_store[client.contract_txid], client


def types(effects: list[Effect]) -> list[type]:
    return [type(e) for e in effects]


def tip(height: int = 200, time: int = NOW, median_time: int | None = None) -> Tip:
    return Tip(height, time - 3600 if median_time is None else median_time, time)


def settlement_of(server: ChannelRecord, fee_rate: int = RATE) -> Transaction:
    return server.contract.settlement(server.change, server.signature, server.key, PAYOUT,
                                      fee_rate)


def test_settle_margin_covers_two_hours_and_the_fee_target() -> None:
    assert WatchPolicy().settle_margin == SETTLEMENT_MARGIN
    assert WatchPolicy(fees=FeePolicy(target=12)).settle_margin == 4 * 3600
    assert WatchPolicy(settle_margin=5 * 3600).settle_margin == 5 * 3600


def test_server_settles_only_once_the_deadline_is_reached() -> None:
    server, _ = records()
    deadline = server.contract.expiry - POLICY.settle_margin
    confirmed = ChainState(contract_height=150)
    assert review(server, confirmed, tip(time=deadline - 1), RATE, POLICY) == []
    assert review(server, confirmed, tip(time=deadline), RATE, POLICY) == [
        SettleChannel(server.contract_txid)]


def test_server_broadcasts_its_unconfirmed_contract_again() -> None:
    server, _ = records()
    effects = review(server, ChainState(), tip(), RATE, POLICY)
    assert effects == [Broadcast(Transaction.parse(server.contract_tx), Purpose.CONTRACT,
                                 server.contract_txid)]


def test_client_refunds_only_after_median_time_past_passes_the_expiry() -> None:
    _, client = records()
    expiry = client.contract.expiry
    late = tip(time=expiry + 7200, median_time=expiry)
    assert review(client, ChainState(), late, RATE, POLICY) == []  # not final yet
    effects = review(client, ChainState(), tip(time=expiry + 7200, median_time=expiry + 1),
                     RATE, POLICY)
    assert types(effects) == [Broadcast, MarkChannel, StoreChainState, Broadcast]
    contract, mark, store, refund = effects
    assert isinstance(contract, Broadcast) and contract.purpose is Purpose.CONTRACT
    assert isinstance(refund, Broadcast) and refund.purpose is Purpose.REFUND
    tx = refund.tx
    assert tx.inputs[0].prevout == client.contract.outpoint
    assert tx.locktime == client.contract.expiry and is_refund(tx)
    assert tx.outputs[0].script_pubkey == client.contract.change_script
    fee = client.value - tx.outputs[0].value
    assert RATE * tx.vsize // 1000 <= fee <= RATE * (tx.vsize + 3) // 1000
    assert isinstance(mark, MarkChannel) and mark.status is ChannelStatus.CLOSING
    assert isinstance(store, StoreChainState) and store.state.fee_rate == RATE
    assert store.state.spender == tx.serialize()


def test_refund_does_not_rebroadcast_a_confirmed_contract() -> None:
    _, client = records(2)
    late = tip(time=client.contract.expiry + 9000, median_time=client.contract.expiry + 10)
    effects = review(client, ChainState(contract_height=150), late, RATE, POLICY)
    assert [e.purpose for e in effects if isinstance(e, Broadcast)] == [Purpose.REFUND]


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_every_version_can_refund_at_any_fee(version: int) -> None:
    _, client = records(version)
    late = tip(time=client.contract.expiry + 9000, median_time=client.contract.expiry + 10)
    cheap = review(client, ChainState(contract_height=150), late, 1_000, POLICY)[-1]
    dear = review(client, ChainState(contract_height=150), late, 10_000, POLICY)[-1]
    assert isinstance(cheap, Broadcast) and isinstance(dear, Broadcast)
    assert dear.tx.outputs[0].value < cheap.tx.outputs[0].value


def test_blocks_confirm_the_contract_and_its_spender_and_reorgs_undo_it() -> None:
    server, _ = records()
    contract = Transaction.parse(server.contract_tx)
    settlement = settlement_of(server)
    state = apply_block(server, ChainState(), [contract], 101)
    assert state.contract_height == 101
    state = apply_block(server, state, [settlement], 105)
    assert (state.spender, state.spender_height) == (settlement.serialize(), 105)
    reverted = revert_block(state, 105)
    assert reverted.spender == settlement.serialize() and reverted.spender_height == 0
    assert reverted.contract_height == 101
    assert revert_block(reverted, 101).contract_height == 0


def test_a_block_replaces_what_the_state_says_about_its_height_and_above() -> None:
    """A watcher that crashed after storing a block's chain state but before marking the
    block processed gets, after a reorg, the new block at that height without ever being told
    the old one left: the settlement it confirmed must not stay confirmed."""
    server, _ = records()
    contract = Transaction.parse(server.contract_tx)
    state = apply_block(server, apply_block(server, ChainState(), [contract], 101),
                        [settlement_of(server)], 105)
    replaced = apply_block(server, state, [], 105)
    assert replaced.spender_height == 0 and replaced.contract_height == 101
    assert apply_block(server, state, [], 101).contract_height == 0


def test_a_spender_in_the_mempool_is_noticed_but_a_confirmed_one_wins() -> None:
    server, _ = records()
    settlement = settlement_of(server)
    assert observe_mempool(ChainState(), settlement).spender == settlement.serialize()
    confirmed = ChainState(spender=b"\x01", spender_height=7)
    assert observe_mempool(confirmed, settlement) == confirmed


def test_the_client_notices_the_servers_settlement_and_forgets_when_buried() -> None:
    server, client = records()
    settlement = settlement_of(server)
    mempool = ChainState(contract_height=100, spender=settlement.serialize())
    effects = review(client, mempool, tip(110), RATE, POLICY)
    assert types(effects) == [MarkChannel, ClosingSeen, Broadcast]
    assert isinstance(effects[0], MarkChannel) and effects[0].status is ChannelStatus.CLOSING
    seen = effects[1]  # the application hears of it before it confirms
    assert isinstance(seen, ClosingSeen) and seen.closing.txid_hex == settlement.txid_hex
    assert not seen.refund
    closing = replace(client, status=ChannelStatus.CLOSING, settlement_tx=settlement.serialize())
    assert ClosingSeen not in types(review(closing, mempool, tip(111), RATE, POLICY))  # once
    confirmed = replace(mempool, spender_height=110)
    effects = review(client, confirmed, tip(110), RATE, POLICY)
    assert types(effects) == [MarkChannel, ChannelFinished]
    finished = effects[1]
    assert isinstance(finished, ChannelFinished) and finished.status is ChannelStatus.SETTLED
    assert finished.client_amount == client.change
    assert finished.server_amount == client.paid
    marked = replace(client, status=ChannelStatus.SETTLED)
    assert review(marked, confirmed, tip(111), RATE, POLICY) == []
    assert review(marked, confirmed, tip(112), RATE, POLICY) == [
        ForgetChannel(client.contract_txid)]


def test_the_server_sees_the_clients_refund() -> None:
    server, client = records()
    refund = client.contract.refund(client.key, RATE, client.refund_tx)
    state = ChainState(contract_height=100, spender=refund.serialize(), spender_height=300)
    effects = review(server, state, tip(300), RATE, POLICY)
    finished = effects[1]
    assert isinstance(finished, ChannelFinished) and finished.status is ChannelStatus.REFUNDED
    assert finished.server_amount == server.contract.value - refund.outputs[0].value


def test_a_reorged_out_settlement_is_broadcast_again() -> None:
    server, _ = records()
    settlement = settlement_of(server)
    settled = replace(server, status=ChannelStatus.SETTLED, settlement_tx=settlement.serialize())
    state = revert_block(ChainState(spender=settlement.serialize(), spender_height=120), 120)
    effects = review(settled, state, tip(121), RATE, POLICY)
    assert types(effects) == [MarkChannel, StoreChainState, Broadcast]
    assert isinstance(effects[2], Broadcast) and effects[2].tx == settlement
    stored = effects[1]
    assert isinstance(stored, StoreChainState)  # the fee bump clock starts now
    assert stored.state.broadcast_height == 121
    fee = server.contract.value - sum(o.value for o in settlement.outputs)
    assert stored.state.fee_rate == fee * 1000 // settlement.vsize


def test_a_stuck_settlement_is_replaced_with_a_higher_fee() -> None:
    server, _ = records()
    low = settlement_of(server, 1_000)
    closing = replace(server, status=ChannelStatus.CLOSING, settlement_tx=low.serialize())
    state = ChainState(contract_height=100, spender=low.serialize(), broadcast_height=200,
                       fee_rate=1_000)
    assert types(review(closing, state, tip(201), 5_000, POLICY)) == [Broadcast]  # not stuck yet
    assert types(review(closing, state, tip(202), 1_000, POLICY)) == [Broadcast]  # no better rate
    effects = review(closing, state, tip(202), 5_000, POLICY)
    assert types(effects) == [MarkChannel, StoreChainState, Broadcast]
    bumped = effects[-1]
    assert isinstance(bumped, Broadcast) and bumped.purpose is Purpose.FEE_BUMP
    high = bumped.tx
    assert high.outputs[0] == low.outputs[0]  # the client's change is untouched
    assert high.outputs[1].value < low.outputs[1].value  # the server's share pays the fee
    assert high.outputs[1].script_pubkey == low.outputs[1].script_pubkey
    stored = effects[1]
    assert isinstance(stored, StoreChainState)
    assert (stored.state.fee_rate, stored.state.broadcast_height) == (5_000, 202)


def test_fee_bumps_stop_at_the_cap() -> None:
    server, _ = records()
    low = settlement_of(server, 1_000)
    closing = replace(server, status=ChannelStatus.CLOSING, settlement_tx=low.serialize())
    state = ChainState(spender=low.serialize(), broadcast_height=100, fee_rate=1_000)
    capped = WatchPolicy(fees=FeePolicy(max_rate=3), bump_after_blocks=1)
    effects = review(closing, state, tip(200), 1_000_000, capped)
    stored = next(e for e in effects if isinstance(e, StoreChainState))
    assert stored.state.fee_rate == 3_000


def test_a_stuck_refund_is_replaced_by_the_client() -> None:
    _, client = records(1)
    late = tip(300, time=client.contract.expiry + 9000, median_time=client.contract.expiry + 10)
    first = review(client, ChainState(contract_height=100), late, 1_000, POLICY)
    state = next(e for e in first if isinstance(e, StoreChainState)).state
    closing = replace(client, status=ChannelStatus.CLOSING)
    later = replace(late, height=302)
    effects = review(closing, state, later, 4_000, POLICY)
    bumped = effects[-1]
    assert isinstance(bumped, Broadcast) and bumped.purpose is Purpose.FEE_BUMP
    assert is_refund(bumped.tx)
    assert bumped.tx.outputs[0].value < Transaction.parse(state.spender).outputs[0].value


def test_contract_inputs_spent_elsewhere_fail_the_channel_then_discard_it() -> None:
    _, client = records()
    contract = Transaction.parse(client.contract_tx)
    thief = Transaction(2, (TxIn(contract.inputs[0].prevout, b"", 0xFFFFFFFF, (b"\x01",)),),
                        (TxOut(1000, PAYOUT),), 0)
    state = apply_block(client, ChainState(), [thief], 150)
    assert state.conflict_height == 150
    effects = review(client, state, tip(150), RATE, POLICY)
    assert types(effects) == [MarkChannel, ChannelFinished]
    assert isinstance(effects[0], MarkChannel) and effects[0].status is ChannelStatus.FAILED
    assert effects[0].closing_tx is None  # nothing closed it: the record's tx stays as is
    failed = replace(client, status=ChannelStatus.FAILED)
    assert review(failed, state, tip(151), RATE, POLICY) == []
    # Never funded: no money history to keep, so it is discarded rather than forgotten.
    assert review(failed, state, tip(152), RATE, POLICY) == [DiscardChannel(client.contract_txid)]
    assert apply_block(client, ChainState(), [contract], 150).conflict_height == 0


def test_a_failed_channel_whose_spender_was_seen_is_forgotten_not_discarded() -> None:
    """The server's settlement reached the mempool before the contract's coins were spent
    elsewhere: the store keeps that as history and refuses to discard it, so the watcher must
    forget it (a refused discard would stop every review at this channel)."""
    server, _ = records()
    contract = Transaction.parse(server.contract_tx)
    thief = Transaction(2, (TxIn(contract.inputs[0].prevout, b"", 0xFFFFFFFF, (b"\x01",)),),
                        (TxOut(1000, PAYOUT),), 0)
    seen = observe_mempool(ChainState(), settlement_of(server))
    state = apply_block(server, seen, [thief], 150)
    failed = replace(server, status=ChannelStatus.FAILED)
    assert discard_refusal(failed.status, state) is not None
    assert review(failed, state, tip(152), RATE, POLICY) == [ForgetChannel(server.contract_txid)]


def test_missing_inputs_count_as_a_conflict_from_the_tip_where_they_were_seen() -> None:
    seen = observe_missing_inputs(ChainState(), "bad-txns-inputs-missingorspent", 200)
    assert seen == ChainState(conflict_height=200)
    assert observe_missing_inputs(ChainState(), "missing-inputs", 200) == seen
    assert observe_missing_inputs(seen, "missing-inputs", 210) == seen  # the first sighting
    for other in ("txn-mempool-conflict", "min relay fee not met", ""):
        assert observe_missing_inputs(ChainState(), other, 200) == ChainState()
    for known in (ChainState(contract_height=5), ChainState(spender=b"\x01")):
        assert observe_missing_inputs(known, "missing-inputs", 200) == known
    assert revert_block(seen, 200).conflict_height == 0  # a reorg: looked at again


def test_closing_server_rebroadcasts_its_unseen_settlement() -> None:
    server, _ = records()
    settlement = settlement_of(server)
    closing = replace(server, status=ChannelStatus.CLOSING,
                      settlement_tx=settlement.serialize())
    assert review(closing, ChainState(contract_height=150), tip(), RATE, POLICY) == [
        Broadcast(settlement, Purpose.SETTLEMENT, server.contract_txid)]


def test_a_closing_server_channel_broadcasts_its_unconfirmed_contract_before_its_settlement(
        ) -> None:
    """A refused settlement leaves the channel CLOSING (never OPEN again): if its contract left
    the mempool, the review puts the contract back first, then the one stored settlement."""
    server, _ = records()
    settlement = settlement_of(server)
    closing = replace(server, status=ChannelStatus.CLOSING,
                      settlement_tx=settlement.serialize())
    txid = server.contract_txid
    assert review(closing, ChainState(), tip(), RATE, POLICY) == [
        Broadcast(Transaction.parse(server.contract_tx), Purpose.CONTRACT, txid),
        Broadcast(settlement, Purpose.SETTLEMENT, txid)]


def test_a_closing_server_channels_unseen_settlement_is_repriced_with_the_same_payout() -> None:
    """A settlement the node refused (say its fee fell below what the mempool takes now) is
    re-signed at the current rate, paying the same client change and the same payout script:
    it replaces the stored one (MarkChannel first), never a rival."""
    server, _ = records()
    low = settlement_of(server, 1_000)
    closing = replace(server, status=ChannelStatus.CLOSING, settlement_tx=low.serialize())
    effects = review(closing, ChainState(contract_height=150), tip(), 10_000, POLICY)
    assert types(effects) == [MarkChannel, Broadcast]
    mark, sent = effects
    assert isinstance(mark, MarkChannel) and isinstance(sent, Broadcast)
    repriced = sent.tx
    assert mark.status is ChannelStatus.CLOSING and mark.closing_tx == repriced.serialize()
    assert sent.purpose is Purpose.SETTLEMENT and repriced.txid != low.txid
    assert repriced.outputs[0] == low.outputs[0]  # the client's change, untouched
    assert repriced.outputs[-1].script_pubkey == low.outputs[-1].script_pubkey
    assert repriced.outputs[-1].value < low.outputs[-1].value
    # At its own rate or below, the stored one goes out as it is.
    assert review(closing, ChainState(contract_height=150), tip(), 1_000, POLICY) == [
        Broadcast(low, Purpose.SETTLEMENT, server.contract_txid)]


def test_other_outpoints_are_ignored() -> None:
    server, _ = records()
    stranger = Transaction(2, (TxIn(OutPoint(bytes(32), 5), b"", 0),), (TxOut(1, b""),), 0)
    assert apply_block(server, ChainState(), [stranger], 10) == ChainState()
    assert server.role is Role.SERVER


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
def test_a_failed_channel_is_never_broadcast_but_reopens_if_its_contract_confirms(
        role: Role) -> None:
    """A client that gave up before CHANNEL_OPEN released its coins: it must not broadcast
    the contract itself, even past the expiry; but if the contract confirms anyway, the money
    is in the channel and it is refunded (or settled) as usual."""
    server, client = records()
    record = replace(server if role is Role.SERVER else client, status=ChannelStatus.FAILED)
    late = tip(time=record.contract.expiry + 7200, median_time=record.contract.expiry + 3600)
    assert review(record, ChainState(), late, RATE, POLICY) == []
    confirmed = ChainState(contract_height=150)
    assert review(record, confirmed, late, RATE, POLICY) == [
        MarkChannel(record.contract_txid, ChannelStatus.OPEN)]
    reopened = replace(record, status=ChannelStatus.OPEN)
    acted = types(review(reopened, confirmed, late, RATE, POLICY))
    assert acted == ([SettleChannel] if role is Role.SERVER
                     else [MarkChannel, StoreChainState, Broadcast])  # the refund alone


def test_a_given_up_channel_found_on_chain_is_closing_if_it_holds_a_settlement() -> None:
    """Its contract's inputs went missing (FAILED) after its settlement was sent; the contract
    confirmed after all. Its client holds that settlement: the channel is closing (settled
    again), never open for payments, which that settlement would not pay."""
    server, _ = records()
    on_chain = ChainState(contract_height=150)
    failed = replace(server, status=ChannelStatus.FAILED)
    assert review(failed, on_chain, tip(152), RATE, POLICY) == [
        MarkChannel(server.contract_txid, ChannelStatus.OPEN)]
    settled = replace(failed, settlement_tx=settlement_of(server).serialize())
    assert review(settled, on_chain, tip(152), RATE, POLICY) == [
        MarkChannel(server.contract_txid, ChannelStatus.CLOSING)]


def key_path_settlement(server: ChannelRecord, client: ChannelRecord, change: int
                        ) -> Transaction:
    """A v4 key-path settlement both keys signed, paying the client `change`."""
    kind, contract = server.contract.kind, server.contract
    fee = contract.settlement_fee(change, PAYOUT, RATE, Branch.KEY_PATH)
    tx = contract.settlement_draft(change, contract.value - change - fee, PAYOUT)
    secnonce, client_nonce = kind.close_nonce(client.key)
    server_nonce = kind.server_close_nonce(server.key, client_nonce, tx)
    signature = kind.sign_close(client.key, secnonce, client_nonce, server_nonce, tx)
    return kind.complete_close(server.key, tx, client_nonce, signature)


def test_a_spend_paying_the_client_more_than_the_stored_change_is_contested() -> None:
    """A key-path settlement of an earlier change (what a client completing one alone would
    hold) is never recorded as the server's settlement: the application hears of it, and the
    server outbids it with its own settlement of the client's latest payment."""
    server, client = records(4)
    stale = key_path_settlement(server, client, server.change + 30_000)
    assert spend_problem(server.contract, stale, NOW) is None
    mempool = ChainState(contract_height=100, spender=stale.serialize())
    effects = review(server, mempool, tip(110), RATE, POLICY)
    assert types(effects) == [MarkChannel, ClosingSeen, StoreChainState, Broadcast]
    marked, seen, stored, broadcast = effects
    assert isinstance(seen, ClosingSeen) and seen.closing == stale and not seen.refund
    assert isinstance(marked, MarkChannel) and marked.closing_tx
    ours = Transaction.parse(marked.closing_tx)
    assert ours.outputs[0].value == server.change and ours.outputs[-1].script_pubkey == PAYOUT
    assert server.contract.kind.unlocking(ours)[1] is Branch.COOPERATIVE
    assert spend_problem(server.contract, ours, NOW) is None
    assert isinstance(broadcast, Broadcast) and broadcast.tx == ours
    assert broadcast.purpose is Purpose.FEE_BUMP
    assert isinstance(stored, StoreChainState) and stored.state.spender == ours.serialize()
    assert fee_rate(server, ours) > fee_rate(server, stale) + 1000  # a valid replacement
    # Still in the mempool next time: contested again, never heard of twice, never ours.
    closing = replace(server, status=ChannelStatus.CLOSING, settlement_tx=ours.serialize())
    again = review(closing, mempool, tip(111), RATE, POLICY)
    assert ClosingSeen not in types(again)
    assert all(e.closing_tx != stale.serialize() for e in again if isinstance(e, MarkChannel))
    # Confirmed: the channel finishes with what the chain really paid.
    effects = review(closing, replace(mempool, spender_height=111), tip(111), RATE, POLICY)
    finished = effects[1]
    assert isinstance(finished, ChannelFinished)
    assert finished.client_amount == server.change + 30_000


def fee_rate(record: ChannelRecord, tx: Transaction) -> int:
    return (record.contract.value - sum(o.value for o in tx.outputs)) * 1000 // tx.vsize

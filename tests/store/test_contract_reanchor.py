"""Re-anchoring in the store (docs/design/reanchoring.md 9), run against every engine: a record
with a re-anchor in flight reads back whole, a payment's two signatures (on C and on C') are
stored together or not at all, promotion keeps every generation as history under the one
channel id, and the writes that would lose money are refused. The records are the machines'
own (tests/channel/test_reanchor.py's exchange), so every signature in them is real."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from bitcoind_paychan.bitcoin.tx import OutPoint
from bitcoind_paychan.channel import reanchor
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import LeaseLost, SettlementDecided, StoreError
from bitcoind_paychan.store import ChannelStore, Generation
from bitcoind_paychan.store.credit import CreditStore
from bitcoind_paychan.store.leases import leases_for
from tests.channel.pump import Pump
from tests.channel.test_reanchor import opened, promote, rec, renewed
from tests.store.helpers import assert_same
from tests.store.test_contract import store

__all__ = ["store"]  # the engines' fixture


def stored(store: ChannelStore, record: ChannelRecord) -> ChannelRecord:
    got = store.get(record.role, record.channel_id)
    assert got is not None
    return got


def server_with_pending(store: ChannelStore) -> Pump:
    """A server channel stored at generation 0, then with its complete re-anchor."""
    pump = opened()
    store.put(rec(pump.server))
    renewed(pump)
    store.put(rec(pump.server))
    return pump


def pay(pump: Pump, amount: int) -> ChannelRecord:
    """The server's record once the client paid `amount` (signed on both while pending)."""
    pump.run(pump.client.pay(amount))
    return rec(pump.server)


@pytest.mark.parametrize("state", ["signed", "complete", "refused"])
@pytest.mark.parametrize("role", list(Role))
def test_a_record_with_a_pending_reanchor_round_trips(store: ChannelStore, role: Role,
                                                      state: str) -> None:
    pump = opened()
    renewed(pump)
    record = rec(pump.client if role is Role.CLIENT else pump.server)
    assert record.pending is not None
    pending = replace(record.pending, complete=state == "complete", refused=state == "refused")
    record = replace(record, pending=pending, peer="paychan.example:4242")
    store.put(record)
    assert_same(stored(store, record), record)
    assert store.generations(role, record.channel_id) == []  # nothing superseded yet


def test_a_payment_stores_both_signatures_together(store: ChannelStore) -> None:
    pump = server_with_pending(store)
    paid = pay(pump, 3_000)
    store.record_payment(paid, 3_000, b"pair")
    got = stored(store, paid)
    assert_same(got, paid)
    assert got.pending is not None and got.pending.complete
    got.contract.check_payment(got.change, got.signature)  # on C
    got.pending.contract.check_payment(got.pending.change, got.pending.signature)  # on C'
    assert got.pending.change == got.change + got.pending.offset(got.contract)
    assert store.payments(Role.SERVER, paid.channel_id)[0].info == b"pair"


def test_a_payment_without_its_signature_on_the_next_contract_is_refused_whole(
        store: ChannelStore) -> None:
    """While a stored re-anchor binds, a payment signed on C alone would leave the server a
    C' signature older than what it acknowledged: refused, and neither signature moves."""
    pump = server_with_pending(store)
    before = stored(store, rec(pump.server))
    paid = pay(pump, 3_000)
    alone = replace(paid, pending=None)
    with pytest.raises(StoreError, match="not covered on every contract"):
        store.record_payment(alone, 3_000)
    assert_same(stored(store, paid), before)
    outcomes = store.record_payments([(alone, 3_000, b""), (paid, 3_000, b"")])
    assert isinstance(outcomes[0], StoreError) and outcomes[1] is None
    assert_same(stored(store, paid), paid)  # the pair went in; the lone one did not


def test_a_refused_reanchor_needs_no_second_signature(store: ChannelStore) -> None:
    """The client stops signing on C' once the server refused R: its payments store alone."""
    pump = opened()
    renewed(pump)
    client = rec(pump.client)
    assert client.pending is not None
    refused = replace(client, pending=replace(client.pending, complete=False, refused=True))
    store.put(refused)
    change = refused.change - 1_000
    later = replace(refused, change=change, payments=refused.payments + 1,
                    signature=refused.contract.sign_payment(refused.key, change))
    store.record_payment(later, 1_000)
    assert_same(stored(store, later), later)


def test_promotion_keeps_every_generation_under_one_channel_id(store: ChannelStore) -> None:
    pump = server_with_pending(store)
    store.record_payment(paid := pay(pump, 3_000), 3_000)
    first = stored(store, paid)
    assert first.pending is not None
    before = int(time.time())
    promote(pump)
    store.put(promoted := rec(pump.server))
    assert_same(stored(store, promoted), promoted)
    assert promoted.channel_id == first.contract_txid != promoted.contract_txid
    (kept,) = store.generations(Role.SERVER, first.contract_txid)
    assert kept == Generation(Role.SERVER, first.contract_txid, 0, first.contract_txid,
                              first.contract_tx, first.contract.expiry, first.contract.value,
                              first.pending.txid, first.pending.payout, kept.promoted_at)
    assert kept.promoted_at >= before
    # Payments go on on C', in the same channel and log; then a second generation.
    store.record_payment(pay(pump, 2_000), 2_000)
    assert_same(stored(store, promoted), rec(pump.server))
    renewed(pump, window=3 * 24 * 3600)
    store.put(rec(pump.server))
    store.record_payment(pay(pump, 1_000), 1_000)
    promote(pump)
    store.put(third := rec(pump.server))
    chain = store.generations(Role.SERVER, first.contract_txid)
    assert [(g.generation, g.contract_txid) for g in chain] == [
        (0, first.contract_txid), (1, promoted.contract_txid)]
    assert chain[1].reanchor_txid == third.contract_txid
    assert [e.amount for e in store.payments(Role.SERVER, first.contract_txid)][:3] == [
        1_000, 2_000, 3_000]
    # Settled and forgotten: the summary keeps the channel id, the chain stays.
    store.put(replace(third, status=ChannelStatus.CLOSING, settlement_tx=b"settle"))
    store.modify(Role.SERVER, third.channel_id,
                 lambda r: replace(r, status=ChannelStatus.SETTLED))
    store.forget(Role.SERVER, third.channel_id)
    assert store.get(Role.SERVER, third.channel_id) is None
    (summary,) = store.history(Role.SERVER, first.contract_txid)
    assert summary.value == third.contract.value
    assert store.generations(Role.SERVER, first.contract_txid) == chain  # history stays


def test_the_gateways_credit_carries_across_reanchors(store: ChannelStore) -> None:
    """Credit is what the client paid in the channel's life less what was taken: a re-anchor
    paying the server P leaves the next contract P less paid, and the generation keeps P,
    so no credit moves at a promotion (before: the gateway lost P at every payout)."""
    assert isinstance(store, CreditStore)
    pump = server_with_pending(store)  # paid 1,000 + 20,000, R pays all of it out
    channel_id = rec(pump.server).channel_id
    store.record_payment(pay(pump, 3_000), 3_000)
    assert store.take_credit(channel_id, 4_000, 4_000) == 4_000
    before = store.credit(channel_id)
    assert before == rec(pump.server).paid - 4_000 == 20_000
    promote(pump)
    store.put(promoted := rec(pump.server))
    assert promoted.paid < before  # the payout left the contract
    assert store.credit(channel_id) == before  # and stayed credit
    store.record_payment(pay(pump, 2_000), 2_000)
    assert store.credit(channel_id) == before + 2_000
    assert store.take_credit(channel_id, 0, 10**9) == before + 2_000


def test_writes_that_would_lose_money_are_refused(store: ChannelStore) -> None:
    pump = server_with_pending(store)
    pending_record = stored(store, rec(pump.server))
    assert pending_record.pending is not None
    old = replace(pending_record, pending=None)
    # a second re-anchor while one is stored
    other = replace(pending_record.pending, contract=replace(
        pending_record.pending.contract, outpoint=OutPoint(bytes(32), 0)))
    with pytest.raises(StoreError, match="second re-anchor"):
        store.put(replace(pending_record, pending=other))
    # a promotion to a contract that is not the stored re-anchor's
    with pytest.raises(StoreError, match="only the stored re-anchor"):
        store.put(replace(reanchor.promoted(pending_record), contract=other.contract))
    store.put(promoted := reanchor.promoted(pending_record))
    # a stale record, and a payment, of the generation the promotion replaced
    with pytest.raises(StoreError, match="re-anchored to generation 1 meanwhile"):
        store.put(old)
    with pytest.raises(StoreError, match="not covered on every contract"):
        store.record_payment(replace(old, payments=old.payments + 1), 0)
    assert_same(stored(store, promoted), promoted)
    # a re-anchor of a channel whose settlement is decided
    fresh = opened()
    store.put(rec(fresh.server))
    renewed(fresh)
    with pytest.raises(StoreError, match="settlement is decided"):
        store.put(replace(rec(fresh.server), status=ChannelStatus.CLOSING,
                          settlement_tx=b"settle"))
    assert stored(store, rec(fresh.server)).pending is None


def test_the_servers_reanchor_is_stored_only_under_its_current_lease(
        store: ChannelStore) -> None:
    """The server's StoreChannel of its complete R is fenced as its settlement is: under a
    lease a resume took over, after a payment stored since R was checked, or once the
    settlement is decided, nothing is stored (so R is neither broadcast nor sent back)."""
    leases = leases_for(store)
    pump = opened()
    store.put(before := rec(pump.server))
    first = leases.acquire(Role.SERVER, before.channel_id, "a/1")
    renewed(pump)
    resumed = leases.acquire(Role.SERVER, before.channel_id, "b/1")
    with pytest.raises(LeaseLost, match="re-anchor"):
        leases.store_reanchor(rec(pump.server), first)
    assert stored(store, before).pending is None
    leases.store_reanchor(rec(pump.server), resumed)
    assert_same(stored(store, before), rec(pump.server))
    # another channel: a payment on C stored since R was checked, then its settlement
    other = opened()
    store.put(before := rec(other.server))
    lease = leases.acquire(Role.SERVER, before.channel_id, "a/2")
    renewed(other)
    change = before.change - 10
    paid = replace(before, change=change, payments=before.payments + 1,
                   signature=before.contract.sign_payment(other.client.key, change))
    store.record_payment(paid, 10)
    with pytest.raises(StoreError, match="moved"):
        leases.store_reanchor(rec(other.server), lease)
    leases.store_settlement(replace(paid, status=ChannelStatus.CLOSING,
                                    settlement_tx=b"settle"), lease)
    with pytest.raises(SettlementDecided):
        leases.store_reanchor(replace(rec(other.server), change=change), lease)
    assert stored(store, before).pending is None


def test_watched_names_the_current_contract_and_the_reanchor_in_flight(
        store: ChannelStore) -> None:
    """The autopilot's index is rebuilt from `watched`: a channel with R in flight is listed
    with R (its wallet inputs are watched), a promoted one by its id and its current
    contract's txid."""
    pump = server_with_pending(store)
    pending = rec(pump.server).pending
    assert pending is not None
    (watched,) = store.watched(Role.SERVER, [ChannelStatus.OPEN])
    assert watched.contract_txid == rec(pump.server).channel_id
    assert watched.current_txid == "" and watched.reanchor_tx == pending.tx
    promote(pump)
    store.put(rec(pump.server))
    (watched,) = store.watched(Role.SERVER, [ChannelStatus.OPEN])
    assert watched.contract_txid == rec(pump.server).channel_id
    assert watched.current_txid == pending.txid and watched.reanchor_tx is None
    assert watched.outpoint_index == 0 and watched.expiry == pending.contract.expiry


def test_the_promotion_is_stored_only_under_the_current_lease(store: ChannelStore) -> None:
    """`Leases.store_promotion`: fenced as the re-anchor's own write; it promotes the stored
    channel (the superseded generation kept), and only a channel holding a complete R."""
    leases = leases_for(store)
    pump = server_with_pending(store)
    channel_id = rec(pump.server).channel_id
    first = leases.acquire(Role.SERVER, channel_id, "a/1")
    current = leases.acquire(Role.SERVER, channel_id, "b/1")
    with pytest.raises(LeaseLost, match="promotion"):
        leases.store_promotion(first, 1_000)
    assert stored(store, rec(pump.server)).generation == 0
    promoted = leases.store_promotion(current, 1_000)
    assert_same(promoted, reanchor.promoted(rec(pump.server)))
    assert_same(stored(store, promoted), promoted)
    assert [g.generation for g in store.generations(Role.SERVER, channel_id)] == [0]
    with pytest.raises(StoreError, match="no complete re-anchor"):
        leases.store_promotion(current, 1_000)  # promoted already

"""The autopilot's index: which block transactions touch which channel; the deadlines."""

from __future__ import annotations

import os

from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut, encode_varint
from bitcoind_paychan.service.watchindex import WatchIndex


def tx(*spends: OutPoint) -> Transaction:
    return Transaction(2, tuple(TxIn(o) for o in spends), (TxOut(1_000, b"\x51"),), 0)


def block(*txs: Transaction) -> bytes:
    coinbase = tx(OutPoint(bytes(32), 0xFFFFFFFF))
    body = [coinbase, *txs]
    return bytes(80) + encode_varint(len(body)) + b"".join(t.serialize() for t in body)


def coin() -> OutPoint:
    return OutPoint(os.urandom(32), 0)


def test_a_block_is_matched_against_contract_outputs_and_unconfirmed_inputs() -> None:
    funding = coin()
    contract = tx(funding)
    confirmed = tx(coin())
    index = WatchIndex()
    index.add(contract.txid_hex, 0, 1_000, contract.serialize())
    index.add(confirmed.txid_hex, 0, 2_000, None)
    assert index.unconfirmed == {contract.txid_hex}
    settle = tx(OutPoint(confirmed.txid, 0))
    unrelated = tx(coin())
    hits = index.scan(block(unrelated, contract, settle))
    assert hits == {contract.txid_hex: [contract], confirmed.txid_hex: [settle]}
    index.confirmed(contract.txid_hex)
    assert index.unconfirmed == set()
    double_spend = tx(funding)  # its inputs are no longer watched once the contract confirmed
    spend = tx(OutPoint(contract.txid, 0), coin())
    assert index.scan(block(double_spend, spend)) == {contract.txid_hex: [spend]}
    index.remove(confirmed.txid_hex)
    assert index.scan(block(settle)) == {}
    assert len(index) == 1


def test_one_transaction_spending_two_watched_outputs_of_a_channel_is_listed_once() -> None:
    funding = (coin(), coin())
    contract = tx(*funding)
    index = WatchIndex()
    index.add(contract.txid_hex, 0, None, contract.serialize())
    conflict = tx(*funding)
    assert index.scan(block(conflict)) == {contract.txid_hex: [conflict]}


def test_deadlines_come_due_by_the_chain_clock_and_the_next_is_found() -> None:
    index = WatchIndex()
    for deadline in (300, 100, 200, 400):
        index.add(tx(coin()).txid_hex, 0, deadline, None)
    txids = {index.deadline(t): t for t in index.outpoints()}
    assert index.next_deadline(None) == 100
    assert index.next_deadline(100) == 200
    assert index.due(99) == set()
    assert index.due(250) == {txids[100], txids[200]}
    assert index.due(250) == {txids[100], txids[200]}  # due until no longer open
    index.no_deadline(txids[100])
    assert index.due(250) == {txids[200]}
    assert index.next_deadline(None) == 300  # the due ones are not woken up for again
    index.add(txids[300], 0, 350, None)  # a deadline moved: the old one is stale
    assert index.next_deadline(None) == 350
    index.remove(txids[400])
    assert index.next_deadline(350) is None
    assert index.due(1_000) == {txids[200], txids[300]}


def test_a_mempool_transaction_names_the_channels_it_spends_from() -> None:
    funding = coin()
    contract = tx(funding)
    other = tx(coin())
    index = WatchIndex()
    index.add(contract.txid_hex, 0, None, contract.serialize())
    index.add(other.txid_hex, 0, None, None)
    assert index.spent_by(tx(funding, OutPoint(other.txid, 0))) == {contract.txid_hex,
                                                                    other.txid_hex}
    assert index.spent_by(tx(coin())) == set()


def test_the_contract_outputs_of_all_channels_survive_removals_and_re_adds() -> None:
    """`outpoints()` walks a list of the channels ever added (so a worker thread can walk it
    while the loop changes the index): removed ones are left out, re-added ones listed once,
    also after the list was compacted (here when mostly stale)."""
    index = WatchIndex()
    contracts = [tx(coin()) for _ in range(3_000)]
    for contract in contracts:
        index.add(contract.txid_hex, 1, None, None)
    for contract in contracts[:2_900]:
        index.remove(contract.txid_hex)
    index.add(contracts[0].txid_hex, 1, None, None)
    expected = {c.txid_hex: OutPoint(c.txid, 1) for c in [contracts[0], *contracts[2_900:]]}
    assert index.outpoints() == expected
    assert index.outpoints([contracts[0].txid_hex, contracts[1].txid_hex]) == {
        contracts[0].txid_hex: OutPoint(contracts[0].txid, 1)}

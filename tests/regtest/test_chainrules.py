"""The chain's spend rules for channel contracts, checked with the project's own code."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import FINAL, Contract
from regtest.chainrules import contract_spent, is_final, spend_problem, taproot_spend_problem

EXPIRY = 1_700_086_400
VALUE = 500_000


def channel(version: int) -> tuple[Contract, PrivateKey, PrivateKey]:
    client, server = PrivateKey.generate(), PrivateKey.generate()
    contract = Contract(version, client.pub.data, server.pub.data, EXPIRY,
                        OutPoint(bytes(range(32)), 0), VALUE)
    return contract, client, server


def settlement(contract: Contract, client: PrivateKey, server: PrivateKey) -> Transaction:
    change = 100_000
    return contract.settlement(change, contract.sign_payment(client, change), server,
                               bytes(22), 1_000)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_settlement_signed_by_both_spends_the_contract(version: int) -> None:
    contract, client, server = channel(version)
    tx = settlement(contract, client, server)
    assert spend_problem(contract, tx, 0) is None
    spent = TxOut(VALUE, contract.script_pubkey)
    seen = contract_spent(tx, 0, spent, contract.outpoint)
    # a version 1 script holds no expiry (its spends are all cooperative): it reads 0
    assert seen == (replace(contract, expiry=0) if version == 1 else contract)
    forged = settlement(contract, client, PrivateKey.generate())
    assert "does not verify" in (spend_problem(contract, forged, 0) or "")


@pytest.mark.parametrize("version", [2, 3, 4])
def test_a_refund_spends_only_after_its_lock_time(version: int) -> None:
    contract, client, _ = channel(version)
    refund = contract.refund(client, 1_000)
    assert spend_problem(contract, refund, EXPIRY) is not None  # the median time must pass it
    assert spend_problem(contract, refund, EXPIRY + 1) is None
    early = contract.sign_refund(client, contract.refund_tx(1_000, locktime=EXPIRY - 1))
    assert "lock time" in (spend_problem(contract, early, EXPIRY + 1) or "")
    by_height = contract.sign_refund(client, contract.refund_tx(1_000, locktime=100))
    assert "lock time" in (spend_problem(contract, by_height, EXPIRY + 1) or "")


def test_a_payment_to_no_contract_is_not_read_as_one() -> None:
    contract, client, server = channel(3)
    tx = settlement(contract, client, server)
    assert contract_spent(tx, 0, TxOut(VALUE, bytes(22)), contract.outpoint) is None


def test_finality_counts_heights_below_the_threshold_and_times_above() -> None:
    def tx(locktime: int, sequence: int = 0) -> Transaction:
        return Transaction(2, (TxIn(OutPoint(bytes(32), 0), b"", sequence),), (), locktime)

    assert is_final(tx(99), 100, 0) and not is_final(tx(100), 100, 2**31)
    assert is_final(tx(EXPIRY), 0, EXPIRY + 1) and not is_final(tx(EXPIRY), 2**31, EXPIRY)
    assert is_final(tx(EXPIRY, FINAL), 0, 0)


def test_a_version_4_spend_is_checked_by_bip341_from_the_output_alone() -> None:
    """No contract needed: the control block proves the leaf, the leaf names the keys."""
    contract, client, server = channel(4)
    spent = [TxOut(VALUE, contract.script_pubkey)]
    settled = settlement(contract, client, server)
    assert taproot_spend_problem(settled, 0, spent) is None
    forged = settlement(contract, client, PrivateKey.generate())
    assert "does not verify" in (taproot_spend_problem(forged, 0, spent) or "")
    refund = contract.refund(client, 1_000)
    assert taproot_spend_problem(refund, 0, spent) is None  # its finality is the chain's
    early = contract.sign_refund(client, contract.refund_tx(1_000, locktime=EXPIRY - 1))
    assert "lock time" in (taproot_spend_problem(early, 0, spent) or "")
    elsewhere = [TxOut(VALUE, channel(4)[0].script_pubkey)]  # another channel's output
    assert "does not commit" in (taproot_spend_problem(settled, 0, elsewhere) or "")

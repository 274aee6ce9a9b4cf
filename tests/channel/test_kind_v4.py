"""Version 4, Taproot: its output, leaves, Schnorr payments and spends, and what it refuses
(the node's view is in tests/service/test_flow.py and tests/bitcoin/test_taproot_node.py)."""

from __future__ import annotations

import pytest

from bitcoind_paychan.bitcoin import musig2
from bitcoind_paychan.bitcoin.hashes import sha256
from bitcoind_paychan.bitcoin.keys import PrivateKey, XOnlyKey
from bitcoind_paychan.bitcoin.sighash import (
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    taproot_sighash,
)
from bitcoind_paychan.bitcoin.taproot import TapLeaf, Taproot
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import Branch, Contract
from bitcoind_paychan.channel.kinds.v4_taproot import TaprootChannel
from bitcoind_paychan.errors import DecodeError, LocalProtocolError, RemoteProtocolError

CLIENT, SERVER = PrivateKey(sha256(b"v4 client")), PrivateKey(sha256(b"v4 server"))
EXPIRY, VALUE = 1_700_000_000, 1_000_000
CONTRACT = Contract(4, CLIENT.pub.data, SERVER.pub.data, EXPIRY, OutPoint(sha256(b"f"), 0),
                    VALUE)
ACP = SIGHASH_ANYONECANPAY


def test_the_output_is_the_keys_musig2_aggregate_over_two_leaves() -> None:
    client_x, server_x = CLIENT.xonly.data, SERVER.xonly.data
    payment = TapLeaf(b"\x20" + server_x + b"\xad\x20" + client_x + b"\xac")
    refund = TapLeaf(b"\x04" + EXPIRY.to_bytes(4, "little") + b"\xb1\x75\x20" + client_x
                     + b"\xac")
    internal = musig2.key_agg(sorted([SERVER.pub.data, CLIENT.pub.data])).xonly_pk()
    expected = Taproot(XOnlyKey(internal), (payment, refund))
    assert CONTRACT.script_pubkey == expected.script_pubkey
    assert CONTRACT.script == payment.script


@pytest.mark.parametrize("change", [0, 546, 500_000])
def test_a_payment_is_a_schnorr_signature_on_the_payment_leaf(change: int) -> None:
    signature = CONTRACT.sign_payment(CLIENT, change)
    hashtype = (SIGHASH_SINGLE if change else SIGHASH_NONE) | ACP
    assert len(signature) == 65 and signature[64] == hashtype
    leaf = TapLeaf(CONTRACT.script)
    digest = taproot_sighash(CONTRACT.payment_tx(change), 0,
                             [TxOut(VALUE, CONTRACT.script_pubkey)], hashtype, leaf.hash)
    assert CLIENT.xonly.verify_schnorr(digest, signature[:64])
    CONTRACT.check_payment(change, signature)


@pytest.mark.parametrize(("signature", "why"), [
    (CONTRACT.sign_payment(SERVER, 5_000), "does not verify"),  # another key
    (CONTRACT.sign_payment(CLIENT, 6_000), "does not verify"),  # another amount
    (CONTRACT.sign_payment(CLIENT, 5_000)[:64], "hashtype 0x0, expected 0x83"),
    (CONTRACT.sign_payment(CLIENT, 5_000)[:64] + b"\x81", "hashtype 0x81, expected 0x83"),
    (CONTRACT.sign_payment(CLIENT, 5_000)[:64] + b"\x00", "hashtype 0x0 is not one"),
    (CONTRACT.sign_payment(CLIENT, 5_000)[:64] + b"\x84", "hashtype 0x84 is not one"),
    (CONTRACT.sign_payment(CLIENT, 5_000) + b"\x00", "64 or 65 bytes, not 66"),
    (b"", "64 or 65 bytes, not 0"),
], ids=lambda value: value if isinstance(value, str) else "signature")  # stable: xdist
def test_a_bad_payment_signature_is_refused_with_why(signature: bytes, why: str) -> None:
    with pytest.raises((RemoteProtocolError, DecodeError), match=why):
        CONTRACT.check_payment(5_000, signature)


def test_an_ecdsa_signature_is_no_v4_payment() -> None:
    ecdsa = Contract(3, *[getattr(CONTRACT, f) for f in ("client_pub", "server_pub", "expiry",
                                                          "outpoint", "value")])
    with pytest.raises(DecodeError, match="64 or 65 bytes"):
        CONTRACT.check_payment(5_000, ecdsa.sign_payment(CLIENT, 5_000))


def test_the_forced_settlement_spends_the_payment_leaf_with_both_signatures() -> None:
    settlement = CONTRACT.settlement(5_000, CONTRACT.sign_payment(CLIENT, 5_000), SERVER,
                                     b"\x00\x14" + bytes(20), 2_000)
    client_sig, server_sig, script, control = settlement.inputs[0].witness
    assert script == CONTRACT.script
    assert control == TaprootChannel(CONTRACT).output.control_block(TapLeaf(script))
    assert server_sig[64] == SIGHASH_ALL | ACP
    digest = CONTRACT.sighash(settlement, SIGHASH_ALL | ACP)
    assert SERVER.xonly.verify_schnorr(digest, server_sig[:64])
    assert CONTRACT.kind.unlocking(settlement) == ([client_sig, server_sig], Branch.COOPERATIVE)
    fee = VALUE - sum(o.value for o in settlement.outputs)
    assert fee == -(-2_000 * settlement.vsize // 1000)  # 65-byte signatures are exact


def test_the_refund_spends_the_refund_leaf_alone() -> None:
    refund = CONTRACT.refund(CLIENT, 1_000)
    client_sig, script, control = refund.inputs[0].witness
    assert script != CONTRACT.script and script.endswith(CLIENT.xonly.data + b"\xac")
    assert CONTRACT.kind.unlocking(refund) == ([client_sig], Branch.REFUND)
    assert refund.locktime == EXPIRY and refund.inputs[0].sequence != 0xFFFFFFFF
    assert control[33:] == TapLeaf(CONTRACT.script).hash  # its sibling: the payment leaf


def test_a_spend_of_the_wrong_leaf_does_not_read_back() -> None:
    refund = CONTRACT.refund(CLIENT, 1_000)
    client_sig, _, control = refund.inputs[0].witness
    swapped = refund.with_witness(0, (client_sig, bytes(64), CONTRACT.script, control))
    with pytest.raises(DecodeError, match="neither"):
        CONTRACT.kind.unlocking(swapped)
    with pytest.raises(DecodeError, match="no witness"):
        CONTRACT.kind.unlocking(refund.with_witness(0, ()))


def test_a_signature_over_every_input_needs_their_amounts() -> None:
    tx = CONTRACT.settlement_draft(5_000, 10_000, b"\x00\x14" + bytes(20))
    funded = Transaction(1, (*tx.inputs, TxIn(OutPoint(sha256(b"w"), 1))), tx.outputs, 0)
    with pytest.raises(LocalProtocolError, match="ANYONECANPAY"):
        CONTRACT.sighash(funded, SIGHASH_ALL)
    assert CONTRACT.sighash(funded, SIGHASH_ALL | ACP)  # the contract's amount alone


def test_a_re_anchor_signature_commits_to_every_input_it_is_told_of() -> None:
    """R's hashtype (SIGHASH_DEFAULT) commits to each spent output: the signature needs
    them all, and changes with any of them (an amount lie makes it void on chain)."""
    tx = CONTRACT.settlement_draft(5_000, 10_000, b"\x00\x14" + bytes(20))
    funded = Transaction(2, (*tx.inputs, TxIn(OutPoint(sha256(b"w"), 1))), tx.outputs, 0)
    coin = TxOut(50_000, b"\x00\x14" + bytes(20))
    with pytest.raises(LocalProtocolError, match="1 inputs besides the contract, 0 spent"):
        CONTRACT.sign_cooperative(CLIENT, funded)
    signature = CONTRACT.sign_cooperative(CLIENT, funded, (coin,))
    assert len(signature) == 64  # SIGHASH_DEFAULT: no hashtype byte
    CONTRACT.check_cooperative("R", funded, signature, spent=(coin,))
    with pytest.raises(RemoteProtocolError, match="does not verify"):
        CONTRACT.check_cooperative("R", funded, signature,
                                   spent=(TxOut(coin.value + 1, coin.script_pubkey),))

"""Taproot against a real regtest bitcoind: outputs we derive are the node's (descriptors,
decodescript); key-path and script-path spends we sign are accepted and confirm, under every
hashtype; spends we break (a bad signature, the wrong leaf, the wrong hashtype, an untweaked
key, a spend before its lock time) are refused with the node's reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bitcoind_paychan.bitcoin.address import script_to_address
from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.script import (
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKSIG,
    OP_CHECKSIGVERIFY,
    OP_DROP,
    p2pkh_script,
    p2wpkh_script,
    push,
    push_int,
)
from bitcoind_paychan.bitcoin.sighash import (
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_DEFAULT,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    taproot_sighash,
)
from bitcoind_paychan.bitcoin.taproot import TapLeaf, Taproot, tweak_private_key
from bitcoind_paychan.bitcoin.tx import Transaction, TxIn, TxOut
from bitcoind_paychan.channel import reanchor
from bitcoind_paychan.channel.contract import Branch, Contract, output_script
from bitcoind_paychan.node import to_sat
from regtest.node import RegtestNode, regtest_nodes
from tests.bitcoin.test_against_node import (
    FINAL_BUT_LOCKTIME,
    REGTEST,
    Coin,
    assert_accepted_and_confirms,
    assert_rejected,
    cltv_expiry,
    fund,
    mempool_verdict,
    segwit_sig,
    spend,
)

ACP = SIGHASH_ANYONECANPAY
HASHTYPES = [SIGHASH_DEFAULT, SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE,
             SIGHASH_ALL | ACP, SIGHASH_NONE | ACP, SIGHASH_SINGLE | ACP]
BAD_SIGNATURE = "Invalid Schnorr signature"
BAD_HASHTYPE = "Invalid Schnorr signature hash type"


@pytest.fixture(scope="module")
def chain() -> Iterator[RegtestNode]:
    """One regtest node for the module, with mature coinbases in its wallet."""
    with regtest_nodes(1) as (node,):
        node.mine(10)
        yield node


class Channel:
    """A v4-shaped output: internal key and two leaves, the payment's (both keys) and the
    refund's (the client alone, after `expiry`)."""

    def __init__(self, expiry: int) -> None:
        self.internal, self.server, self.client = (PrivateKey.generate() for _ in range(3))
        self.expiry = expiry
        self.payment = TapLeaf(push(self.server.xonly.data) + bytes((OP_CHECKSIGVERIFY,))
                               + push(self.client.xonly.data) + bytes((OP_CHECKSIG,)))
        self.refund = TapLeaf(push_int(expiry) + bytes((OP_CHECKLOCKTIMEVERIFY, OP_DROP))
                              + push(self.client.xonly.data) + bytes((OP_CHECKSIG,)))
        self.output = Taproot(self.internal.xonly, (self.payment, self.refund))


def sign(key: PrivateKey, tx: Transaction, spent: list[TxOut], hashtype: int,
         leaf: TapLeaf | None = None, appended: int | None = None) -> bytes:
    """`key`'s signature of input 0 as a witness carries it; `appended`: the hashtype byte
    put after it, if not the one signed (a 64-byte signature for SIGHASH_DEFAULT)."""
    digest = taproot_sighash(tx, 0, spent, hashtype, leaf.hash if leaf else None)
    signature = key.sign_schnorr(digest)
    byte = hashtype if appended is None else appended
    return signature + bytes((byte,)) if byte or appended is not None else signature


def spent_by(coin: Coin) -> list[TxOut]:
    return [TxOut(coin.value, coin.script_pubkey)]


def test_our_outputs_are_the_nodes_descriptors(chain: RegtestNode) -> None:
    channel = Channel(1_700_000_000)
    internal = channel.internal.xonly.data.hex()
    for descriptor, output in (
        (f"tr({internal})", Taproot(channel.internal.xonly)),
        (f"tr({internal},{{pk({channel.server.xonly.data.hex()}),"
         f"pk({channel.client.xonly.data.hex()})}})",
         Taproot(channel.internal.xonly, (TapLeaf(push(channel.server.xonly.data) + b"\xac"),
                                          TapLeaf(push(channel.client.xonly.data) + b"\xac")))),
    ):
        checked = chain.rpc("getdescriptorinfo", descriptor)["descriptor"]
        (address,) = chain.rpc("deriveaddresses", checked)
        assert script_to_address(output.script_pubkey, REGTEST) == address
    decoded = chain.rpc("decodescript", channel.output.script_pubkey.hex())
    assert decoded["type"] == "witness_v1_taproot"
    assert decoded["address"] == script_to_address(channel.output.script_pubkey, REGTEST)


@pytest.mark.parametrize("hashtype", HASHTYPES, ids=hex)
def test_a_key_path_spend_confirms(chain: RegtestNode, hashtype: int) -> None:
    channel = Channel(cltv_expiry(chain))
    (coin,) = fund(chain, channel.output.script_pubkey)
    tx = spend(chain, [coin])
    key = tweak_private_key(channel.internal, channel.output.merkle_root)
    untweaked = tx.with_witness(0, (sign(channel.internal, tx, spent_by(coin), hashtype),))
    assert_rejected(chain, untweaked, BAD_SIGNATURE)
    assert_accepted_and_confirms(chain, tx.with_witness(0, (sign(key, tx, spent_by(coin),
                                                                  hashtype),)))


@pytest.mark.parametrize("hashtype", HASHTYPES, ids=hex)
def test_a_script_path_spend_confirms(chain: RegtestNode, hashtype: int) -> None:
    channel = Channel(cltv_expiry(chain))
    (coin,) = fund(chain, channel.output.script_pubkey)
    tx, spent, leaf = spend(chain, [coin]), spent_by(coin), channel.payment
    sigs = [sign(channel.client, tx, spent, hashtype, leaf),
            sign(channel.server, tx, spent, hashtype, leaf)]
    block = channel.output.control_block(leaf)
    assert_accepted_and_confirms(chain, tx.with_witness(0, (*sigs, leaf.script, block)))


def test_the_refund_leaf_spends_alone_after_its_lock_time(chain: RegtestNode) -> None:
    channel = Channel(cltv_expiry(chain))
    (coin,) = fund(chain, channel.output.script_pubkey)
    leaf, block = channel.refund, channel.output.control_block(channel.refund)

    def refund(locktime: int) -> Transaction:
        tx = spend(chain, [coin], locktime=locktime, sequences=[FINAL_BUT_LOCKTIME])
        sig = sign(channel.client, tx, spent_by(coin), SIGHASH_DEFAULT, leaf)
        return tx.with_witness(0, (sig, leaf.script, block))

    assert_rejected(chain, refund(channel.expiry - 1), "Locktime requirement not satisfied")
    assert_accepted_and_confirms(chain, refund(channel.expiry))


def test_broken_spends_are_refused(chain: RegtestNode) -> None:
    channel = Channel(cltv_expiry(chain))
    (coin,) = fund(chain, channel.output.script_pubkey)
    tx, spent = spend(chain, [coin]), spent_by(coin)
    payment, refund = channel.payment, channel.refund
    block = channel.output.control_block(payment)
    client, server = channel.client, channel.server
    ht = SIGHASH_SINGLE | ACP

    def payment_spend(client_sig: bytes, server_sig: bytes, script: bytes = payment.script,
                      control: bytes = block) -> Transaction:
        return tx.with_witness(0, (client_sig, server_sig, script, control))

    good_client, good_server = sign(client, tx, spent, ht, payment), sign(server, tx, spent,
                                                                          ht, payment)
    flipped = bytes((good_client[0] ^ 1,)) + good_client[1:]
    assert_rejected(chain, payment_spend(flipped, good_server), BAD_SIGNATURE)
    # Signed for the refund leaf, carried in the payment leaf: another message.
    assert_rejected(chain, payment_spend(sign(client, tx, spent, ht, refund), good_server),
                    BAD_SIGNATURE)
    # The payment's script with the refund leaf's control block: not in the tree.
    assert_rejected(chain, payment_spend(good_client, good_server,
                                         control=channel.output.control_block(refund)),
                    "Witness program hash mismatch")
    # Signed SINGLE|ANYONECANPAY, labelled ALL; and signed ALL, labelled DEFAULT.
    assert_rejected(chain, payment_spend(sign(client, tx, spent, ht, payment, SIGHASH_ALL),
                                         good_server), BAD_SIGNATURE)
    relabelled = sign(client, tx, spent, SIGHASH_ALL, payment)[:64]
    assert_rejected(chain, payment_spend(relabelled, good_server), BAD_SIGNATURE)
    # SIGHASH_DEFAULT spelled out as a 65th byte, and a hashtype BIP341 does not define.
    for byte in (SIGHASH_DEFAULT, 0x84):
        labelled = sign(client, tx, spent, SIGHASH_DEFAULT, payment, byte)
        assert_rejected(chain, payment_spend(labelled, good_server), BAD_HASHTYPE)
    # Signed over another amount: the message commits to every spent amount.
    other_amount = [TxOut(coin.value + 1, coin.script_pubkey)]
    assert_rejected(chain, payment_spend(sign(client, tx, other_amount, ht, payment),
                                         good_server), BAD_SIGNATURE)
    assert_accepted_and_confirms(chain, payment_spend(good_client, good_server))


# -- a version 4 re-anchor (issue 23, docs/design/reanchoring.md 8) ---------------------------


class Reanchor:
    """A v4 contract and a wallet coin on chain, and R as the kind builds it: the contract
    renewed and topped up by the coin, a payout to the server, change back."""

    TOP_UP, PAYOUT, RATE = 300_000, 30_000, 2_000

    def __init__(self, node: RegtestNode) -> None:
        self.client, self.server, self.wallet = (PrivateKey.generate() for _ in range(3))
        expiry = cltv_expiry(node)
        script = output_script(4, self.client.pub.data, self.server.pub.data, expiry)
        self.coin_script = p2wpkh_script(hash160(self.wallet.pub.data))
        contract_coin, self.coin = fund(node, script, self.coin_script)
        self.contract = Contract(4, self.client.pub.data, self.server.pub.data, expiry,
                                 contract_coin.outpoint, contract_coin.value)
        payout_script = p2wpkh_script(hash160(PrivateKey.generate().pub.data))
        self.terms = reanchor.Terms(expiry + 86_400, self.PAYOUT, payout_script, self.RATE)
        draft = reanchor.draft(self.contract, self.terms, self.TOP_UP)
        self.fee = 1_500  # what the wallet adds for the client's part
        self.unsigned = Transaction(draft.version, (*draft.inputs, TxIn(self.coin.outpoint,
                                                                        b"", 0xFFFFFFFD)),
                                    (*draft.outputs, TxOut(self.change, self.coin_script)), 0)

    @property
    def change(self) -> int:
        return self.coin.value - self.TOP_UP - self.fee

    @property
    def spent(self) -> tuple[TxOut, ...]:
        return (TxOut(self.coin.value, self.coin_script),)

    def signed(self, tx: Transaction, spent: tuple[TxOut, ...] | None = None,
               hashtype: int | None = None) -> Transaction:
        """`tx` with input 0 signed by both (the kind's way, or with `hashtype` and the
        contract's amount alone) and every wallet input signed by the wallet."""
        if hashtype is None:
            named = self.spent if spent is None else spent
            client = self.contract.sign_cooperative(self.client, tx, named)
            tx = self.contract.complete_cooperative(tx, client, self.server, named)
        else:
            sigs = [self.contract.kind.scheme.sign(
                key, self.contract.sighash(tx, hashtype), hashtype)
                for key in (self.client, self.server)]
            tx = self.contract.with_spend(tx, sigs, Branch.COOPERATIVE)
        code = p2pkh_script(hash160(self.wallet.pub.data))
        for index in range(1, len(tx.inputs)):
            value = self.coin.value  # every wallet coin of this test holds the same
            signature = segwit_sig(self.wallet, tx, index, code, value, SIGHASH_ALL)
            tx = tx.with_witness(index, (signature, self.wallet.pub.data))
        return tx


def test_a_v4_re_anchor_built_by_the_kind_confirms_with_exact_amounts(chain: RegtestNode) -> None:
    """The node is the judge of R's SIGHASH_DEFAULT signatures on the payment leaf (over the
    wallet coin's spent output), and of every sat: C' holds the contract, the top-up, less
    the payout; the server's output its payout less its fee part; the fee is what is left."""
    r = Reanchor(chain)
    tx = r.signed(r.unsigned)
    assert [len(sig) for sig in tx.inputs[0].witness[:2]] == [64, 64]  # SIGHASH_DEFAULT
    _, server_fee = reanchor.fees(r.contract, r.unsigned, r.terms, top_up=True)
    verdict = mempool_verdict(chain, tx)
    assert verdict["allowed"], verdict.get("reject-reason")
    assert to_sat(verdict["fees"]["base"]) == r.fee + server_fee
    assert_accepted_and_confirms(chain, tx)
    outputs = [to_sat(o["value"]) for o in chain.rpc("getrawtransaction", tx.txid_hex,
                                                     True)["vout"]]
    assert outputs == [r.contract.value + r.TOP_UP - r.PAYOUT, r.PAYOUT - server_fee, r.change]


def test_a_v4_re_anchor_cannot_be_moved_to_another_txid(chain: RegtestNode) -> None:
    """What v4's close hashtype (ALL|ANYONECANPAY) would allow on R, the node takes: an input
    added after both signed. R's own signatures (SIGHASH_DEFAULT over every spent output)
    make the same R with an added input, or one signed over a lie about the coin, invalid."""
    r = Reanchor(chain)
    (extra,) = fund(chain, r.coin_script)
    grown = Transaction(2, (*r.unsigned.inputs, TxIn(extra.outpoint, b"", 0xFFFFFFFD)),
                        (*r.unsigned.outputs[:2],
                         TxOut(r.change + extra.value, r.coin_script)), 0)
    # the threat, real: signed the close's way, R grows an input the signers never saw
    loose = r.signed(grown, hashtype=SIGHASH_ALL | ACP)
    assert mempool_verdict(chain, loose)["allowed"]
    # R signed the kind's way, then grown (its wallet inputs signed again): refused
    complete = r.signed(r.unsigned)
    moved = loose.with_witness(0, complete.inputs[0].witness)  # wallet inputs re-signed
    assert moved.txid_hex != complete.txid_hex
    assert_rejected(chain, moved, BAD_SIGNATURE)
    # signed over a coin amount the client lied about: void on chain
    lie = (TxOut(r.coin.value - 1_000, r.coin_script),)
    assert_rejected(chain, r.signed(r.unsigned, spent=lie), BAD_SIGNATURE)

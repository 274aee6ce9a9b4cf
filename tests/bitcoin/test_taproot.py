"""Schnorr signatures, tagged hashes, Taproot outputs and BIP341 signature hashes against the
BIPs' own vectors (tests/bitcoin/data: bip-0340/test-vectors.csv and
bip-0341/wallet-test-vectors.json from github.com/bitcoin/bips at 7fe0b034)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.bitcoin.address import script_to_address
from bitcoind_paychan.bitcoin.hashes import tagged_hash
from bitcoind_paychan.bitcoin.keys import PrivateKey, XOnlyKey
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.sighash import (
    SIGHASH_ANYONECANPAY,
    SIGHASH_DEFAULT,
    SIGHASH_SINGLE,
    TaprootTxHashes,
    taproot_sighash,
    taproot_sigmsg,
)
from bitcoind_paychan.bitcoin.taproot import (
    TapLeaf,
    Taproot,
    TapTree,
    branch_hash,
    output_key,
    tap_tweak,
    tweak_private_key,
)
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.errors import DecodeError

DATA = Path(__file__).parent / "data"
BIP340 = list(csv.DictReader((DATA / "bip340-test-vectors.csv").open()))
BIP341 = json.loads((DATA / "bip341-wallet-test-vectors.json").read_text())
SCRIPT_PUBKEYS = BIP341["scriptPubKey"]
KEY_PATH = BIP341["keyPathSpending"][0]
INPUTS = KEY_PATH["inputSpending"]


def row_id(row: dict[str, str]) -> str:
    return f"{row['index']}-{row['comment'] or 'ok'}"[:40]


# -- BIP340 ------------------------------------------------------------------------------------


def test_the_vectors_are_all_there() -> None:
    assert len(BIP340) == 19 and len(SCRIPT_PUBKEYS) == 7 and len(INPUTS) == 7
    assert {i["given"]["hashType"] for i in INPUTS} == {0, 1, 2, 3, 0x81, 0x82, 0x83}


@pytest.mark.parametrize("row", [r for r in BIP340 if r["secret key"]], ids=row_id)
def test_bip340_signing(row: dict[str, str]) -> None:
    key = PrivateKey(bytes.fromhex(row["secret key"]))
    assert key.xonly.data.hex().upper() == row["public key"]
    message = bytes.fromhex(row["message"])
    if len(message) != 32:  # we sign 32-byte signature hashes only
        with pytest.raises(ValueError, match="32 bytes"):
            key.sign_schnorr(message, bytes.fromhex(row["aux_rand"]))
        return
    signature = key.sign_schnorr(message, bytes.fromhex(row["aux_rand"]))
    assert signature.hex().upper() == row["signature"]


@pytest.mark.parametrize("row", BIP340, ids=row_id)
def test_bip340_verification(row: dict[str, str]) -> None:
    expected = row["verification result"] == "TRUE"
    try:
        key = XOnlyKey(bytes.fromhex(row["public key"]))
    except DecodeError:  # not a key at all (off the curve, above the field size)
        assert not expected
        return
    signature, message = bytes.fromhex(row["signature"]), bytes.fromhex(row["message"])
    assert key.verify_schnorr(message, signature) is expected


def test_a_schnorr_signature_of_another_length_does_not_verify() -> None:
    key = PrivateKey(bytes(31) + b"\x07")
    signature = key.sign_schnorr(bytes(32))
    assert key.xonly.verify_schnorr(bytes(32), signature)
    assert not key.xonly.verify_schnorr(bytes(32), signature + b"\x01")
    assert not key.xonly.verify_schnorr(bytes(32), signature[:63])


def test_fresh_aux_randomness_gives_fresh_signatures_that_verify() -> None:
    key = PrivateKey(bytes(31) + b"\x07")
    first, second = key.sign_schnorr(bytes(32)), key.sign_schnorr(bytes(32))
    assert first != second
    assert key.xonly.verify_schnorr(bytes(32), first) and key.xonly.verify_schnorr(
        bytes(32), second)


def test_tagged_hash_is_bip340_s() -> None:
    tag = hashlib.sha256(b"TapLeaf").digest()
    for data in (b"", b"x" * 100):
        assert tagged_hash("TapLeaf", data) == hashlib.sha256(tag + tag + data).digest()
    assert tagged_hash("TapLeaf", b"") != tagged_hash("TapBranch", b"")


def test_x_only_keys_refuse_what_is_not_one() -> None:
    with pytest.raises(DecodeError, match="32 bytes"):
        XOnlyKey(bytes(33))
    with pytest.raises(DecodeError, match="not the X"):
        XOnlyKey(b"\xff" * 32)  # above the field size


# -- BIP341: outputs ---------------------------------------------------------------------------


def tree_of(node: Any) -> TapTree:
    if isinstance(node, dict):
        return TapLeaf(bytes.fromhex(node["script"]), node["leafVersion"])
    left, right = node
    return (tree_of(left), tree_of(right))


def leaves_of(node: Any) -> list[dict[str, Any]]:
    """The JSON leaves in id order (the vectors list leaf hashes and control blocks so)."""
    if isinstance(node, dict):
        return [node]
    found = [leaf for child in node for leaf in leaves_of(child)]
    return sorted(found, key=lambda leaf: leaf["id"])


@pytest.mark.parametrize("case", SCRIPT_PUBKEYS,
                         ids=lambda c: str(c["given"]["internalPubkey"])[:8])
def test_bip341_outputs(case: dict[str, Any]) -> None:
    given, inter, expected = case["given"], case["intermediary"], case["expected"]
    internal = XOnlyKey(bytes.fromhex(given["internalPubkey"]))
    output = Taproot(internal, tree_of(given["scriptTree"]) if given["scriptTree"] else None)
    assert output.merkle_root.hex() == (inter["merkleRoot"] or "")
    assert tap_tweak(internal, output.merkle_root).hex() == inter["tweak"]
    assert output.output_key.data.hex() == inter["tweakedPubkey"]
    assert output.script_pubkey.hex() == expected["scriptPubKey"]
    assert script_to_address(output.script_pubkey, Network.MAINNET) == expected["bip350Address"]
    leaves = [TapLeaf(bytes.fromhex(leaf["script"]), leaf["leafVersion"])
              for leaf in (leaves_of(given["scriptTree"]) if given["scriptTree"] else [])]
    assert [leaf.hash.hex() for leaf in leaves] == inter.get("leafHashes", [])
    assert [output.control_block(leaf).hex() for leaf in leaves] == expected.get(
        "scriptPathControlBlocks", [])


def test_a_control_block_proves_its_leaf_up_to_the_output_key() -> None:
    """Walking a control block's path from the leaf gives the root the output commits to
    (what a verifier does), and its parity bit is the output key's."""
    case = next(c for c in SCRIPT_PUBKEYS if isinstance(c["given"]["scriptTree"], list)
                and len(leaves_of(c["given"]["scriptTree"])) == 3)
    internal = XOnlyKey(bytes.fromhex(case["given"]["internalPubkey"]))
    output = Taproot(internal, tree_of(case["given"]["scriptTree"]))
    for node in leaves_of(case["given"]["scriptTree"]):
        leaf = TapLeaf(bytes.fromhex(node["script"]), node["leafVersion"])
        block = output.control_block(leaf)
        assert block[1:33] == internal.data and (len(block) - 33) % 32 == 0
        node_hash = leaf.hash
        for k in range(33, len(block), 32):
            node_hash = branch_hash(node_hash, block[k:k + 32])
        assert output_key(internal, node_hash) == (output.output_key, block[0] & 1)
    with pytest.raises(ValueError, match="not in this output"):
        output.control_block(TapLeaf(b"\x51"))


def test_a_leaf_version_must_be_even() -> None:
    with pytest.raises(ValueError, match="leaf version"):
        TapLeaf(b"\x51", 0xC1)


# -- BIP341: signature messages and key-path signatures ----------------------------------------


UNSIGNED = Transaction.from_hex(KEY_PATH["given"]["rawUnsignedTx"])
SPENT = [TxOut(u["amountSats"], bytes.fromhex(u["scriptPubKey"]))
         for u in KEY_PATH["given"]["utxosSpent"]]


def test_bip341_transaction_hashes() -> None:
    hashes = TaprootTxHashes.of(UNSIGNED, SPENT)
    inter = KEY_PATH["intermediary"]
    assert (hashes.prevouts.hex(), hashes.amounts.hex(), hashes.script_pubkeys.hex(),
            hashes.sequences.hex(), hashes.outputs.hex()) == (
        inter["hashPrevouts"], inter["hashAmounts"], inter["hashScriptPubkeys"],
        inter["hashSequences"], inter["hashOutputs"])


@pytest.mark.parametrize("spending", INPUTS, ids=lambda s: f"hashtype-{s['given']['hashType']:#x}")
def test_bip341_key_path_spending(spending: dict[str, Any]) -> None:
    given, inter = spending["given"], spending["intermediary"]
    index, hashtype = given["txinIndex"], given["hashType"]
    root = bytes.fromhex(given["merkleRoot"]) if given["merkleRoot"] else b""
    key = PrivateKey(bytes.fromhex(given["internalPrivkey"]))
    assert key.xonly.data.hex() == inter["internalPubkey"]
    assert tap_tweak(key.xonly, root).hex() == inter["tweak"]
    tweaked = tweak_private_key(key, root)
    assert tweaked.secret.hex() == inter["tweakedPrivkey"]
    assert b"\x00" + taproot_sigmsg(UNSIGNED, index, SPENT, hashtype) == bytes.fromhex(
        inter["sigMsg"])
    digest = taproot_sighash(UNSIGNED, index, SPENT, hashtype)
    assert digest.hex() == inter["sigHash"]
    assert digest == taproot_sighash(UNSIGNED, index, SPENT, hashtype,
                                     hashes=TaprootTxHashes.of(UNSIGNED, SPENT))
    signature = tweaked.sign_schnorr(digest, bytes(32))
    if hashtype != SIGHASH_DEFAULT:
        signature += bytes((hashtype,))
    assert [signature.hex()] == spending["expected"]["witness"]
    # What the spent output names is the tweaked key the signature verifies against.
    assert SPENT[index].script_pubkey[2:] == tweaked.xonly.data
    assert tweaked.xonly.verify_schnorr(digest, signature[:64])


def test_the_fully_signed_vector_transaction_carries_our_witnesses() -> None:
    signed = Transaction.from_hex(KEY_PATH["auxiliary"]["fullySignedTx"])
    for spending in INPUTS:
        witness = signed.inputs[spending["given"]["txinIndex"]].witness
        assert [w.hex() for w in witness] == spending["expected"]["witness"]


def test_undefined_hashtypes_and_single_without_an_output_are_refused() -> None:
    for hashtype in (0x04, 0x80, 0x84, 0xFF):
        with pytest.raises(ValueError, match="not defined"):
            taproot_sigmsg(UNSIGNED, 0, SPENT, hashtype)
    tx = Transaction(2, (TxIn(OutPoint(bytes(32), 0)), TxIn(OutPoint(bytes(32), 1))),
                     (TxOut(1000, b"\x51"),), 0)
    spent = [TxOut(2000, SPENT[0].script_pubkey)] * 2
    for hashtype in (SIGHASH_SINGLE, SIGHASH_SINGLE | SIGHASH_ANYONECANPAY):
        taproot_sigmsg(tx, 0, spent, hashtype)
        with pytest.raises(ValueError, match="without a matching output"):
            taproot_sigmsg(tx, 1, spent, hashtype)
    with pytest.raises(ValueError, match="spent outputs"):
        taproot_sigmsg(tx, 0, spent[:1], SIGHASH_DEFAULT)


def test_the_script_path_message_extends_the_key_path_s() -> None:
    """BIP342: spend type 2 where the key path has 0, and after the rest the leaf hash, key
    version 0 and the code separator position (none executed: 0xffffffff)."""
    leaf = TapLeaf(b"\x51")
    for hashtype in sorted({i["given"]["hashType"] for i in INPUTS}):
        key_path = taproot_sigmsg(UNSIGNED, 1, SPENT, hashtype)
        script_path = taproot_sigmsg(UNSIGNED, 1, SPENT, hashtype, leaf.hash)
        anyone, base = hashtype & SIGHASH_ANYONECANPAY, hashtype & 3
        at = 9 + (0 if anyone else 128) + (0 if base in (2, 3) else 32)  # the spend type
        assert (key_path[at], script_path[at]) == (0, 2)
        assert script_path[:at] + b"\x00" + script_path[at + 1:len(key_path)] == key_path
        assert script_path[len(key_path):] == leaf.hash + b"\x00" + b"\xff\xff\xff\xff"
        assert taproot_sigmsg(UNSIGNED, 1, SPENT, hashtype, leaf.hash, codesep_pos=7) != (
            script_path)

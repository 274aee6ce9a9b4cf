"""Signature hashes against BIP143's examples and Bitcoin Core's sighash.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey, PublicKey, verify
from bitcoind_paychan.bitcoin.sighash import (
    ONE,
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    bip143_sighash,
    legacy_sighash,
)
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut

ACP = SIGHASH_ANYONECANPAY

# --- BIP143 examples: unsigned transactions, scriptCodes (no length prefix), amounts. ---

P2WPKH_TX = (
    "0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffff"
    "ffef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202c"
    "b206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143b"
    "de42dbee7e4dbe6a21b2d50ce2f0167faa815988ac11000000"
)
P2SH_P2WPKH_TX = (
    "0100000001db6b1b20aa0fd7b23880be2ecbd4a98130974cf4748fb66092ac4d3ceb1a54770100000000feffff"
    "ff02b8b4eb0b000000001976a914a457b684d7f0d539a46a45bbc043f35b59d0d96388ac0008af2f0000000019"
    "76a914fd270b1ee6abcaea97fea7ad0402e8bd8ad6d77c88ac92040000"
)
P2WSH_TX = (
    "0100000002fe3dc9208094f3ffd12645477b3dc56f60ec4fa8e6f5d67c565d1c6b9216b36e0000000000ffffff"
    "ff0815cf020f013ed6cf91d29f4202e8a58726b1ac6c79da47c23d1bee0a6925f80000000000ffffffff0100f2"
    "052a010000001976a914a30741f8145e5acadf23f751864167f32e0963f788ac00000000"
)
P2WSH_ACP_TX = (
    "0100000002e9b542c5176808107ff1df906f46bb1f2583b16112b95ee5380665ba7fcfc0010000000000ffffff"
    "ff80e68831516392fcd100d186b3c2c7b95c80b53c77e77c35ba03a66b429a2a1b0000000000ffffffff028096"
    "9800000000001976a914de4b231626ef508c9a74a8517e6783c0546d6b2888ac80969800000000001976a9146648"
    "a8cd4531e1ec47f35916de8e259237294d1e88ac00000000"
)
# The same two inputs and outputs swapped, as BIP143 gives it (signed).
P2WSH_ACP_SWAPPED = (
    "0100000000010280e68831516392fcd100d186b3c2c7b95c80b53c77e77c35ba03a66b429a2a1b0000000000ff"
    "ffffffe9b542c5176808107ff1df906f46bb1f2583b16112b95ee5380665ba7fcfc0010000000000ffffffff02"
    "80969800000000001976a9146648a8cd4531e1ec47f35916de8e259237294d1e88ac80969800000000001976a9"
    "14de4b231626ef508c9a74a8517e6783c0546d6b2888ac024730440220032521802a76ad7bf74d0e2c218b72cf"
    "0cbc867066e2e53db905ba37f130397e02207709e2188ed7f08f4c952d9d13986da504502b8c3be59617e04355"
    "2f506c46ff83275163ab68210392972e2eb617b2388771abe27235fd5ac44af8e61693261550447a4c3e39da98"
    "ac02483045022100f6a10b8604e6dc910194b79ccfc93e1bc0ec7c03453caaa8987f7d6c3413566002206216229e"
    "de9b4d6ec2d325be245c5b508ff0339bf1794078e20bfe0babc7ffe683270063ab68210392972e2eb617b23887"
    "71abe27235fd5ac44af8e61693261550447a4c3e39da98ac00000000"
)
SIX_OF_SIX_TX = (
    "010000000136641869ca081e70f394c6948e8af409e18b619df2ed74aa106c1ca29787b96e0100000000ffffff"
    "ff0200e9a435000000001976a914389ffce9cd9ae88dcc0631e88a821ffdbe9bfe2688acc0832f050000000019"
    "76a9147480a33f950689af511e6e84c138dbbd3c3ee41588ac00000000"
)
SIX_OF_SIX_SCRIPT = (
    "56210307b8ae49ac90a048e9b53357a2354b3334e9c8bee813ecb98e99a7e07e8c3ba32103b28f0c28bfab5455"
    "4ae8c658ac5c3e0ce6e79ad336331f78c428dd43eea8449b21034b8113d703413d57761b8b9781957b8c0ac1df"
    "e69f492580ca4195f50376ba4a21033400f6afecb833092a9a21cfdf1ed1376e58c5d1f47de74683123987e967"
    "a8f42103a6d48b1131e94ba04d9737d61acdaa1322008af9602b3b14862c07a1789aac162102d8b661b0b3302e"
    "e2f162b09e07a55ad5dfbe673a9f01d9f0c19617681024306b56ae"
)
P2WSH_PUB = "0392972e2eb617b2388771abe27235fd5ac44af8e61693261550447a4c3e39da98"
P2WSH_PUB_A = "026dccc749adc2a9d0d89497ac511f760f45c47dc5ed9cf352a58ac706453880ae"
P2WSH_PUB_B = "0255a9626aebf5e29c0e6538428ba0d1dcf6ca98ffdf086aa8ced5e0d0215ea465"

# (tx, input, scriptCode, amount, hashtype, sighash, pubkey, DER signature without hashtype)
BIP143_VECTORS = [
    pytest.param(
        P2WPKH_TX, 1, "76a9141d0f172a0ecb48aee1be1f2687d2963ae33f71a188ac", 600_000_000, 1,
        "c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670",
        "025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357",
        "304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c45"
        "18331561406f90300e8f3358f51928d43c212a8caed02de67eebee",
        id="native-p2wpkh",
    ),
    pytest.param(
        P2SH_P2WPKH_TX, 0, "76a91479091972186c449eb1ded22b78e40d009bdf008988ac", 1_000_000_000, 1,
        "64f3b0f4dd2bb3aa1ce8566d220cc74dda9df97d8490cc81d89d735c92e59fb6",
        "03ad1d8e89212f0b92c74d23bb710c00662ad1470198ac48c43f7d6f93a2a26873",
        "3044022047ac8e878352d3ebbde1c94ce3a10d057c24175747116f8288e5d794d12d482f0220217f36a485"
        "cae903c713331d877c1f64677e3622ad4010726870540656fe9dcb",
        id="p2sh-p2wpkh",
    ),
    pytest.param(
        P2WSH_TX, 1, "21" + P2WSH_PUB_A + "adab21" + P2WSH_PUB_B + "ac", 4_900_000_000, 3,
        "82dde6e4f1e94d02c2b7ad03d2115d691f48d064e9d52f58194a6637e4194391", P2WSH_PUB_A,
        "3044022027dc95ad6b740fe5129e7e62a75dd00f291a2aeb1200b84b09d9e3789406b6c002201a9ecd315d"
        "d6a0e632ab20bbb98948bc0c6fb204f2c286963bb48517a7058e27",
        id="p2wsh-single-out-of-range",
    ),
    pytest.param(
        P2WSH_TX, 1, "21" + P2WSH_PUB_B + "ac", 4_900_000_000, 3,
        "fef7bd749cce710c5c052bd796df1af0d935e59cea63736268bcbe2d2134fc47", P2WSH_PUB_B,
        "304402200de66acf4527789bfda55fc5459e214fa6083f936b430a762c629656216805ac0220396f550692"
        "cd347171cbc1ef1f51e15282e837bb2b30860dc77c8f78bc8501e5",
        id="p2wsh-single-after-codeseparator",
    ),
    pytest.param(
        P2WSH_ACP_TX, 0, "0063ab6821" + P2WSH_PUB + "ac", 16_777_215, 0x83,
        "e9071e75e25b8a1e298a72f0d2e9f4f95a0f5cdf86a533cda597eb402ed13b3a", P2WSH_PUB,
        "3045022100f6a10b8604e6dc910194b79ccfc93e1bc0ec7c03453caaa8987f7d6c3413566002206216229e"
        "de9b4d6ec2d325be245c5b508ff0339bf1794078e20bfe0babc7ffe6",
        id="p2wsh-single-anyonecanpay-0",
    ),
    pytest.param(
        P2WSH_ACP_TX, 1, "6821" + P2WSH_PUB + "ac", 16_777_215, 0x83,
        "cd72f1f1a433ee9df816857fad88d8ebd97e09a75cd481583eb841c330275e54", P2WSH_PUB,
        "30440220032521802a76ad7bf74d0e2c218b72cf0cbc867066e2e53db905ba37f130397e02207709e2188e"
        "d7f08f4c952d9d13986da504502b8c3be59617e043552f506c46ff",
        id="p2wsh-single-anyonecanpay-1",
    ),
    pytest.param(
        SIX_OF_SIX_TX, 0, SIX_OF_SIX_SCRIPT, 987_654_321, SIGHASH_ALL,
        "185c0be5263dce5b4bb50a047973c1b6272bfbd0103a89444597dc40b248ee7c",
        "0307b8ae49ac90a048e9b53357a2354b3334e9c8bee813ecb98e99a7e07e8c3ba3",
        "304402206ac44d672dac41f9b00e28f4df20c52eeb087207e8d758d76d92c6fab3b73e2b0220367750dbbe"
        "19290069cba53d096f44530e4f98acaa594810388cf7409a1870ce",
        id="6of6-all",
    ),
    pytest.param(
        SIX_OF_SIX_TX, 0, SIX_OF_SIX_SCRIPT, 987_654_321, SIGHASH_NONE,
        "e9733bc60ea13c95c6527066bb975a2ff29a925e80aa14c213f686cbae5d2f36",
        "03b28f0c28bfab54554ae8c658ac5c3e0ce6e79ad336331f78c428dd43eea8449b",
        "3044022068c7946a43232757cbdf9176f009a928e1cd9a1a8c212f15c1e11ac9f2925d9002205b75f937ff"
        "2f9f3c1246e547e54f62e027f64eefa2695578cc6432cdabce2715",
        id="6of6-none",
    ),
    pytest.param(
        SIX_OF_SIX_TX, 0, SIX_OF_SIX_SCRIPT, 987_654_321, SIGHASH_SINGLE,
        "1e1f1c303dc025bd664acb72e583e933fae4cff9148bf78c157d1e8f78530aea",
        "034b8113d703413d57761b8b9781957b8c0ac1dfe69f492580ca4195f50376ba4a",
        "3044022059ebf56d98010a932cf8ecfec54c48e6139ed6adb0728c09cbe1e4fa0915302e022007cd986c8f"
        "a870ff5d2b3a89139c9fe7e499259875357e20fcbb15571c767954",
        id="6of6-single",
    ),
    pytest.param(
        SIX_OF_SIX_TX, 0, SIX_OF_SIX_SCRIPT, 987_654_321, SIGHASH_ALL | ACP,
        "2a67f03e63a6a422125878b40b82da593be8d4efaafe88ee528af6e5a9955c6e",
        "033400f6afecb833092a9a21cfdf1ed1376e58c5d1f47de74683123987e967a8f4",
        "3045022100fbefd94bd0a488d50b79102b5dad4ab6ced30c4069f1eaa69a4b5a763414067e02203156c6a5"
        "c9cf88f91265f5a942e96213afae16d83321c8b31bb342142a14d163",
        id="6of6-all-anyonecanpay",
    ),
    pytest.param(
        SIX_OF_SIX_TX, 0, SIX_OF_SIX_SCRIPT, 987_654_321, SIGHASH_NONE | ACP,
        "781ba15f3779d5542ce8ecb5c18716733a5ee42a6f51488ec96154934e2c890a",
        "03a6d48b1131e94ba04d9737d61acdaa1322008af9602b3b14862c07a1789aac16",
        "3045022100a5263ea0553ba89221984bd7f0b13613db16e7a70c549a86de0cc0444141a407022005c360ef"
        "0ae5a5d4f9f2f87a56c1546cc8268cab08c73501d6b3be2e1e1a8a08",
        id="6of6-none-anyonecanpay",
    ),
    pytest.param(
        SIX_OF_SIX_TX, 0, SIX_OF_SIX_SCRIPT, 987_654_321, SIGHASH_SINGLE | ACP,
        "511e8e52ed574121fc1b654970395502128263f62662e076dc6baf05c2e6a99b",
        "02d8b661b0b3302ee2f162b09e07a55ad5dfbe673a9f01d9f0c19617681024306b",
        "30440220525406a1482936d5a21888260dc165497a90a15669636d8edca6b9fe490d309c022032af0c646a"
        "34a44d1f4576bf6a4a74b67940f8faa84c7df9abe12a01a11e2b47",
        id="6of6-single-anyonecanpay",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tx_hex", "index", "script_code", "amount", "hashtype", "expected", "pub", "sig"),
    BIP143_VECTORS,
)
def test_bip143_vectors(
    tx_hex: str,
    index: int,
    script_code: str,
    amount: int,
    hashtype: int,
    expected: str,
    pub: str,
    sig: str,
) -> None:
    tx = Transaction.from_hex(tx_hex)
    digest = bip143_sighash(tx, index, bytes.fromhex(script_code), amount, hashtype)
    assert digest.hex() == expected
    assert verify(PublicKey(bytes.fromhex(pub)), digest, bytes.fromhex(sig))
    assert not verify(PublicKey(bytes.fromhex(pub)), digest[::-1], bytes.fromhex(sig))


# The private keys BIP143 gives for the 6-of-6 example, in signing order.
SIX_KEYS = [
    "730fff80e1413068a05b57d6a58261f07551163369787f349438ea38ca80fac6",
    "11fa3d25a17cbc22b29c44a484ba552b5a53149d106d3d853e22fdd05a2d8bb3",
    "77bf4141a87d55bdd7f3cd0bdccf6e9e642935fec45f2f30047be7b799120661",
    "14af36970f5025ea3e8b5542c0f8ebe7763e674838d08808896b63c3351ffe49",
    "fe9a95c19eef81dde2b95c1284ef39be497d128e2aa46916fb02d552485e0323",
    "428a7aee9f0c2af0cd19af3cf1c78149951ea528726989b2e83e4778d2c3f890",
]


def test_bip143_6of6_signatures_reproduced() -> None:
    """RFC6979 signing with BIP143's keys gives BIP143's exact signatures."""
    six = [v for v in BIP143_VECTORS if str(v.id).startswith("6of6")]
    for secret, vector in zip(SIX_KEYS, six, strict=True):
        _, _, _, _, _, expected, pub, sig = vector.values
        key = PrivateKey(bytes.fromhex(secret))
        assert key.pub.data.hex() == pub
        assert key.sign(bytes.fromhex(str(expected))).hex() == sig


def test_bip143_anyonecanpay_single_ignores_input_position() -> None:
    swapped = Transaction.from_hex(P2WSH_ACP_SWAPPED)
    code = bytes.fromhex("0063ab6821" + P2WSH_PUB + "ac")
    assert bip143_sighash(swapped, 1, code, 16_777_215, 0x83).hex() == (
        "e9071e75e25b8a1e298a72f0d2e9f4f95a0f5cdf86a533cda597eb402ed13b3a"
    )


def test_bip143_no_find_and_delete() -> None:
    tx = Transaction.from_hex(
        "010000000169c12106097dc2e0526493ef67f21269fe888ef05c7a3a5dacab38e1ac8387f14c1d000000ff"
        "ffffff0101000000000000000000000000"
    )
    code = bytes.fromhex(
        "ad4830450220487fb382c4974de3f7d834c1b617fe15860828c7f96454490edd6d891556dcc9022100baf9"
        "5feb48f845d5bfc9882eb6aeefa1bc3790e39f59eaa46ff7f15ae626c53e01"
    )
    assert bip143_sighash(tx, 0, code, 200_000, SIGHASH_ALL).hex() == (
        "71c9cd9b2869b9c70b01b1f0360c148f42dee72297db312638df136f43311f23"
    )


# --- Bitcoin Core src/test/data/sighash.json rows: [raw tx, script, input, hashType, hash]. ---
# The expected hash is in display (reversed) order. The rows chosen have no OP_CODESEPARATOR
# in the script and no trailing bytes after the transaction; between them they cover NONE,
# NONE|ANYONECANPAY, SINGLE, ANYONECANPAY with ALL-like types, and odd types counted as ALL.
LEGACY_ROWS = json.loads((Path(__file__).parent / "data" / "sighash_core.json").read_text())["rows"]


@pytest.mark.parametrize(("raw", "script", "index", "hashtype", "expected"), LEGACY_ROWS)
def test_legacy_sighash_core_vectors(
    raw: str, script: str, index: int, hashtype: int, expected: str
) -> None:
    tx = Transaction.from_hex(raw)
    digest = legacy_sighash(tx, index, bytes.fromhex(script), hashtype)
    assert digest[::-1].hex() == expected


def test_legacy_vectors_cover_the_hash_types() -> None:
    kinds = {(h & 0x1F, bool(h & ACP)) for _, _, _, h, _ in LEGACY_ROWS}
    assert {(SIGHASH_NONE, False), (SIGHASH_NONE, True), (SIGHASH_SINGLE, False)} <= kinds
    assert any(acp for _, acp in kinds)


def _payment_tx(n_inputs: int, n_outputs: int) -> Transaction:
    inputs = tuple(TxIn(OutPoint(bytes([i + 1]) * 32, i), b"", 0xFFFFFFFE) for i in range(n_inputs))
    outputs = tuple(TxOut(1000 * (i + 1), b"\x51") for i in range(n_outputs))
    return Transaction(2, inputs, outputs, 0)


def test_legacy_single_without_matching_output_signs_one() -> None:
    tx = _payment_tx(2, 1)
    assert legacy_sighash(tx, 1, b"\x51", SIGHASH_SINGLE) == ONE
    assert legacy_sighash(tx, 1, b"\x51", SIGHASH_SINGLE | ACP) == ONE
    assert (1).to_bytes(32, "little") == ONE
    assert legacy_sighash(tx, 0, b"\x51", SIGHASH_SINGLE) != ONE


def test_legacy_single_anyonecanpay_commits_to_own_input_and_output_only() -> None:
    """The bitcoinj client signs payments SINGLE|ANYONECANPAY: others may add inputs/outputs."""
    code = b"\x51"
    base = _payment_tx(1, 1)
    digest = legacy_sighash(base, 0, code, SIGHASH_SINGLE | ACP)
    more = _payment_tx(3, 2)
    assert legacy_sighash(more, 0, code, SIGHASH_SINGLE | ACP) == digest
    changed = base.with_input(0, TxIn(base.inputs[0].prevout, b"", 0))
    assert legacy_sighash(changed, 0, code, SIGHASH_SINGLE | ACP) != digest
    assert legacy_sighash(base, 0, code, SIGHASH_NONE | ACP) != digest
    assert legacy_sighash(base, 0, code + b"\x51", SIGHASH_SINGLE | ACP) != digest


def test_legacy_ignores_other_inputs_script_sigs() -> None:
    tx = _payment_tx(2, 2)
    signed_other = tx.with_script_sig(1, b"\x01\x02")
    for hashtype in (SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE):
        assert legacy_sighash(tx, 0, b"\x51", hashtype) == legacy_sighash(
            signed_other, 0, b"\x51", hashtype
        )


def test_input_index_out_of_range() -> None:
    tx = _payment_tx(1, 1)
    with pytest.raises(IndexError):
        legacy_sighash(tx, 1, b"", SIGHASH_ALL)
    with pytest.raises(IndexError):
        bip143_sighash(tx, 1, b"", 0, SIGHASH_ALL)

"""Transaction serialization, parsing, ids and sizes."""

from __future__ import annotations

import pytest

from bitcoind_paychan.bitcoin.tx import (
    OutPoint,
    Transaction,
    TxIn,
    TxOut,
    decode_varint,
    encode_varint,
)
from bitcoind_paychan.errors import DecodeError

GENESIS_COINBASE = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff"
    "001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e20627269"
    "6e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a0100000043"
    "4104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f355"
    "04e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
)
GENESIS_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"

# BIP143, native P2WSH example 2: unsigned, and signed (both inputs witness-only).
BIP143_UNSIGNED = (
    "0100000002e9b542c5176808107ff1df906f46bb1f2583b16112b95ee5380665ba7fcfc0010000000000ffffff"
    "ff80e68831516392fcd100d186b3c2c7b95c80b53c77e77c35ba03a66b429a2a1b0000000000ffffffff028096"
    "9800000000001976a914de4b231626ef508c9a74a8517e6783c0546d6b2888ac80969800000000001976a9146648"
    "a8cd4531e1ec47f35916de8e259237294d1e88ac00000000"
)
BIP143_SIGNED = (
    "01000000000102e9b542c5176808107ff1df906f46bb1f2583b16112b95ee5380665ba7fcfc0010000000000ff"
    "ffffff80e68831516392fcd100d186b3c2c7b95c80b53c77e77c35ba03a66b429a2a1b0000000000ffffffff02"
    "80969800000000001976a914de4b231626ef508c9a74a8517e6783c0546d6b2888ac80969800000000001976a9"
    "146648a8cd4531e1ec47f35916de8e259237294d1e88ac02483045022100f6a10b8604e6dc910194b79ccfc93e"
    "1bc0ec7c03453caaa8987f7d6c3413566002206216229ede9b4d6ec2d325be245c5b508ff0339bf1794078e20b"
    "fe0babc7ffe683270063ab68210392972e2eb617b2388771abe27235fd5ac44af8e61693261550447a4c3e39da"
    "98ac024730440220032521802a76ad7bf74d0e2c218b72cf0cbc867066e2e53db905ba37f130397e02207709e2"
    "188ed7f08f4c952d9d13986da504502b8c3be59617e043552f506c46ff83275163ab68210392972e2eb617b238"
    "8771abe27235fd5ac44af8e61693261550447a4c3e39da98ac00000000"
)
# BIP143 native P2WPKH example, signed: input 0 has a scriptSig only, input 1 a witness only.
BIP143_P2WPKH_SIGNED = (
    "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f000000004948"
    "30450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3"
    "f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3a"
    "a89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df3"
    "78db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f016"
    "7faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a"
    "0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476c2e83188368d"
    "a1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee635711000000"
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (0xFC, "fc"),
        (0xFD, "fdfd00"),
        (0xFFFF, "fdffff"),
        (0x10000, "fe00000100"),
        (0xFFFFFFFF, "feffffffff"),
        (0x100000000, "ff0000000001000000"),
    ],
)
def test_varint_round_trip(n: int, encoded: str) -> None:
    assert encode_varint(n).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded) + b"\xaa") == (n, len(encoded) // 2)


@pytest.mark.parametrize("raw", ["fdfc00", "feffff0000", "ffffffffff00000000"])
def test_varint_rejects_non_canonical(raw: str) -> None:
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_varint(bytes.fromhex(raw))


@pytest.mark.parametrize("raw", ["", "fd01", "fe010000", "ff01"])
def test_varint_rejects_truncation(raw: str) -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode_varint(bytes.fromhex(raw))


def test_genesis_coinbase_txid() -> None:
    tx = Transaction.from_hex(GENESIS_COINBASE)
    assert tx.txid_hex == GENESIS_TXID
    assert tx.txid == bytes.fromhex(GENESIS_TXID)[::-1]
    assert tx.wtxid == tx.txid
    assert tx.hex() == GENESIS_COINBASE
    assert tx.outputs[0].value == 50 * 100_000_000
    assert tx.inputs[0].prevout == OutPoint(b"\x00" * 32, 0xFFFFFFFF)
    assert not tx.has_witness
    assert tx.weight == 4 * len(GENESIS_COINBASE) // 2
    assert tx.vsize == len(GENESIS_COINBASE) // 2


def test_witness_round_trip_and_ids() -> None:
    signed = Transaction.from_hex(BIP143_SIGNED)
    assert signed.hex() == BIP143_SIGNED
    assert signed.has_witness
    assert signed.inputs[1].witness[1].hex().startswith("5163ab68")
    stripped = signed.serialize(include_witness=False)
    assert stripped.hex() == BIP143_UNSIGNED
    unsigned = Transaction.from_hex(BIP143_UNSIGNED)
    assert unsigned.txid == signed.txid
    assert signed.wtxid != signed.txid
    total, base = len(BIP143_SIGNED) // 2, len(BIP143_UNSIGNED) // 2
    assert signed.weight == 3 * base + total
    assert signed.vsize == (3 * base + total + 3) // 4


def test_mixed_script_sig_and_witness_round_trip() -> None:
    tx = Transaction.from_hex(BIP143_P2WPKH_SIGNED)
    assert tx.hex() == BIP143_P2WPKH_SIGNED
    assert tx.inputs[0].witness == () and tx.inputs[0].script_sig
    assert tx.inputs[1].script_sig == b"" and len(tx.inputs[1].witness) == 2
    assert tx.inputs[0].sequence == 0xFFFFFFEE
    assert tx.locktime == 0x11


def test_no_marker_without_witness() -> None:
    tx = Transaction.from_hex(BIP143_UNSIGNED)
    assert tx.serialize() == tx.serialize(include_witness=False)
    assert tx.serialize()[4] == 2  # input count straight after the version


@pytest.mark.parametrize("hex_tx", [GENESIS_COINBASE, BIP143_SIGNED, BIP143_P2WPKH_SIGNED])
def test_every_truncation_is_rejected(hex_tx: str) -> None:
    raw = bytes.fromhex(hex_tx)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            Transaction.parse(raw[:cut])


@pytest.mark.parametrize("hex_tx", [GENESIS_COINBASE, BIP143_SIGNED])
def test_trailing_bytes_rejected(hex_tx: str) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        Transaction.parse(bytes.fromhex(hex_tx) + b"\x00")


def test_absurd_counts_rejected() -> None:
    with pytest.raises(DecodeError, match="absurd input count"):
        Transaction.parse(bytes.fromhex("01000000fe00000010" + "00" * 64))
    raw = bytearray.fromhex(GENESIS_COINBASE)
    raw[4 + 1 + 36] = 0xFC  # scriptSig length far past the end
    with pytest.raises(DecodeError):
        Transaction.parse(bytes(raw))


def test_bad_flag_and_superfluous_witness_rejected() -> None:
    signed = bytearray.fromhex(BIP143_SIGNED)
    signed[5] = 0x02
    with pytest.raises(DecodeError, match="marker"):
        Transaction.parse(bytes(signed))
    tx = Transaction.from_hex(BIP143_UNSIGNED)
    body = tx.serialize()
    empty_witnesses = body[:4] + b"\x00\x01" + body[4:-4] + b"\x00\x00" + body[-4:]
    with pytest.raises(DecodeError, match="witness"):
        Transaction.parse(empty_witnesses)


def test_from_hex_rejects_non_hex() -> None:
    with pytest.raises(DecodeError, match="hex"):
        Transaction.from_hex("zz")


def test_copy_helpers_leave_original_alone() -> None:
    tx = Transaction.from_hex(BIP143_UNSIGNED)
    signed = tx.with_witness(0, (b"\x01", b"\x02")).with_script_sig(1, b"\x51")
    assert tx.inputs[0].witness == () and tx.inputs[1].script_sig == b""
    assert signed.inputs[0].witness == (b"\x01", b"\x02")
    assert signed.inputs[1].script_sig == b"\x51"
    assert signed.txid != tx.txid  # the scriptSig is in the txid, the witness is not
    assert tx.with_witness(0, (b"\x01",)).txid == tx.txid
    replaced = tx.with_input(1, TxIn(OutPoint(b"\x11" * 32, 7)))
    assert replaced.inputs[1].prevout.index == 7 and replaced.inputs[0] == tx.inputs[0]
    assert Transaction.parse(signed.serialize()) == signed


def test_outpoint_from_display_hex() -> None:
    op = OutPoint.from_hex(GENESIS_TXID, 3)
    assert op.txid == bytes.fromhex(GENESIS_TXID)[::-1]
    assert op.txid_hex == GENESIS_TXID
    assert op.serialize() == op.txid + b"\x03\x00\x00\x00"
    with pytest.raises(DecodeError):
        OutPoint.from_hex("ab" * 31, 0)
    with pytest.raises(DecodeError):
        OutPoint.from_hex("xy" * 32, 0)
    with pytest.raises(ValueError, match="32 bytes"):
        OutPoint(b"\x00" * 31, 0)


def test_built_transaction_round_trips() -> None:
    tx = Transaction(
        version=2,
        inputs=(TxIn(OutPoint(b"\x22" * 32, 1), b"", 0xFFFFFFFD, (b"", b"\x30" * 72)),),
        outputs=(TxOut(12_345, b"\x00\x14" + b"\x33" * 20), TxOut(0, b"\x6a")),
        locktime=800_000,
    )
    raw = tx.serialize()
    assert raw[4:6] == b"\x00\x01"
    assert Transaction.parse(raw) == tx
    assert Transaction.parse(tx.serialize(include_witness=False)).inputs[0].witness == ()

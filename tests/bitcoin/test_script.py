"""Script numbers, pushes, the tokenizer and the templates."""

from __future__ import annotations

import pytest

from bitcoind_paychan.bitcoin import script as s
from bitcoind_paychan.bitcoin.script import (
    cltv_channel_script,
    decode_script_num,
    iter_script,
    multisig_2of2_script,
    p2pkh_script,
    p2sh_script,
    p2wpkh_script,
    p2wsh_script,
    push,
    push_int,
    script_num,
)
from bitcoind_paychan.errors import DecodeError

G = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
K2 = bytes.fromhex("02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5")

NUMS = [
    (0, ""),
    (1, "01"),
    (16, "10"),
    (127, "7f"),
    (128, "8000"),
    (255, "ff00"),
    (256, "0001"),
    (-1, "81"),
    (-128, "8080"),
    (-255, "ff80"),
    (500_000_000, "0065cd1d"),
    (1_700_000_000, "00f15365"),
    (2**31, "0000008000"),
]


@pytest.mark.parametrize(("n", "encoded"), NUMS)
def test_script_num(n: int, encoded: str) -> None:
    assert script_num(n).hex() == encoded
    assert decode_script_num(bytes.fromhex(encoded), max_size=5) == n


@pytest.mark.parametrize(
    ("raw", "lax"), [("00", 0), ("0100", 1), ("80", 0), ("ff0000", 255), ("7f80", -127)]
)
def test_decode_script_num_rejects_non_minimal(raw: str, lax: int) -> None:
    with pytest.raises(DecodeError, match="non-minimal"):
        decode_script_num(bytes.fromhex(raw))
    assert decode_script_num(bytes.fromhex(raw), minimal=False) == lax


def test_decode_script_num_size_limit() -> None:
    with pytest.raises(DecodeError, match="exceeds 4"):
        decode_script_num(bytes.fromhex("0000008000"))
    assert decode_script_num(bytes.fromhex("0000008000"), max_size=5) == 2**31


@pytest.mark.parametrize(
    ("size", "prefix"),
    [(1, "01"), (75, "4b"), (76, "4c4c"), (255, "4cff"), (256, "4d0001"), (65535, "4dffff"),
     (65536, "4e00000100")],
)  # fmt: skip
def test_push_size_boundaries(size: int, prefix: str) -> None:
    data = b"\xab" * size
    encoded = push(data)
    assert encoded == bytes.fromhex(prefix) + data
    assert list(iter_script(encoded)) == [(encoded[0], data)]


def test_push_never_uses_small_int_opcodes() -> None:
    assert push(b"") == b"\x00"
    assert push(b"\x01") == b"\x01\x01"
    assert push(b"\x81") == b"\x01\x81"


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, "00"), (-1, "4f"), (1, "51"), (16, "60"), (17, "0111"), (-2, "0182"), (128, "028000")],
)
def test_push_int(n: int, encoded: str) -> None:
    assert push_int(n).hex() == encoded


def test_op_constants() -> None:
    assert (s.OP_0, s.OP_1, s.OP_16, s.OP_1NEGATE) == (0x00, 0x51, 0x60, 0x4F)
    assert (s.OP_IF, s.OP_ELSE, s.OP_ENDIF, s.OP_DROP, s.OP_DUP) == (0x63, 0x67, 0x68, 0x75, 0x76)
    assert (s.OP_EQUAL, s.OP_EQUALVERIFY, s.OP_HASH160, s.OP_RETURN) == (0x87, 0x88, 0xA9, 0x6A)
    assert (s.OP_CHECKSIG, s.OP_CHECKSIGVERIFY, s.OP_CHECKMULTISIG) == (0xAC, 0xAD, 0xAE)
    assert s.OP_CHECKLOCKTIMEVERIFY == 0xB1
    assert [s.op_n(i) for i in (0, 1, 2, 16)] == [0x00, 0x51, 0x52, 0x60]


def test_iter_script_tokens() -> None:
    script = bytes.fromhex("76a914" + "11" * 20 + "88ac") + bytes.fromhex(
        "4c0201024d0100ff4e0000000000"
    )
    assert list(iter_script(script)) == [
        (s.OP_DUP, None),
        (s.OP_HASH160, None),
        (0x14, b"\x11" * 20),
        (s.OP_EQUALVERIFY, None),
        (s.OP_CHECKSIG, None),
        (s.OP_PUSHDATA1, b"\x01\x02"),
        (s.OP_PUSHDATA2, b"\xff"),
        (s.OP_PUSHDATA4, b""),
        (s.OP_0, b""),
    ]


@pytest.mark.parametrize(
    "raw", ["01", "4c", "4c01", "4d01", "4d0100", "4e010000", "4e01000000", "76024142ac03"]
)
def test_iter_script_truncation(raw: str) -> None:
    with pytest.raises(DecodeError):
        list(iter_script(bytes.fromhex(raw)))


def test_standard_templates() -> None:
    h20, h32 = b"\x11" * 20, b"\x22" * 32
    assert p2pkh_script(h20).hex() == "76a914" + "11" * 20 + "88ac"
    assert p2sh_script(h20).hex() == "a914" + "11" * 20 + "87"
    assert p2wpkh_script(h20).hex() == "0014" + "11" * 20
    assert p2wsh_script(h32).hex() == "0020" + "22" * 32
    with pytest.raises(ValueError, match="20 bytes"):
        p2pkh_script(h32)
    with pytest.raises(ValueError, match="32 bytes"):
        p2wsh_script(h20)


def test_multisig_2of2_keeps_key_order() -> None:
    assert multisig_2of2_script(G, K2).hex() == "52" + "21" + G.hex() + "21" + K2.hex() + "52ae"
    assert multisig_2of2_script(K2, G) != multisig_2of2_script(G, K2)


def test_cltv_channel_script_layout() -> None:
    script = cltv_channel_script(G, K2, 1_700_000_000)
    expected = (
        "63"  # OP_IF
        "21" + G.hex() + "ad"  # <server pub> OP_CHECKSIGVERIFY
        "67"  # OP_ELSE
        "0400f15365"  # <1700000000>
        "b175"  # OP_CHECKLOCKTIMEVERIFY OP_DROP
        "68"  # OP_ENDIF
        "21" + K2.hex() + "ac"  # <client pub> OP_CHECKSIG
    )
    assert script.hex() == expected
    assert len(script) == 80
    ops = [op for op, _ in iter_script(script)]
    assert ops == [0x63, 0x21, 0xAD, 0x67, 0x04, 0xB1, 0x75, 0x68, 0x21, 0xAC]


def test_cltv_channel_script_expiry_encodings() -> None:
    # A block height; a time needing a fifth byte for the sign bit; bitcoinj's OP_n for 1..16.
    assert cltv_channel_script(G, K2, 700_000)[36:42].hex() == "670360ae0ab1"
    assert cltv_channel_script(G, K2, 0xFFFFFFFF)[36:44].hex() == "6705ffffffff00b1"
    assert cltv_channel_script(G, K2, 16)[36:39].hex() == "6760b1"
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match="expiry"):
            cltv_channel_script(G, K2, bad)

"""Keys, signing, and the strictness of signature and public key parsing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bitcoind_paychan.bitcoin.hashes import sha256
from bitcoind_paychan.bitcoin.keys import (
    CURVE_ORDER,
    HALF_ORDER,
    PrivateKey,
    PublicKey,
    append_hashtype,
    is_canonical_der,
    is_low_s,
    split_sig_hashtype,
    verify,
)
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.errors import DecodeError

G_COMPRESSED = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
G_UNCOMPRESSED = (
    "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
)
DIGEST = sha256(b"payment 42")


def _der(r: int, s: int) -> bytes:
    def integer(v: int) -> bytes:
        b = v.to_bytes((v.bit_length() + 8) // 8, "big")  # one spare bit keeps it positive
        return b"\x02" + bytes((len(b),)) + b

    body = integer(r) + integer(s)
    return b"\x30" + bytes((len(body),)) + body


def _r_s(sig: bytes) -> tuple[int, int]:
    len_r = sig[3]
    return int.from_bytes(sig[4 : 4 + len_r], "big"), int.from_bytes(sig[6 + len_r :], "big")


def test_sign_verify_round_trip() -> None:
    key = PrivateKey.generate()
    sig = key.sign(DIGEST)
    assert is_canonical_der(sig) and is_low_s(sig)
    assert verify(key.pub, DIGEST, sig)
    assert key.pub.verify(DIGEST, sig)
    assert not verify(key.pub, sha256(b"payment 43"), sig)
    assert not verify(PrivateKey.generate().pub, DIGEST, sig)
    assert not verify(key.pub, DIGEST[:31], sig)



def test_verify_low_s_is_the_ecdsa_check_alone() -> None:
    key = PrivateKey.generate()
    sig = key.sign(DIGEST)
    assert key.pub.verify_low_s(DIGEST, sig)
    assert not key.pub.verify_low_s(sha256(b"payment 43"), sig)
    assert not PrivateKey.generate().pub.verify_low_s(DIGEST, sig)
    assert not key.pub.verify_low_s(DIGEST, b"\x30\x00")  # unparsable: False, not an error

def test_signing_is_deterministic_and_always_low_s() -> None:
    key = PrivateKey(bytes.fromhex("11" * 32))
    assert key.sign(DIGEST) == key.sign(DIGEST)
    for i in range(64):
        assert is_low_s(key.sign(sha256(bytes([i]))))
    with pytest.raises(ValueError, match="32 bytes"):
        key.sign(b"\x00" * 31)


def test_high_s_rejected() -> None:
    key = PrivateKey.generate()
    sig = key.sign(DIGEST)
    r, s = _r_s(sig)
    assert _der(r, s) == sig
    high = _der(r, CURVE_ORDER - s)
    assert CURVE_ORDER - s > HALF_ORDER
    assert is_canonical_der(high)
    assert not is_low_s(high)
    assert not verify(key.pub, DIGEST, high)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d + b"\x00", id="trailing-byte"),
        pytest.param(lambda d: b"\x31" + d[1:], id="not-a-sequence"),
        pytest.param(lambda d: d[:1] + bytes((d[1] + 1,)) + d[2:], id="wrong-total-length"),
        pytest.param(lambda d: d[:2] + b"\x03" + d[3:], id="r-not-an-integer"),
        pytest.param(
            lambda d: b"\x30" + bytes((d[1] + 1,)) + b"\x02" + bytes((d[3] + 1,)) + b"\x00" + d[4:],
            id="r-needless-zero-padding",
        ),
        pytest.param(lambda d: d[:-1], id="truncated"),
        pytest.param(lambda d: b"", id="empty"),
    ],
)
def test_non_canonical_der_rejected(mutate: Callable[[bytes], bytes]) -> None:
    key = PrivateKey(bytes.fromhex("22" * 32))
    sig = key.sign(DIGEST)
    bad = mutate(sig)
    assert not is_canonical_der(bad)
    assert not is_low_s(bad)
    assert not verify(key.pub, DIGEST, bad)


@pytest.mark.parametrize(
    ("der", "ok"),
    [
        (_der(1, 1), True),
        (_der(0x80, 1), True),  # padded because the high bit is set
        ("3006020180020101", False),  # negative R
        ("300602010102017f", True),
        ("3006020101020180", False),  # negative S
        ("30050200020101", False),  # empty R
        ("300702010102020001", False),  # S with a needless zero
        ("300702020000020101", False),
    ],
)
def test_is_canonical_der_cases(der: bytes | str, ok: bool) -> None:
    raw = bytes.fromhex(der) if isinstance(der, str) else der
    assert is_canonical_der(raw) is ok


def test_public_key_parsing_is_strict() -> None:
    g = PublicKey(bytes.fromhex(G_COMPRESSED))
    assert g.compressed and g.data.hex() == G_COMPRESSED
    assert PublicKey.parse(bytes.fromhex(G_COMPRESSED)) == g
    with pytest.raises(DecodeError, match="uncompressed"):
        PublicKey(bytes.fromhex(G_UNCOMPRESSED))
    full = PublicKey(bytes.fromhex(G_UNCOMPRESSED), allow_uncompressed=True)
    assert not full.compressed and full.hash160() != g.hash160()
    bad = [
        "04" + G_COMPRESSED[2:],  # 33 bytes with an uncompressed prefix
        "06" + G_UNCOMPRESSED[2:],  # hybrid
        "07" + G_UNCOMPRESSED[2:],
        "02" + G_UNCOMPRESSED[2:],  # 65 bytes with a compressed prefix
        G_COMPRESSED[:-2],  # 32 bytes
        G_COMPRESSED + "00",
        "02" + "00" * 32,  # x = 0 is not on the curve
        "02" + "00" * 31 + "05",  # nor is x = 5
        "",
    ]
    for data in bad:
        with pytest.raises(DecodeError):
            PublicKey(bytes.fromhex(data), allow_uncompressed=True)


def test_public_key_value_semantics() -> None:
    a = PublicKey(bytes.fromhex(G_COMPRESSED))
    b = PublicKey(bytes.fromhex(G_COMPRESSED))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert repr(a) == f"PublicKey({G_COMPRESSED})"
    with pytest.raises(AttributeError):
        a.data = b""  # type: ignore[misc]


def test_generator_key_and_hash160() -> None:
    one = PrivateKey((1).to_bytes(32, "big"))
    assert one.pub.data.hex() == G_COMPRESSED
    assert one.pub.hash160().hex() == "751e76e8199196d454941c45d1b3a323f1433bd6"
    assert one.secret == (1).to_bytes(32, "big")
    assert "0000" not in repr(one) and G_COMPRESSED in repr(one)


@pytest.mark.parametrize("secret", [b"\x00" * 32, CURVE_ORDER.to_bytes(32, "big"), b"\x01" * 31])
def test_private_key_range(secret: bytes) -> None:
    with pytest.raises(DecodeError):
        PrivateKey.from_bytes(secret)


def test_wif() -> None:
    main = "KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn"
    test = "cMahea7zqjxrtgAbB7LSGbcQUr1uX1ojuat9jZodMN87JcbXMTcA"
    one = (1).to_bytes(32, "big")
    assert PrivateKey.from_wif(main, Network.MAINNET).secret == one
    assert PrivateKey.from_wif(test, Network.REGTEST).secret == one
    assert PrivateKey.from_wif(test, Network.TESTNET).to_wif(Network.SIGNET) == test
    assert PrivateKey(one).to_wif(Network.MAINNET) == main
    with pytest.raises(DecodeError, match="for mainnet, not regtest"):
        PrivateKey.from_wif(main, Network.REGTEST)
    with pytest.raises(DecodeError, match="not mainnet"):
        PrivateKey.from_wif(test, Network.MAINNET)
    # The uncompressed-key WIF of key 1 on mainnet.
    with pytest.raises(DecodeError, match="compressed"):
        PrivateKey.from_wif("5HpHagT65TZzG1PH3CSu63k8DbpvD8s5ip4nEB3kEsreAnchuDf", Network.MAINNET)
    with pytest.raises(DecodeError, match="checksum"):
        PrivateKey.from_wif(main[:-1] + "o", Network.MAINNET)


def test_hashtype_helpers() -> None:
    der = PrivateKey.generate().sign(DIGEST)
    with_type = append_hashtype(der, 0x83)
    assert with_type[-1] == 0x83
    assert split_sig_hashtype(with_type) == (der, 0x83)
    with pytest.raises(DecodeError):
        split_sig_hashtype(b"")
    with pytest.raises(ValueError, match="byte"):
        append_hashtype(der, 0x100)

"""Base58check and bech32/bech32m addresses, BIP173/BIP350 vectors, network checks."""

from __future__ import annotations

import pytest

from bitcoind_paychan.bitcoin.address import (
    Encoding,
    address_to_script,
    base58_decode,
    base58_encode,
    base58check_decode,
    base58check_encode,
    bech32_decode,
    bech32_encode,
    script_to_address,
    segwit_decode,
    segwit_encode,
)
from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.script import p2pkh_script, p2wpkh_script
from bitcoind_paychan.errors import DecodeError

G = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
MAIN, TEST, REGTEST = Network.MAINNET, Network.TESTNET, Network.REGTEST

BECH32_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BECH32M_VALID = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllludsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
BECH32M_INVALID = [
    "\x201xj0phk",  # HRP character out of range
    "\x7f1g6xzxy",
    "\x801vctc34",
    "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",
    "qyrz8wqd2c9m",  # no separator
    "1qyrz8wqd2c9m",  # empty HRP
    "y1b0jsk6g",  # invalid data character
    "lt1igcx5c0",
    "in1muywd",  # checksum too short
    "mm1crxm3i",  # invalid character in checksum
    "au1s5cgom",
    "M1VUXWEZ",  # checksum computed with the uppercase HRP
    "16plkw9",
    "1p2gdwpf",
]

# BIP350 valid segwit addresses and their scriptPubKeys (v0, v1, and future versions).
SEGWIT_VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]
SEGWIT_INVALID = [
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # bech32 for v1
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # bech32m for v0
    "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",
    "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",  # bad checksum char
    "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",  # witness version 17
    "bc1pw5dgrnzv",  # 1-byte program
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",  # 41 bytes
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # 16-byte v0 program
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",  # mixed case
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",  # > 4 bits padding
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",  # non-zero padding
    "bc1gmk9yu",  # empty data
]


@pytest.mark.parametrize("s", BECH32_VALID)
def test_bech32_valid(s: str) -> None:
    hrp, data, encoding = bech32_decode(s)
    assert encoding is Encoding.BECH32
    assert bech32_encode(hrp, data, encoding) == s.lower()


@pytest.mark.parametrize("s", BECH32M_VALID)
def test_bech32m_valid_and_not_bech32(s: str) -> None:
    hrp, data, encoding = bech32_decode(s)
    assert encoding is Encoding.BECH32M
    assert bech32_encode(hrp, data, encoding) == s.lower()
    assert bech32_encode(hrp, data, Encoding.BECH32) != s.lower()


@pytest.mark.parametrize("s", BECH32M_INVALID)
def test_bech32m_invalid(s: str) -> None:
    with pytest.raises(DecodeError):
        bech32_decode(s)


@pytest.mark.parametrize(("address", "script_hex"), SEGWIT_VALID)
def test_segwit_valid(address: str, script_hex: str) -> None:
    hrp, version, program = segwit_decode(address)
    network = MAIN if hrp == "bc" else TEST
    script = bytes.fromhex(script_hex)
    assert address_to_script(address, network) == script
    assert script_to_address(script, network) == address.lower()
    assert segwit_encode(hrp, version, program) == address.lower()


@pytest.mark.parametrize("address", SEGWIT_INVALID)
def test_segwit_invalid(address: str) -> None:
    with pytest.raises(DecodeError):
        segwit_decode(address)
    network = MAIN if address.lower().startswith("bc") else TEST
    with pytest.raises(DecodeError):
        address_to_script(address, network)


def test_base58() -> None:
    assert base58_encode(b"") == ""
    assert base58_encode(b"\x00\x00\x01") == "112"
    assert base58_decode("112") == b"\x00\x00\x01"
    assert base58_encode(b"hello world") == "StV1DL6CwTryKyV"
    with pytest.raises(DecodeError, match="base58 character"):
        base58_decode("0OIl")
    with pytest.raises(DecodeError, match="checksum"):
        base58check_decode("1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMJ")
    with pytest.raises(DecodeError, match="checksum"):
        base58check_decode("1")


P2WPKH_G = "0014751e76e8199196d454941c45d1b3a323f1433bd6"
KNOWN_ADDRESSES = [
    (
        "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH",
        MAIN,
        "76a914751e76e8199196d454941c45d1b3a323f1433bd688ac",
    ),
    (
        "1AGNa15ZQXAZUgFiqJ2i7Z2DPU2J6hW62i",
        MAIN,
        "76a91465a16059864a2fdbc7c99a4723a8395bc6f188eb88ac",
    ),
    ("3CMNFxN1oHBc4R1EpboAL5yzHGgE611Xou", MAIN, "a91474f209f6ea907e2ea48f74fae05782ae8a66525787"),
    (
        "mo9ncXisMeAoXwqcV5EWuyncbmCcQN4rVs",
        TEST,
        "76a91453c0307d6851aa0ce7825ba883c6bd9ad242b48688ac",
    ),
    (
        "2N2JD6wb56AfK4tfmM6PwdVmoYk2dCKf4Br",
        REGTEST,
        "a9146349a418fc4578d10a372b54b45c280cc8c4382f87",
    ),
    ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", REGTEST, P2WPKH_G),
    ("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", Network.SIGNET, P2WPKH_G),
    (
        "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry",
        REGTEST,
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
]


@pytest.mark.parametrize(("address", "network", "script_hex"), KNOWN_ADDRESSES)
def test_known_addresses(address: str, network: Network, script_hex: str) -> None:
    script = bytes.fromhex(script_hex)
    assert address_to_script(address, network) == script
    assert script_to_address(script, network) == address


def test_generator_point_p2pkh() -> None:
    assert script_to_address(p2pkh_script(hash160(G)), MAIN) == "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH"
    assert base58check_encode(b"\x00" + hash160(G)) == "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH"
    assert script_to_address(p2wpkh_script(hash160(G)), MAIN) == (
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    )


@pytest.mark.parametrize(
    ("address", "network", "message"),
    [
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", REGTEST, "for mainnet, not regtest"),
        ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", MAIN, "for regtest, not mainnet"),
        (
            "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
            REGTEST,
            "for testnet/testnet4/signet, not regtest",
        ),
        ("1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH", TEST, "for mainnet, not testnet"),
        ("3CMNFxN1oHBc4R1EpboAL5yzHGgE611Xou", REGTEST, "for mainnet, not regtest"),
        (
            "mo9ncXisMeAoXwqcV5EWuyncbmCcQN4rVs",
            MAIN,
            "for testnet/testnet4/signet/regtest, not mainnet",
        ),
    ],
)
def test_wrong_network_rejected(address: str, network: Network, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        address_to_script(address, network)


def test_unsupported_scripts_have_no_address() -> None:
    for script in (b"", b"\x6a\x04abcd", b"\x00\x15" + b"\x00" * 21, b"\x51\x01\x00"):
        with pytest.raises(DecodeError, match="no address"):
            script_to_address(script, MAIN)


def test_base58_payload_length_checked() -> None:
    with pytest.raises(DecodeError, match="payload"):
        address_to_script(base58check_encode(b"\x00" + b"\x11" * 19), MAIN)


def test_networks() -> None:
    assert [n.chain for n in Network] == ["main", "test", "testnet4", "signet", "regtest"]
    assert Network.from_chain("regtest") is REGTEST
    assert (REGTEST.hrp, TEST.hrp, Network.SIGNET.hrp, MAIN.hrp) == ("bcrt", "tb", "tb", "bc")
    assert (MAIN.p2pkh_version, MAIN.p2sh_version, MAIN.wif_prefix) == (0x00, 0x05, 0x80)
    assert (REGTEST.p2pkh_version, REGTEST.p2sh_version, REGTEST.wif_prefix) == (0x6F, 0xC4, 0xEF)
    with pytest.raises(DecodeError, match="unknown chain 'mainnet'"):
        Network.from_chain("mainnet")

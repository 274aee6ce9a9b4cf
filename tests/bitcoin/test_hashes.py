"""Hash functions, including the pure-Python RIPEMD-160 fallback."""

from __future__ import annotations

import hashlib

import pytest

from bitcoind_paychan.bitcoin import hashes
from bitcoind_paychan.bitcoin._ripemd160 import ripemd160 as ripemd160_py

RIPEMD160_VECTORS = [
    (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
    (b"a", "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe"),
    (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "12a053384a9c0c88e405a06c27dcf49ada62eb2b",
    ),
    (b"a" * 1_000_000, "52783243c1697bdbe16d37f97f68f08325dc1528"),
]


@pytest.mark.parametrize(("data", "digest"), RIPEMD160_VECTORS)
def test_ripemd160_fallback_vectors(data: bytes, digest: str) -> None:
    assert ripemd160_py(data).hex() == digest
    assert hashes.ripemd160(data).hex() == digest


# sha256 of the 300 RIPEMD-160 digests of data[:0] … data[:299], computed once with OpenSSL's
# RIPEMD-160, so the check needs no OpenSSL (which may lack the algorithm) when it runs.
BOUNDARIES_DIGEST = "e3ca307b862ef69c6e1ce343f19771cf59b3dd05b9c8872b4f996d5037a1fbce"


def test_fallback_matches_openssl_across_block_boundaries() -> None:
    data = bytes(range(256)) * 2
    digests = b"".join(ripemd160_py(data[:n]) for n in range(300))
    assert hashlib.sha256(digests).hexdigest() == BOUNDARIES_DIGEST


def test_fallback_used_only_without_hashlib(monkeypatch: pytest.MonkeyPatch) -> None:
    real_new = hashlib.new

    def with_ripemd(name: str, *args: bytes) -> object:
        return real_new("sha256" if name == "ripemd160" else name, *args)

    def without_ripemd(name: str, *args: bytes) -> object:
        raise ValueError(f"unsupported hash type {name}")

    monkeypatch.setattr(hashlib, "new", with_ripemd)
    assert hashes._pick_ripemd160() is hashes._ripemd160_hashlib
    monkeypatch.setattr(hashlib, "new", without_ripemd)
    assert hashes._pick_ripemd160() is ripemd160_py


def test_sha256_family() -> None:
    assert hashes.sha256(b"").hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert hashes.hash256(b"").hex() == (
        "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"
    )
    g = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    assert hashes.hash160(g).hex() == "751e76e8199196d454941c45d1b3a323f1433bd6"

"""The hash functions of Bitcoin: sha256, hash256 (double sha256), ripemd160, hash160, and
BIP340's tagged hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from bitcoind_paychan.bitcoin._ripemd160 import ripemd160 as _ripemd160_py

_sha256 = hashlib.sha256


def sha256(data: bytes) -> bytes:
    """Single SHA-256."""
    return _sha256(data).digest()


def hash256(data: bytes) -> bytes:
    """Double SHA-256 (txids, sighashes, base58check checksums)."""
    return _sha256(_sha256(data).digest()).digest()


def _ripemd160_hashlib(data: bytes) -> bytes:
    return hashlib.new("ripemd160", data).digest()


def _pick_ripemd160() -> Callable[[bytes], bytes]:
    try:
        hashlib.new("ripemd160")
    except ValueError:  # OpenSSL 3 without the legacy provider
        return _ripemd160_py
    return _ripemd160_hashlib


ripemd160: Callable[[bytes], bytes] = _pick_ripemd160()
"""RIPEMD-160: hashlib's when it has one, else the pure-Python fallback."""


def hash160(data: bytes) -> bytes:
    """RIPEMD-160 of SHA-256 (P2PKH/P2WPKH key hashes, P2SH script hashes)."""
    return ripemd160(_sha256(data).digest())


_TAG_STATES: dict[str, hashlib._Hash] = {}


def tagged_state(tag: str) -> hashlib._Hash:
    """A SHA-256 state that has hashed `tag`'s prefix (sha256(tag) twice): update it with the
    data and take its digest for the tagged hash. Computed once per tag, a copy each call."""
    state = _TAG_STATES.get(tag)
    if state is None:
        digest = _sha256(tag.encode()).digest()
        state = _TAG_STATES[tag] = _sha256(digest + digest)
    return state.copy()


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340's tagged hash: sha256(sha256(tag) ‖ sha256(tag) ‖ data)."""
    hashed = tagged_state(tag)
    hashed.update(data)
    return hashed.digest()

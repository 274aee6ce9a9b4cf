"""secp256k1 keys, ECDSA and BIP340 Schnorr signatures over coincurve, with bitcoind's
strictness rules.

ECDSA signatures are DER without the hashtype byte unless a name says otherwise; verification
demands strict DER (BIP66) and low S (BIP62/BIP146), as bitcoind's standardness does. Schnorr
signatures are BIP340's 64 bytes, by and for x-only keys (`XOnlyKey`).
"""

from __future__ import annotations

import os
from dataclasses import InitVar, dataclass, field

import coincurve

from bitcoind_paychan.bitcoin.address import base58check_decode, base58check_encode
from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.errors import DecodeError

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_ORDER = CURVE_ORDER // 2


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A validated public key: 33-byte compressed, or 65-byte uncompressed if allowed.

    The constructor raises DecodeError on any non-canonical or off-curve encoding.
    """

    data: bytes
    allow_uncompressed: InitVar[bool] = False
    _ec: coincurve.PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self, allow_uncompressed: bool) -> None:
        data = self.data
        n = len(data)
        if n == 65 and data[0] == 4:
            if not allow_uncompressed:
                raise DecodeError("uncompressed public key where a compressed one is required")
        elif n != 33 or data[0] not in (2, 3):
            raise DecodeError(f"not a canonical public key encoding ({n} bytes)")
        if type(data) is not bytes:  # keep the stored key immutable
            data = bytes(data)
            object.__setattr__(self, "data", data)
        try:
            object.__setattr__(self, "_ec", coincurve.PublicKey(data))
        except ValueError:
            raise DecodeError("public key is not a point on secp256k1") from None

    @classmethod
    def parse(cls, data: bytes, allow_uncompressed: bool = False) -> PublicKey:
        """Alias of the constructor, for symmetry with the other parsers."""
        return cls(data, allow_uncompressed)

    @property
    def compressed(self) -> bool:
        return len(self.data) == 33

    def hash160(self) -> bytes:
        """hash160 of the encoding as given (the P2PKH/P2WPKH key hash)."""
        return hash160(self.data)

    def verify(self, digest: bytes, der_sig: bytes) -> bool:
        """True iff `der_sig` is a strict-DER, low-S signature of `digest` by this key."""
        if len(digest) != 32 or not is_low_s(der_sig):  # is_low_s also checks strict DER
            return False
        return self.verify_low_s(digest, der_sig)

    def verify_low_s(self, digest: bytes, der_sig: bytes) -> bool:
        """`verify` for a 32-byte digest and a signature the caller has already found strict
        DER and low S (`is_low_s`): the ECDSA check alone, on the key parsed once."""
        try:
            return bool(self._ec.verify(der_sig, digest, hasher=None))
        except ValueError:
            return False

    def __repr__(self) -> str:
        return f"PublicKey({self.data.hex()})"


@dataclass(frozen=True, slots=True)
class XOnlyKey:
    """A validated BIP340 x-only public key: the 32-byte X coordinate of a point whose Y is
    even. The constructor raises DecodeError unless it is one (wrong length, not below the
    field size, or no point on secp256k1 has it)."""

    data: bytes
    _ec: coincurve.PublicKeyXOnly = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.data) != 32:
            raise DecodeError(f"an x-only public key is 32 bytes, not {len(self.data)}")
        if type(self.data) is not bytes:
            object.__setattr__(self, "data", bytes(self.data))
        try:
            object.__setattr__(self, "_ec", coincurve.PublicKeyXOnly(self.data))
        except ValueError:
            raise DecodeError("x-only public key is not the X of a point on secp256k1") from None

    @classmethod
    def of(cls, pub: PublicKey) -> XOnlyKey:
        """The x-only form of a compressed key (its X; the Y's parity is dropped)."""
        if not pub.compressed:
            raise DecodeError("an x-only key is taken from a compressed public key")
        return cls(pub.data[1:])

    def verify_schnorr(self, message: bytes, signature: bytes) -> bool:
        """True iff `signature` (64 bytes) is this key's BIP340 signature of `message`."""
        return len(signature) == 64 and bool(self._ec.verify(signature, message))

    def __repr__(self) -> str:
        return f"XOnlyKey({self.data.hex()})"


class PrivateKey:
    """A secp256k1 private key; its public key is always compressed."""

    __slots__ = ("_ec", "pub")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise DecodeError(f"private key must be 32 bytes, got {len(secret)}")
        try:
            self._ec = coincurve.PrivateKey(bytes(secret))
        except ValueError:
            raise DecodeError("private key out of range (zero or >= curve order)") from None
        self.pub = PublicKey(self._ec.public_key.format(compressed=True))

    @classmethod
    def generate(cls) -> PrivateKey:
        """A new random key from the OS CSPRNG."""
        return cls(coincurve.PrivateKey().secret)

    @classmethod
    def from_bytes(cls, secret: bytes) -> PrivateKey:
        return cls(secret)

    @classmethod
    def from_wif(cls, wif: str, network: Network) -> PrivateKey:
        """Decode a compressed-key WIF string of `network` (testnet, signet, regtest share one)."""
        payload = base58check_decode(wif)
        if len(payload) != 34 or payload[-1] != 1:
            raise DecodeError("not a compressed-key WIF (uncompressed keys are not supported)")
        if payload[0] != network.wif_prefix:
            raise DecodeError(
                f"WIF key is for {Network.describe(lambda n: n.wif_prefix == payload[0])}, "
                f"not {network.label}"
            )
        return cls(payload[1:33])

    @property
    def secret(self) -> bytes:
        return self._ec.secret

    def to_wif(self, network: Network) -> str:
        return base58check_encode(bytes((network.wif_prefix,)) + self.secret + b"\x01")

    def sign(self, digest: bytes) -> bytes:
        """Deterministic (RFC6979) low-S DER signature of a 32-byte digest."""
        if len(digest) != 32:
            raise ValueError(f"digest must be 32 bytes, got {len(digest)}")
        der = self._ec.sign(digest, hasher=None)
        assert is_low_s(der), "libsecp256k1 returned a high-S or non-strict-DER signature"
        return der

    def sign_schnorr(self, digest: bytes, aux_rand: bytes | None = None) -> bytes:
        """BIP340 signature (64 bytes) of a 32-byte digest, by this key's x-only form. BIP340
        asks for 32 bytes of fresh randomness (`aux_rand`), taken from the OS CSPRNG when
        None; a given value serves the test vectors."""
        if len(digest) != 32:
            raise ValueError(f"digest must be 32 bytes, got {len(digest)}")
        return self._ec.sign_schnorr(digest, os.urandom(32) if aux_rand is None else aux_rand)

    @property
    def xonly(self) -> XOnlyKey:
        """This key's x-only public key (what its Schnorr signatures verify against)."""
        return XOnlyKey.of(self.pub)

    def __repr__(self) -> str:
        return f"PrivateKey(pub={self.pub.data.hex()})"


def verify(pub: PublicKey, digest: bytes, der_sig: bytes) -> bool:
    """True iff `der_sig` (no hashtype byte) is a strict-DER low-S signature of `digest`."""
    return pub.verify(digest, der_sig)


def is_canonical_der(sig: bytes) -> bool:
    """BIP66 strict DER rules, for a signature without its hashtype byte."""
    n = len(sig)
    if n < 8 or n > 72 or sig[0] != 0x30 or sig[1] != n - 2:
        return False
    len_r = sig[3]
    if 5 + len_r >= n:
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 6 != n:
        return False
    return _good_int(sig, 2, len_r) and _good_int(sig, 4 + len_r, len_s)


def _good_int(sig: bytes, tag: int, length: int) -> bool:
    """An INTEGER at `tag`: non-empty, positive, no needless leading zero."""
    if sig[tag] != 0x02 or length == 0 or sig[tag + 2] & 0x80:
        return False
    return not (length > 1 and sig[tag + 2] == 0 and not sig[tag + 3] & 0x80)


def is_low_s(sig: bytes) -> bool:
    """True iff `sig` is strict DER and its S is at most half the curve order."""
    if not is_canonical_der(sig):
        return False
    len_r = sig[3]
    s = int.from_bytes(sig[6 + len_r :], "big")
    return 0 < s <= HALF_ORDER


def split_sig_hashtype(sig_with_type: bytes) -> tuple[bytes, int]:
    """Split a script signature into (DER, hashtype byte)."""
    if not sig_with_type:
        raise DecodeError("empty signature")
    return sig_with_type[:-1], sig_with_type[-1]


def append_hashtype(der_sig: bytes, hashtype: int) -> bytes:
    """The signature as pushed in a script: DER followed by the hashtype byte."""
    if not 0 <= hashtype <= 0xFF:
        raise ValueError(f"hashtype {hashtype} does not fit a byte")
    return der_sig + bytes((hashtype,))

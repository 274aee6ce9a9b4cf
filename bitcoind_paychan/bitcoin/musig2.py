"""MuSig2 (BIP327): two signers' keys make one Taproot key, and one BIP340 signature for it.

The version-4 contract's cooperative close is a key-path spend of a P2TR output whose internal
key is the KeyAgg of the client's and the server's keys, tweaked by BIP341's TapTweak. A round:
each signer calls `nonce_gen` and sends its public nonce; `nonce_agg` sums them; both build the
same `SessionContext` (aggregate nonce, keys, tweaks, message); each `sign`s, the other side
checks that partial signature with `partial_sig_verify_internal`, and `partial_sig_agg` makes
the final 64-byte BIP340 signature, valid for the tweaked key (`coincurve.PublicKeyXOnly`).

The names, arguments and error messages follow BIP327's reference code; points are coincurve
(libsecp256k1) public keys, `None` the point at infinity, and scalars mod n are Python ints
(not constant-time: the secret key and nonces go through them).

Secret nonces: a `SecretNonce` signs once. `sign` takes it (under a lock) before any check, so
a second use, even after a failed attempt, raises `NonceReused`; it cannot be pickled or
copied, so it is never stored: a crash mid-session starts a new session with fresh nonces.
`deterministic_sign` (the last signer's stateless variant) keeps no nonce at all;
`deterministic_nonce` is its nonce alone, derived again from the same inputs to sign later.

Why not a binding of libsecp256k1's musig module: of the bindings on the package index only
btclib-secp256k1 exposes it (MIT, wheels, tweaks included), but it is a beta, and its opaque
secret nonce, hidden nonce randomness and 32-byte-only messages leave BIP327's sign, tweak,
nonce-generation and deterministic-signing vectors unrunnable against it.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import coincurve

from bitcoind_paychan.bitcoin.hashes import tagged_hash
from bitcoind_paychan.bitcoin.keys import CURVE_ORDER as N
from bitcoind_paychan.bitcoin.keys import XOnlyKey
from bitcoind_paychan.bitcoin.taproot import tap_tweak
from bitcoind_paychan.errors import DecodeError, InvalidContribution, MusigError, NonceReused

__all__ = [
    "KeyAggContext", "SecretNonce", "SessionContext", "apply_tweak", "deterministic_nonce",
    "deterministic_sign", "get_xonly_pk", "individual_pk", "key_agg", "key_agg_and_tweak",
    "key_agg_coeff", "key_sort", "nonce_agg", "nonce_gen", "partial_sig_agg", "partial_sig_verify",
    "partial_sig_verify_internal", "sign", "taproot_tweak",
]

Point = coincurve.PublicKey
_G = coincurve.PublicKey.from_valid_secret((1).to_bytes(32, "big"))
_INFINITY_BYTES = bytes(33)


# -- hashes and points --------------------------------------------------------------------------

def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _bytes32(x: int) -> bytes:
    return x.to_bytes(32, "big")


def _xbytes(p: Point) -> bytes:
    return p.format(compressed=True)[1:]


def _cbytes(p: Point) -> bytes:
    return p.format(compressed=True)


def _has_even_y(p: Point) -> bool:
    return p.format(compressed=True)[0] == 2


def _cpoint(b: bytes) -> Point:
    """A 33-byte compressed point; ValueError for anything else (other lengths, tags, x)."""
    if len(b) != 33 or b[0] not in (2, 3):
        raise ValueError("not a valid compressed point")
    return coincurve.PublicKey(b)  # ValueError when x is not on the curve or not below p


def _cpoint_ext(b: bytes) -> Point | None:
    return None if b == _INFINITY_BYTES else _cpoint(b)


def _add(p: Point | None, q: Point | None) -> Point | None:
    if p is None:
        return q
    if q is None:
        return p
    try:
        return coincurve.PublicKey.combine_keys([p, q])
    except ValueError:  # p == -q: two valid points sum only to infinity
        return None


def _mul(p: Point | None, k: int) -> Point | None:
    k %= N
    return None if p is None or k == 0 else p.multiply(_bytes32(k))


def _gmul(k: int) -> Point | None:
    k %= N
    return None if k == 0 else coincurve.PublicKey.from_valid_secret(_bytes32(k))


def _gmul_nonzero(k: int) -> Point:
    p = _gmul(k)
    assert p is not None, "a scalar in 1..n-1 times G is never infinity"
    return p


def _equal(p: Point | None, q: Point | None) -> bool:
    return (p is None and q is None) or (
        p is not None and q is not None and _cbytes(p) == _cbytes(q))


# -- keys ---------------------------------------------------------------------------------------

def individual_pk(sk: bytes) -> bytes:
    """The 33-byte plain (compressed) public key of secret key `sk`."""
    d = _int(sk)
    if len(sk) != 32 or not 1 <= d < N:
        raise MusigError("The secret key must be an integer in the range 1..n-1.")
    return _cbytes(_gmul_nonzero(d))


def key_sort(pubkeys: Sequence[bytes]) -> list[bytes]:
    """The keys in BIP327's order (lexicographic on the 33-byte encodings)."""
    return sorted(pubkeys)


@dataclass(frozen=True, slots=True)
class KeyAggContext:
    """An aggregate key Q with its tweak accumulators (BIP327's gacc and tacc)."""

    Q: Point
    gacc: int
    tacc: int

    def xonly_pk(self) -> bytes:
        """The 32-byte x-only aggregate key (after tweaks): the Taproot output key."""
        return _xbytes(self.Q)

    def plain_pk(self) -> bytes:
        """The 33-byte compressed aggregate key (after tweaks)."""
        return _cbytes(self.Q)


def get_xonly_pk(keyagg_ctx: KeyAggContext) -> bytes:
    """BIP327's GetXonlyPubkey."""
    return keyagg_ctx.xonly_pk()


def _hash_keys(pubkeys: Sequence[bytes]) -> bytes:
    return tagged_hash("KeyAgg list", b"".join(pubkeys))


def _second_key(pubkeys: Sequence[bytes]) -> bytes:
    return next((pk for pk in pubkeys[1:] if pk != pubkeys[0]), _INFINITY_BYTES)


def _key_agg_coeff(list_hash: bytes, pk: bytes, pk2: bytes) -> int:
    if pk == pk2:
        return 1
    return _int(tagged_hash("KeyAgg coefficient", list_hash + pk)) % N


def key_agg_coeff(pubkeys: Sequence[bytes], pk: bytes) -> int:
    """The key aggregation coefficient of `pk` among `pubkeys`."""
    return _key_agg_coeff(_hash_keys(pubkeys), pk, _second_key(pubkeys))


def key_agg(pubkeys: Sequence[bytes]) -> KeyAggContext:
    """KeyAgg of 33-byte plain keys in the order given (sort them first with `key_sort` for an
    order-independent key). An unusable key raises InvalidContribution naming its index."""
    if not pubkeys:
        raise MusigError("key_agg needs at least one public key")
    list_hash, pk2 = _hash_keys(pubkeys), _second_key(pubkeys)
    q: Point | None = None
    for i, pk in enumerate(pubkeys):
        try:
            p = _cpoint(pk)
        except ValueError:
            raise InvalidContribution(i, "pubkey") from None
        q = _add(q, _mul(p, _key_agg_coeff(list_hash, pk, pk2)))
    assert q is not None, "an infinite aggregate key happens with negligible probability"
    return KeyAggContext(q, 1, 0)


def apply_tweak(keyagg_ctx: KeyAggContext, tweak: bytes, is_xonly: bool) -> KeyAggContext:
    """Add `tweak`·G to the aggregate key: x-only (BIP341 Taproot, after negating an odd Q)
    or plain (BIP32-style)."""
    if len(tweak) != 32:
        raise MusigError("The tweak must be a 32-byte array.")
    q, gacc, tacc = keyagg_ctx.Q, keyagg_ctx.gacc, keyagg_ctx.tacc
    g = N - 1 if is_xonly and not _has_even_y(q) else 1
    t = _int(tweak)
    if t >= N:
        raise MusigError("The tweak must be less than n.")
    q2 = _add(_mul(q, g), _gmul(t))
    if q2 is None:
        raise MusigError("The result of tweaking cannot be infinity.")
    return KeyAggContext(q2, g * gacc % N, (t + g * tacc) % N)


def key_agg_and_tweak(pubkeys: Sequence[bytes], tweaks: Sequence[bytes],
                      is_xonly: Sequence[bool]) -> KeyAggContext:
    """KeyAgg, then each tweak in turn."""
    if len(tweaks) != len(is_xonly):
        raise MusigError("The `tweaks` and `is_xonly` arrays must have the same length.")
    ctx = key_agg(pubkeys)
    for tweak, xonly in zip(tweaks, is_xonly, strict=True):
        ctx = apply_tweak(ctx, tweak, xonly)
    return ctx


def taproot_tweak(internal_key: bytes, merkle_root: bytes | None = None) -> bytes:
    """BIP341's TapTweak of a 32-byte x-only internal key and its script tree's Merkle root
    (None for a key-path-only output): apply it as an x-only tweak to get the output key."""
    if len(internal_key) != 32 or (merkle_root is not None and len(merkle_root) != 32):
        raise MusigError("taproot_tweak needs a 32-byte x-only key and a 32-byte Merkle root")
    try:
        return tap_tweak(XOnlyKey(internal_key), merkle_root or b"")
    except (DecodeError, ValueError) as exc:
        raise MusigError(f"no Taproot tweak for this internal key: {exc}") from None


# -- nonces -------------------------------------------------------------------------------------

_NOT_SERIALISABLE = ("a MuSig2 SecretNonce is never stored, copied or pickled: signing twice "
                     "with one nonce reveals the secret key. After a crash, start a new "
                     "session with nonce_gen")


class SecretNonce:
    """A signer's secret nonce (k1, k2, and the public key it was made for), good for ONE
    `sign`. Made by `nonce_gen`; never stored, copied or pickled (TypeError)."""

    __slots__ = ("_k", "_lock", "pk")

    def __init__(self, k1: int, k2: int, pk: bytes) -> None:
        self._k: tuple[int, int] | None = (k1, k2)
        self._lock = threading.Lock()
        self.pk = bytes(pk)

    @property
    def used(self) -> bool:
        """True once the nonce has signed (or been discarded): it can never sign again."""
        return self._k is None

    def discard(self) -> None:
        """Forget the nonce (an aborted session): any later `sign` with it raises."""
        with self._lock:
            self._k = None

    def _take(self) -> tuple[int, int]:
        with self._lock:
            k, self._k = self._k, None
        if k is None:
            raise NonceReused("this MuSig2 secret nonce has already signed (or was discarded); "
                              "nothing was signed: start a new session with a fresh nonce_gen")
        return k

    def __repr__(self) -> str:
        return f"SecretNonce(pk={self.pk.hex()}, used={self.used})"

    def __getstate__(self) -> NoReturn:
        raise TypeError(_NOT_SERIALISABLE)

    def __copy__(self) -> NoReturn:
        raise TypeError(_NOT_SERIALISABLE)

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(_NOT_SERIALISABLE)


def _nonce_hash(rand: bytes, pk: bytes, aggpk: bytes, i: int, msg_prefixed: bytes,
                extra_in: bytes) -> int:
    buf = (rand + len(pk).to_bytes(1, "big") + pk + len(aggpk).to_bytes(1, "big") + aggpk
           + msg_prefixed + len(extra_in).to_bytes(4, "big") + extra_in + i.to_bytes(1, "big"))
    return _int(tagged_hash("MuSig/nonce", buf))


def _nonce_gen_internal(rand_: bytes, sk: bytes | None, pk: bytes, aggpk: bytes | None,
                        msg: bytes | None, extra_in: bytes | None) -> tuple[int, int, bytes]:
    """NonceGen with the randomness given: (k1, k2, pubnonce)."""
    if sk is not None:
        rand = bytes(a ^ b for a, b in zip(sk, tagged_hash("MuSig/aux", rand_), strict=True))
    else:
        rand = rand_
    msg_prefixed = b"\x00" if msg is None else b"\x01" + len(msg).to_bytes(8, "big") + msg
    k1, k2 = (_nonce_hash(rand, pk, aggpk or b"", i, msg_prefixed, extra_in or b"") % N
              for i in (0, 1))
    assert k1 != 0 and k2 != 0, "a zero nonce happens with negligible probability"
    return k1, k2, _cbytes(_gmul_nonzero(k1)) + _cbytes(_gmul_nonzero(k2))


def nonce_gen(sk: bytes | None, pk: bytes, aggpk: bytes | None = None,
              msg: bytes | None = None, extra_in: bytes | None = None
              ) -> tuple[SecretNonce, bytes]:
    """A fresh nonce pair from 32 random bytes, hardened (as BIP327 recommends) with what is
    known: the secret key, the x-only aggregate key, the message, any extra input (a counter,
    the time). Returns (secret nonce, 66-byte public nonce to send)."""
    if sk is not None and len(sk) != 32:
        raise MusigError("The optional byte array sk must have length 32.")
    if aggpk is not None and len(aggpk) != 32:
        raise MusigError("The optional byte array aggpk must have length 32.")
    if len(pk) != 33:
        raise MusigError("pk must be the signer's 33-byte compressed public key")
    k1, k2, pubnonce = _nonce_gen_internal(secrets.token_bytes(32), sk, pk, aggpk, msg,
                                           extra_in)
    return SecretNonce(k1, k2, pk), pubnonce


def nonce_agg(pubnonces: Sequence[bytes]) -> bytes:
    """The 66-byte aggregate of the signers' public nonces (either half may be infinity)."""
    aggnonce = b""
    for j in (0, 33):
        r: Point | None = None
        for i, pubnonce in enumerate(pubnonces):
            try:
                if len(pubnonce) != 66:
                    raise ValueError("a public nonce is 66 bytes")
                r = _add(r, _cpoint(pubnonce[j:j + 33]))
            except ValueError:
                raise InvalidContribution(i, "pubnonce") from None
        aggnonce += _INFINITY_BYTES if r is None else _cbytes(r)
    return aggnonce


# -- session, signing, verification, aggregation ------------------------------------------------

class SessionContext:
    """One signing session: the aggregate nonce, the keys (in KeyAgg order), the tweaks and
    the message. Its values (Q, b, R, e) are computed once, here; a bad key or aggregate
    nonce raises InvalidContribution."""

    __slots__ = ("R", "aggnonce", "b", "e", "g", "is_xonly", "keyagg", "msg", "pubkeys",
                 "tweaks")

    def __init__(self, aggnonce: bytes, pubkeys: Sequence[bytes], tweaks: Sequence[bytes],
                 is_xonly: Sequence[bool], msg: bytes) -> None:
        self.aggnonce = bytes(aggnonce)
        self.pubkeys = tuple(pubkeys)
        self.tweaks = tuple(tweaks)
        self.is_xonly = tuple(is_xonly)
        self.msg = bytes(msg)
        self.keyagg = key_agg_and_tweak(self.pubkeys, self.tweaks, self.is_xonly)
        q = self.keyagg.Q
        self.b = _int(tagged_hash("MuSig/noncecoef", self.aggnonce + _xbytes(q) + msg)) % N
        try:
            if len(self.aggnonce) != 66:
                raise ValueError("an aggregate nonce is 66 bytes")
            r1, r2 = _cpoint_ext(self.aggnonce[:33]), _cpoint_ext(self.aggnonce[33:])
        except ValueError:
            raise InvalidContribution(None, "aggnonce") from None
        r = _add(r1, _mul(r2, self.b))
        self.R: Point = _G if r is None else r
        self.e = _int(tagged_hash("BIP0340/challenge", _xbytes(self.R) + _xbytes(q) + msg)) % N
        self.g = 1 if _has_even_y(q) else N - 1  # Q's parity, folded into every key term

    def key_coeff(self, pk: bytes) -> int:
        """The KeyAgg coefficient of a signer's key; MusigError if it is not a signer's."""
        if pk not in self.pubkeys:
            raise MusigError("The signer's pubkey must be included in the list of pubkeys.")
        return key_agg_coeff(self.pubkeys, pk)


def sign(secnonce: SecretNonce, sk: bytes, session: SessionContext) -> bytes:
    """This signer's 32-byte partial signature. Consumes `secnonce` first (NonceReused if it
    already signed), and checks the result before returning it."""
    k1_, k2_ = secnonce._take()
    if not 0 < k1_ < N:
        raise MusigError("first secnonce value is out of range.")
    if not 0 < k2_ < N:
        raise MusigError("second secnonce value is out of range.")
    even_r = _has_even_y(session.R)
    k1, k2 = (k1_, k2_) if even_r else (N - k1_, N - k2_)
    d_ = _int(sk)
    if len(sk) != 32 or not 0 < d_ < N:
        raise MusigError("secret key value is out of range.")
    pk = _cbytes(_gmul_nonzero(d_))
    if pk != secnonce.pk:
        raise MusigError("Public key does not match nonce_gen argument")
    a = session.key_coeff(pk)
    d = session.g * session.keyagg.gacc * d_ % N
    psig = _bytes32((k1 + session.b * k2 + session.e * a * d) % N)
    pubnonce = _cbytes(_gmul_nonzero(k1_)) + _cbytes(_gmul_nonzero(k2_))
    if not partial_sig_verify_internal(psig, pubnonce, pk, session):  # kept under python -O
        raise MusigError("our own partial signature does not verify: the session or the "
                         "secret key is inconsistent; nothing was sent, start a new session")
    return psig


def partial_sig_verify_internal(psig: bytes, pubnonce: bytes, pk: bytes,
                                session: SessionContext) -> bool:
    """True iff `psig` is the partial signature of the signer with key `pk` and public nonce
    `pubnonce` in `session`. An unparsable nonce or key raises MusigError."""
    s = _int(psig)
    if len(psig) != 32 or s >= N:
        return False
    try:
        if len(pubnonce) != 66:
            raise ValueError("a public nonce is 66 bytes")
        r_s1, r_s2, p = _cpoint(pubnonce[:33]), _cpoint(pubnonce[33:]), _cpoint(pk)
    except ValueError:
        raise MusigError("the public nonce or public key of a partial signature is not valid: "
                         "the signer sent an unusable contribution") from None
    re_s = _add(r_s1, _mul(r_s2, session.b))
    if not _has_even_y(session.R):
        re_s = _mul(re_s, N - 1)
    a = session.key_coeff(pk)
    g_ = session.g * session.keyagg.gacc % N
    return _equal(_gmul(s), _add(re_s, _mul(p, session.e * a * g_)))


def partial_sig_verify(psig: bytes, pubnonces: Sequence[bytes], pubkeys: Sequence[bytes],
                       tweaks: Sequence[bytes], is_xonly: Sequence[bool], msg: bytes,
                       i: int) -> bool:
    """BIP327's PartialSigVerify: is `psig` signer i's partial signature?"""
    if len(pubnonces) != len(pubkeys):
        raise MusigError("The `pubnonces` and `pubkeys` arrays must have the same length.")
    if len(tweaks) != len(is_xonly):
        raise MusigError("The `tweaks` and `is_xonly` arrays must have the same length.")
    if not 0 <= i < len(pubkeys):
        raise MusigError(f"signer index {i} is not among the {len(pubkeys)} signers")
    session = SessionContext(nonce_agg(pubnonces), pubkeys, tweaks, is_xonly, msg)
    return partial_sig_verify_internal(psig, pubnonces[i], pubkeys[i], session)


def partial_sig_agg(psigs: Sequence[bytes], session: SessionContext) -> bytes:
    """The 64-byte BIP340 signature for the (tweaked) aggregate key. Verify each partial
    signature first: a sum of unverified ones may be no signature at all."""
    s = 0
    for i, psig in enumerate(psigs):
        s_i = _int(psig)
        if len(psig) != 32 or s_i >= N:
            raise InvalidContribution(i, "psig")
        s = (s + s_i) % N
    s = (s + session.e * session.g * session.keyagg.tacc) % N
    return _xbytes(session.R) + _bytes32(s)


def deterministic_nonce(sk: bytes, aggothernonce: bytes, pubkeys: Sequence[bytes],
                        tweaks: Sequence[bytes], is_xonly: Sequence[bool], msg: bytes,
                        rand: bytes | None = None) -> tuple[SecretNonce, bytes]:
    """BIP327 DeterministicSign's nonce: (secret nonce, public nonce), a function of the key,
    the other nonces' aggregate, the aggregate key and the message alone. So the last signer
    may publish its public nonce first and derive the same secret nonce again to sign later
    (the same inputs give the same partial signature: no nonce is ever reused)."""
    if len(sk) != 32:
        raise MusigError("secret key value is out of range.")
    sk_ = sk if rand is None else bytes(
        a ^ b for a, b in zip(sk, tagged_hash("MuSig/aux", rand), strict=True))
    aggpk = key_agg_and_tweak(pubkeys, tweaks, is_xonly).xonly_pk()
    ks = [_int(tagged_hash("MuSig/deterministic/nonce", sk_ + aggothernonce + aggpk
                            + len(msg).to_bytes(8, "big") + msg + i.to_bytes(1, "big"))) % N
          for i in (0, 1)]
    assert 0 not in ks, "a zero nonce happens with negligible probability"
    pubnonce = _cbytes(_gmul_nonzero(ks[0])) + _cbytes(_gmul_nonzero(ks[1]))
    return SecretNonce(ks[0], ks[1], individual_pk(sk)), pubnonce


def deterministic_sign(sk: bytes, aggothernonce: bytes, pubkeys: Sequence[bytes],
                       tweaks: Sequence[bytes], is_xonly: Sequence[bool], msg: bytes,
                       rand: bytes | None = None) -> tuple[bytes, bytes]:
    """BIP327's DeterministicSign for the last signer, who has every other nonce already
    (their aggregate): (public nonce, partial signature), with no secret nonce kept."""
    secnonce, pubnonce = deterministic_nonce(sk, aggothernonce, pubkeys, tweaks, is_xonly,
                                             msg, rand)
    try:
        aggnonce = nonce_agg([pubnonce, aggothernonce])
    except InvalidContribution:
        raise InvalidContribution(None, "aggothernonce") from None
    return pubnonce, sign(secnonce, sk, SessionContext(aggnonce, pubkeys, tweaks, is_xonly, msg))

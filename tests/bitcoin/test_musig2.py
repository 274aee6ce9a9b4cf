"""MuSig2 (BIP327) against every valid and error case of BIP327's own vectors, the single use
of secret nonces, and a Taproot 2-of-2 (client, server) whose aggregate is a BIP340 signature
that coincurve (libsecp256k1) verifies for the tweaked output key."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import coincurve
import pytest

from bitcoind_paychan.bitcoin import musig2
from bitcoind_paychan.bitcoin.keys import CURVE_ORDER
from bitcoind_paychan.bitcoin.musig2 import (
    SecretNonce,
    SessionContext,
    deterministic_nonce,
    deterministic_sign,
    individual_pk,
    key_agg,
    key_agg_and_tweak,
    key_sort,
    nonce_agg,
    nonce_gen,
    partial_sig_agg,
    partial_sig_verify,
    partial_sig_verify_internal,
    sign,
    taproot_tweak,
)
from bitcoind_paychan.errors import InvalidContribution, MusigError, NonceReused, PaychanError

DATA = Path(__file__).parent / "data" / "bip327"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}_vectors.json").read_text())
    return data


def _hex(items: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in items]


def _secnonce(raw: bytes) -> SecretNonce:
    """A vector's 97-byte secnonce (k1 || k2 || pk) as a fresh, single-use SecretNonce."""
    return SecretNonce(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"),
                       raw[64:])


def _expect_error(error: dict[str, Any], action: Callable[[], object]) -> None:
    """BIP327's error check: an invalid contribution names the signer (and what it sent); a
    value error carries the BIP's message (ours adds no other class for it)."""
    if error["type"] == "invalid_contribution":
        with pytest.raises(InvalidContribution) as contribution:
            action()
        assert contribution.value.signer == error["signer"]
        if "contrib" in error:
            assert contribution.value.contrib == error["contrib"]
    else:
        assert error["type"] == "value"
        with pytest.raises(MusigError) as value:
            action()
        assert type(value.value) is MusigError
        assert error["message"] in str(value.value)


def _cases(name: str, key: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = _load(name)[key]
    assert cases, f"{name}: {key} holds no case"
    return cases


# -- key_sort, key_agg ----------------------------------------------------------------------

def test_key_sort_vectors() -> None:
    data = _load("key_sort")
    assert key_sort(_hex(data["pubkeys"])) == _hex(data["sorted_pubkeys"])


KEY_AGG = _load("key_agg")


@pytest.mark.parametrize("case", _cases("key_agg", "valid_test_cases"))
def test_key_agg_valid(case: dict[str, Any]) -> None:
    keys = _hex(KEY_AGG["pubkeys"])
    ctx = key_agg([keys[i] for i in case["key_indices"]])
    assert musig2.get_xonly_pk(ctx) == bytes.fromhex(case["expected"])


@pytest.mark.parametrize("case", _cases("key_agg", "error_test_cases"))
def test_key_agg_errors(case: dict[str, Any]) -> None:
    keys, tweaks = _hex(KEY_AGG["pubkeys"]), _hex(KEY_AGG["tweaks"])
    _expect_error(case["error"], lambda: key_agg_and_tweak(
        [keys[i] for i in case["key_indices"]], [tweaks[i] for i in case["tweak_indices"]],
        case["is_xonly"]))


# -- nonce_gen, nonce_agg -------------------------------------------------------------------

@pytest.mark.parametrize("case", _cases("nonce_gen", "test_cases"))
def test_nonce_gen_vectors(case: dict[str, Any]) -> None:
    def maybe(key: str) -> bytes | None:
        return None if case[key] is None else bytes.fromhex(case[key])

    pk = bytes.fromhex(case["pk"])
    k1, k2, pubnonce = musig2._nonce_gen_internal(
        bytes.fromhex(case["rand_"]), maybe("sk"), pk, maybe("aggpk"), maybe("msg"),
        maybe("extra_in"))
    assert k1.to_bytes(32, "big") + k2.to_bytes(32, "big") + pk == bytes.fromhex(
        case["expected_secnonce"])
    assert pubnonce == bytes.fromhex(case["expected_pubnonce"])


def test_nonce_gen_draws_fresh_randomness_every_time() -> None:
    sk = bytes(31) + b"\x07"
    pk = individual_pk(sk)
    (first, pub1), (_, pub2) = nonce_gen(sk, pk), nonce_gen(sk, pk)
    assert pub1 != pub2 and len(pub1) == 66 and first.pk == pk and not first.used
    with pytest.raises(MusigError):
        nonce_gen(sk[:31], pk)
    with pytest.raises(MusigError):
        nonce_gen(sk, pk, aggpk=bytes(33))


NONCE_AGG = _load("nonce_agg")


@pytest.mark.parametrize("case", _cases("nonce_agg", "valid_test_cases"))
def test_nonce_agg_valid(case: dict[str, Any]) -> None:
    pnonces = _hex(NONCE_AGG["pnonces"])
    aggnonce = nonce_agg([pnonces[i] for i in case["pnonce_indices"]])
    assert aggnonce == bytes.fromhex(case["expected"])


@pytest.mark.parametrize("case", _cases("nonce_agg", "error_test_cases"))
def test_nonce_agg_errors(case: dict[str, Any]) -> None:
    pnonces = _hex(NONCE_AGG["pnonces"])
    _expect_error(case["error"], lambda: nonce_agg([pnonces[i] for i in case["pnonce_indices"]]))


# -- sign and verify ------------------------------------------------------------------------

SV = _load("sign_verify")
SV_SK = bytes.fromhex(SV["sk"])
SV_KEYS, SV_NONCES, SV_AGGNONCES, SV_MSGS = (
    _hex(SV["pubkeys"]), _hex(SV["pnonces"]), _hex(SV["aggnonces"]), _hex(SV["msgs"]))


def test_sign_verify_vectors_are_consistent() -> None:
    """The vectors' own premises: sk's key and nonce are at index 0; aggnonces 0 and 1 are the
    aggregates of nonces 0-2 and of 0 and 3 (both halves infinity)."""
    assert individual_pk(SV_SK) == SV_KEYS[0]
    secnonce = bytes.fromhex(SV["secnonces"][0])
    _, _, pubnonce = musig2._nonce_gen_internal(bytes(32), None, SV_KEYS[0], None, None, None)
    assert pubnonce != SV_NONCES[0]  # a real nonce_gen, so the next check is not vacuous
    k1, k2 = secnonce[:32], secnonce[32:64]
    assert (individual_pk(k1) + individual_pk(k2)) == SV_NONCES[0]
    assert nonce_agg(SV_NONCES[:3]) == SV_AGGNONCES[0]
    assert nonce_agg([SV_NONCES[0], SV_NONCES[3]]) == SV_AGGNONCES[1] == bytes(66)


@pytest.mark.parametrize("case", _cases("sign_verify", "valid_test_cases"))
def test_sign_valid(case: dict[str, Any]) -> None:
    keys = [SV_KEYS[i] for i in case["key_indices"]]
    pubnonces = [SV_NONCES[i] for i in case["nonce_indices"]]
    aggnonce, msg = SV_AGGNONCES[case["aggnonce_index"]], SV_MSGS[case["msg_index"]]
    assert nonce_agg(pubnonces) == aggnonce
    session = SessionContext(aggnonce, keys, [], [], msg)
    expected = bytes.fromhex(case["expected"])
    assert sign(_secnonce(bytes.fromhex(SV["secnonces"][0])), SV_SK, session) == expected
    assert partial_sig_verify(expected, pubnonces, keys, [], [], msg, case["signer_index"])


@pytest.mark.parametrize("case", _cases("sign_verify", "sign_error_test_cases"))
def test_sign_errors(case: dict[str, Any]) -> None:
    keys = [SV_KEYS[i] for i in case["key_indices"]]
    secnonce = _secnonce(bytes.fromhex(SV["secnonces"][case["secnonce_index"]]))
    _expect_error(case["error"], lambda: sign(secnonce, SV_SK, SessionContext(
        SV_AGGNONCES[case["aggnonce_index"]], keys, [], [], SV_MSGS[case["msg_index"]])))


@pytest.mark.parametrize("case", _cases("sign_verify", "verify_fail_test_cases"))
def test_verify_fails(case: dict[str, Any]) -> None:
    assert not partial_sig_verify(
        bytes.fromhex(case["sig"]), [SV_NONCES[i] for i in case["nonce_indices"]],
        [SV_KEYS[i] for i in case["key_indices"]], [], [], SV_MSGS[case["msg_index"]],
        case["signer_index"])


def test_verify_refuses_a_signer_index_out_of_range() -> None:
    with pytest.raises(MusigError, match="not among the 3 signers"):
        partial_sig_verify(bytes(32), SV_NONCES[:3], SV_KEYS[:3], [], [], SV_MSGS[0], 3)


@pytest.mark.parametrize("case", _cases("sign_verify", "verify_error_test_cases"))
def test_verify_errors(case: dict[str, Any]) -> None:
    _expect_error(case["error"], lambda: partial_sig_verify(
        bytes.fromhex(case["sig"]), [SV_NONCES[i] for i in case["nonce_indices"]],
        [SV_KEYS[i] for i in case["key_indices"]], [], [], SV_MSGS[case["msg_index"]],
        case["signer_index"]))


# -- tweaks -----------------------------------------------------------------------------------

TW = _load("tweak")


@pytest.mark.parametrize("case", _cases("tweak", "valid_test_cases"))
def test_tweak_valid(case: dict[str, Any]) -> None:
    keys = [_hex(TW["pubkeys"])[i] for i in case["key_indices"]]
    pubnonces = [_hex(TW["pnonces"])[i] for i in case["nonce_indices"]]
    tweaks = [_hex(TW["tweaks"])[i] for i in case["tweak_indices"]]
    aggnonce, msg = bytes.fromhex(TW["aggnonce"]), bytes.fromhex(TW["msg"])
    assert nonce_agg(_hex(TW["pnonces"])[:3]) == aggnonce
    session = SessionContext(aggnonce, keys, tweaks, case["is_xonly"], msg)
    expected = bytes.fromhex(case["expected"])
    assert sign(_secnonce(bytes.fromhex(TW["secnonce"])), bytes.fromhex(TW["sk"]),
                session) == expected
    assert partial_sig_verify(expected, pubnonces, keys, tweaks, case["is_xonly"], msg,
                              case["signer_index"])


@pytest.mark.parametrize("case", _cases("tweak", "error_test_cases"))
def test_tweak_errors(case: dict[str, Any]) -> None:
    keys = [_hex(TW["pubkeys"])[i] for i in case["key_indices"]]
    tweaks = [_hex(TW["tweaks"])[i] for i in case["tweak_indices"]]
    secnonce = _secnonce(bytes.fromhex(TW["secnonce"]))
    _expect_error(case["error"], lambda: sign(secnonce, bytes.fromhex(TW["sk"]), SessionContext(
        bytes.fromhex(TW["aggnonce"]), keys, tweaks, case["is_xonly"],
        bytes.fromhex(TW["msg"]))))


# -- deterministic signing --------------------------------------------------------------------

DS = _load("det_sign")


def _det_sign(case: dict[str, Any]) -> tuple[bytes, bytes]:
    return deterministic_sign(
        bytes.fromhex(DS["sk"]), bytes.fromhex(case["aggothernonce"]),
        [_hex(DS["pubkeys"])[i] for i in case["key_indices"]], _hex(case["tweaks"]),
        case["is_xonly"], _hex(DS["msgs"])[case["msg_index"]],
        None if case["rand"] is None else bytes.fromhex(case["rand"]))


@pytest.mark.parametrize("case", _cases("det_sign", "valid_test_cases"))
def test_det_sign_valid(case: dict[str, Any]) -> None:
    pubnonce, psig = _det_sign(case)
    assert [pubnonce, psig] == _hex(case["expected"])
    keys = [_hex(DS["pubkeys"])[i] for i in case["key_indices"]]
    session = SessionContext(nonce_agg([bytes.fromhex(case["aggothernonce"]), pubnonce]), keys,
                             _hex(case["tweaks"]), case["is_xonly"],
                             _hex(DS["msgs"])[case["msg_index"]])
    assert partial_sig_verify_internal(psig, pubnonce, keys[case["signer_index"]], session)


@pytest.mark.parametrize("case", _cases("det_sign", "valid_test_cases"))
def test_det_nonce_is_det_signs_and_signs_the_same_again(case: dict[str, Any]) -> None:
    """The nonce alone (what the last signer publishes first), derived twice, signs to
    DeterministicSign's vector each time: each derivation is a fresh single-use nonce."""
    keys = [_hex(DS["pubkeys"])[i] for i in case["key_indices"]]
    args = (bytes.fromhex(DS["sk"]), bytes.fromhex(case["aggothernonce"]), keys,
            _hex(case["tweaks"]), case["is_xonly"], _hex(DS["msgs"])[case["msg_index"]],
            None if case["rand"] is None else bytes.fromhex(case["rand"]))
    expected_nonce, expected_psig = _hex(case["expected"])
    session = SessionContext(nonce_agg([bytes.fromhex(case["aggothernonce"]), expected_nonce]),
                             keys, _hex(case["tweaks"]), case["is_xonly"],
                             _hex(DS["msgs"])[case["msg_index"]])
    for _ in range(2):
        secnonce, pubnonce = deterministic_nonce(*args)
        assert pubnonce == expected_nonce
        assert sign(secnonce, bytes.fromhex(DS["sk"]), session) == expected_psig


@pytest.mark.parametrize("case", _cases("det_sign", "error_test_cases"))
def test_det_sign_errors(case: dict[str, Any]) -> None:
    _expect_error(case["error"], lambda: _det_sign(case))


# -- aggregation ----------------------------------------------------------------------------

SA = _load("sig_agg")


def _sig_agg_session(case: dict[str, Any], aggnonce: bytes) -> SessionContext:
    return SessionContext(aggnonce, [_hex(SA["pubkeys"])[i] for i in case["key_indices"]],
                          [_hex(SA["tweaks"])[i] for i in case["tweak_indices"]],
                          case["is_xonly"], bytes.fromhex(SA["msg"]))


@pytest.mark.parametrize("case", _cases("sig_agg", "valid_test_cases"))
def test_sig_agg_valid(case: dict[str, Any]) -> None:
    aggnonce = bytes.fromhex(case["aggnonce"])
    assert nonce_agg([_hex(SA["pnonces"])[i] for i in case["nonce_indices"]]) == aggnonce
    session = _sig_agg_session(case, aggnonce)
    sig = partial_sig_agg([_hex(SA["psigs"])[i] for i in case["psig_indices"]], session)
    assert sig == bytes.fromhex(case["expected"])
    output_key = coincurve.PublicKeyXOnly(session.keyagg.xonly_pk())
    assert output_key.verify(sig, bytes.fromhex(SA["msg"]))


@pytest.mark.parametrize("case", _cases("sig_agg", "error_test_cases"))
def test_sig_agg_errors(case: dict[str, Any]) -> None:
    session = _sig_agg_session(
        case, nonce_agg([_hex(SA["pnonces"])[i] for i in case["nonce_indices"]]))
    _expect_error(case["error"], lambda: partial_sig_agg(
        [_hex(SA["psigs"])[i] for i in case["psig_indices"]], session))


# -- secret nonces sign once ----------------------------------------------------------------

def _two_signers(seed: int) -> tuple[list[bytes], list[bytes]]:
    """A client and a server secret key, reproducible from `seed`, and their sorted keys."""
    sks = [hashlib.sha256(f"{role} {seed}".encode()).digest() for role in ("client", "server")]
    return sks, key_sort([individual_pk(sk) for sk in sks])


def test_a_secret_nonce_signs_once() -> None:
    sks, keys = _two_signers(0)
    msg = bytes(32)
    secnonces, pubnonces = zip(*(nonce_gen(sk, individual_pk(sk), None, msg) for sk in sks),
                               strict=True)
    session = SessionContext(nonce_agg(pubnonces), keys, [], [], msg)
    sign(secnonces[0], sks[0], session)
    assert secnonces[0].used
    with pytest.raises(NonceReused, match="new session") as reused:
        sign(secnonces[0], sks[0], session)
    assert isinstance(reused.value, PaychanError)
    # a failed attempt (the wrong secret key) also uses the nonce up: no second try with it
    with pytest.raises(MusigError, match="does not match"):
        sign(secnonces[1], sks[0], session)
    with pytest.raises(NonceReused):
        sign(secnonces[1], sks[1], session)
    discarded, _ = nonce_gen(sks[0], individual_pk(sks[0]))
    discarded.discard()
    with pytest.raises(NonceReused):
        sign(discarded, sks[0], session)


def test_a_secret_nonce_cannot_be_stored_or_copied() -> None:
    secnonce, _ = nonce_gen(None, individual_pk(bytes(31) + b"\x01"))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="never stored"):
            pickle.dumps(secnonce, protocol)
    for duplicate in (copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="never stored"):
            duplicate(secnonce)
    assert "k" not in repr(secnonce).replace("pk=", "")


def test_two_threads_sharing_a_nonce_get_one_signature() -> None:
    """Both threads wait at a barrier, then sign with one nonce: whatever the interleaving,
    exactly one gets a partial signature and the other NonceReused."""
    sks, keys = _two_signers(1)
    secnonce, pubnonce = nonce_gen(sks[0], individual_pk(sks[0]))
    _, other = nonce_gen(sks[1], individual_pk(sks[1]))
    session = SessionContext(nonce_agg([pubnonce, other]), keys, [], [], b"m")
    barrier = threading.Barrier(2)

    def attempt() -> bytes | NonceReused:
        barrier.wait()
        try:
            return sign(secnonce, sks[0], session)
        except NonceReused as exc:
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [future.result() for future in [pool.submit(attempt) for _ in range(2)]]
    assert sorted(type(r).__name__ for r in results) == ["NonceReused", "bytes"]


# -- the version-4 contract's cooperative close: a Taproot 2-of-2 ---------------------------

def test_taproot_tweak_matches_bip341() -> None:
    """BIP341's wallet-test-vectors.json (scriptPubKey 0 and 1): TapTweak with and without a
    script tree."""
    assert taproot_tweak(bytes.fromhex(
        "d6889cb081036e0faefa3a35157ad71086b123b2b144b649798b494c300a961d")).hex() == (
        "b86e7be8f39bab32a6f2c0443abbc210f0edac0e2c53d501b36b64437d9c6c70")
    assert taproot_tweak(
        bytes.fromhex("187791b6f712a8ea41c8ecdd0ee77fab3e85263b37e1ec18a3651926b3a6cf27"),
        bytes.fromhex("5b75adecf53548f3ec6ad7d78383bf84cc57b55a3127c72b9a2481752dd88b21"),
    ).hex() == "cbd8679ba636c1110ea247542cfbd964131a6be84f873f7f3b62a777528ed001"


@pytest.mark.parametrize("deterministic_server", [False, True])
def test_client_server_key_path_signature_verifies_for_the_output_key(
        deterministic_server: bool) -> None:
    """Client and server aggregate their keys, tweak by TapTweak(internal key, script root),
    each sign the sighash, check the other's partial signature, and the aggregate verifies
    under libsecp256k1's BIP340 verify for the output key; a bad partial signature is
    caught. Several seeds cover even and odd internal and output keys."""
    parities: set[tuple[bool, bool]] = set()
    for seed in range(12):
        (client_sk, server_sk), keys = _two_signers(seed)
        internal = key_agg(keys)
        root = hashlib.sha256(f"script tree {seed}".encode()).digest()
        tweak = taproot_tweak(internal.xonly_pk(), root)
        output = key_agg_and_tweak(keys, [tweak], [True])
        expected = coincurve.PublicKeyXOnly(internal.xonly_pk())
        expected.tweak_add(tweak)  # libsecp256k1's own BIP341 tweak of the internal key
        assert output.xonly_pk() == expected.format()
        parities.add((internal.plain_pk()[0] == 2, output.plain_pk()[0] == 2))

        sighash = hashlib.sha256(f"sighash {seed}".encode()).digest()
        client_pk, server_pk = individual_pk(client_sk), individual_pk(server_sk)
        client_nonce, client_pub = nonce_gen(client_sk, client_pk, output.xonly_pk(), sighash)
        if deterministic_server:
            server_pub, server_psig = deterministic_sign(
                server_sk, nonce_agg([client_pub]), keys, [tweak], [True], sighash)
        else:
            server_nonce, server_pub = nonce_gen(server_sk, server_pk, None, None,
                                                 seed.to_bytes(4, "big"))
        session = SessionContext(nonce_agg([client_pub, server_pub]), keys, [tweak], [True],
                                 sighash)
        if not deterministic_server:
            server_psig = sign(server_nonce, server_sk, session)
        client_psig = sign(client_nonce, client_sk, session)
        assert partial_sig_verify_internal(client_psig, client_pub, client_pk, session)
        assert partial_sig_verify_internal(server_psig, server_pub, server_pk, session)
        forged = ((int.from_bytes(client_psig, "big") + 1) % CURVE_ORDER).to_bytes(32, "big")
        assert not partial_sig_verify_internal(forged, client_pub, client_pk, session)
        assert not partial_sig_verify_internal(client_psig, server_pub, server_pk, session)

        signature = partial_sig_agg([client_psig, server_psig], session)
        key = coincurve.PublicKeyXOnly(output.xonly_pk())
        assert key.verify(signature, sighash)
        assert not key.verify(signature, bytes(32))
        assert not coincurve.PublicKeyXOnly(internal.xonly_pk()).verify(signature, sighash)
        assert not key.verify(partial_sig_agg([forged, server_psig], session), sighash)
    assert len(parities) == 4, parities

"""The three contract kinds: scripts, payments, settlements, refunds and their checks."""

from __future__ import annotations

import dataclasses

import pytest

from bitcoind_paychan.bitcoin.hashes import hash160, sha256
from bitcoind_paychan.bitcoin.keys import CURVE_ORDER, PrivateKey, split_sig_hashtype
from bitcoind_paychan.bitcoin.script import cltv_channel_script, iter_script
from bitcoind_paychan.bitcoin.sighash import (
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
)
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import (
    DUST,
    FINAL,
    NON_FINAL,
    Branch,
    Contract,
    check_refund_request,
    contract_from_tx,
    locking_script,
    output_script,
    payment_hashtype,
    round_change,
)
from bitcoind_paychan.channel.kinds.v1_multisig import BareMultisig
from bitcoind_paychan.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
)

CLIENT = PrivateKey(sha256(b"test client key"))
SERVER = PrivateKey(sha256(b"test server key"))
OTHER = PrivateKey(sha256(b"someone else"))
EXPIRY = 1_700_000_000
VALUE = 1_000_000
OUTPOINT = OutPoint(sha256(b"contract tx"), 0)
PAYOUT = b"\x00\x14" + bytes(range(20))
FEE_RATE = 2_000  # sat/kvB
VERSIONS = [1, 2, 3]
SINGLE_ACP = SIGHASH_SINGLE | SIGHASH_ANYONECANPAY
NONE_ACP = SIGHASH_NONE | SIGHASH_ANYONECANPAY


def make_contract(version: int, value: int = VALUE, expiry: int = EXPIRY) -> Contract:
    return Contract(version, CLIENT.pub.data, SERVER.pub.data, expiry, OUTPOINT, value)


def sign(key: PrivateKey, contract: Contract, tx: Transaction, hashtype: int) -> bytes:
    """DER + hashtype of `key` over input 0 of `tx` with any hashtype."""
    return key.sign(contract.sighash(tx, hashtype)) + bytes((hashtype,))


def high_s(signature: bytes) -> bytes:
    """The same signature (DER + hashtype) with S replaced by N - S: valid ECDSA, high S."""
    der, hashtype = split_sig_hashtype(signature)
    len_r = der[3]
    r = der[4 : 4 + len_r]
    s = int.from_bytes(der[6 + len_r :], "big")
    s_high = CURVE_ORDER - s
    s_bytes = s_high.to_bytes((s_high.bit_length() + 7) // 8, "big")
    if s_bytes[0] & 0x80:
        s_bytes = b"\x00" + s_bytes
    body = b"\x02" + bytes((len(r),)) + r + b"\x02" + bytes((len(s_bytes),)) + s_bytes
    return b"\x30" + bytes((len(body),)) + body + bytes((hashtype,))


def script_pushes(script_sig: bytes) -> list[tuple[int, bytes | None]]:
    return list(iter_script(script_sig))


def spend_sigs(contract: Contract, tx: Transaction) -> tuple[bytes, bytes]:
    """(client sig, server sig) from a cooperative spend of the contract."""
    if contract.version == 3:
        witness = tx.inputs[0].witness
        return witness[0], witness[1]
    items = script_pushes(tx.inputs[0].script_sig)
    first = 1 if contract.version == 1 else 0
    client, server = items[first][1], items[first + 1][1]
    assert client is not None and server is not None
    return client, server


def direct_push(data: bytes) -> bytes:
    """A push as the spends must encode it (lengths used here are 1..255 bytes)."""
    assert 0 < len(data) <= 0xFF
    return (bytes((len(data),)) if len(data) < 0x4C else b"\x4c" + bytes((len(data),))) + data


# -- scripts -----------------------------------------------------------------------------------


def test_v1_script_is_bare_2of2_client_first() -> None:
    contract = make_contract(1)
    expected = (b"\x52\x21" + CLIENT.pub.data + b"\x21" + SERVER.pub.data + b"\x52\xae")
    assert contract.script == expected
    assert contract.script_pubkey == expected
    assert output_script(1, CLIENT.pub.data, SERVER.pub.data, EXPIRY) == expected


def test_cltv_script_layout() -> None:
    script = cltv_channel_script(SERVER.pub.data, CLIENT.pub.data, EXPIRY)
    # EXPIRY = 0x6553F100: a 4-byte minimal script number, little-endian.
    expected = (b"\x63\x21" + SERVER.pub.data + b"\xad\x67" + b"\x04\x00\xf1\x53\x65"
                + b"\xb1\x75\x68\x21" + CLIENT.pub.data + b"\xac")
    assert script == expected


def test_v2_script_pubkey_is_p2sh_of_cltv_script() -> None:
    contract = make_contract(2)
    redeem = cltv_channel_script(SERVER.pub.data, CLIENT.pub.data, EXPIRY)
    assert contract.script == redeem
    assert contract.script_pubkey == b"\xa9\x14" + hash160(redeem) + b"\x87"


def test_v3_script_pubkey_is_p2wsh_of_cltv_script() -> None:
    contract = make_contract(3)
    witness_script = cltv_channel_script(SERVER.pub.data, CLIENT.pub.data, EXPIRY)
    assert contract.script == witness_script
    assert contract.script_pubkey == b"\x00\x20" + sha256(witness_script)


@pytest.mark.parametrize("version", [2, 3])
def test_cltv_script_pubkey_depends_on_expiry_and_keys(version: int) -> None:
    base = output_script(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY)
    assert output_script(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY + 1) != base
    assert output_script(version, SERVER.pub.data, CLIENT.pub.data, EXPIRY) != base
    assert output_script(version, CLIENT.pub.data, OTHER.pub.data, EXPIRY) != base


def test_change_script_is_p2pkh_for_v1_v2_and_p2wpkh_for_v3() -> None:
    key_hash = hash160(CLIENT.pub.data)
    p2pkh = b"\x76\xa9\x14" + key_hash + b"\x88\xac"
    assert make_contract(1).change_script == p2pkh
    assert make_contract(2).change_script == p2pkh
    assert make_contract(3).change_script == b"\x00\x14" + key_hash


@pytest.mark.parametrize("version", [0, 5])
def test_unknown_version_has_no_script(version: int) -> None:
    with pytest.raises(LocalProtocolError):
        locking_script(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY)
    with pytest.raises(LocalProtocolError):
        output_script(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY)


# -- spends ------------------------------------------------------------------------------------


CSIG = bytes(range(1, 72))
SSIG = bytes(range(100, 172))


def test_v1_cooperative_script_sig() -> None:
    contract = make_contract(1)
    spent = contract.with_spend(contract.payment_tx(5000), [CSIG, SSIG], Branch.COOPERATIVE)
    assert spent.inputs[0].script_sig == b"\x00" + direct_push(CSIG) + direct_push(SSIG)
    assert spent.inputs[0].witness == ()


def test_v2_cooperative_script_sig() -> None:
    contract = make_contract(2)
    spent = contract.with_spend(contract.payment_tx(5000), [CSIG, SSIG], Branch.COOPERATIVE)
    assert spent.inputs[0].script_sig == (direct_push(CSIG) + direct_push(SSIG) + b"\x51"
                                          + direct_push(contract.script))
    assert spent.inputs[0].witness == ()


def test_v2_refund_script_sig_pushes_a_zero_byte() -> None:
    contract = make_contract(2)
    spent = contract.with_spend(contract.refund_tx(1000), [CSIG], Branch.REFUND)
    assert spent.inputs[0].script_sig == (direct_push(CSIG) + b"\x01\x00"
                                          + direct_push(contract.script))


def test_v3_witnesses() -> None:
    contract = make_contract(3)
    coop = contract.with_spend(contract.payment_tx(5000), [CSIG, SSIG], Branch.COOPERATIVE)
    assert coop.inputs[0].witness == (CSIG, SSIG, b"\x01", contract.script)
    assert coop.inputs[0].script_sig == b""
    refund = contract.with_spend(contract.refund_tx(1000), [CSIG], Branch.REFUND)
    assert refund.inputs[0].witness == (CSIG, b"", contract.script)
    assert refund.inputs[0].script_sig == b""


# -- payments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("change", [VALUE - 1000, DUST, 0])
def test_payment_round_trip(version: int, change: int) -> None:
    contract = make_contract(version)
    signature = contract.sign_payment(CLIENT, change)
    assert signature[-1] == (SINGLE_ACP if change else NONE_ACP)
    contract.check_payment(change, signature)  # does not raise
    der, hashtype = split_sig_hashtype(signature)
    digest = contract.sighash(contract.payment_tx(change), hashtype)
    assert CLIENT.pub.verify(digest, der)


@pytest.mark.parametrize("version", VERSIONS)
def test_payment_tx_shape(version: int) -> None:
    contract = make_contract(version)
    tx = contract.payment_tx(12_345)
    assert tx.version == 1 and tx.locktime == 0
    assert len(tx.inputs) == 1
    assert tx.inputs[0].prevout == OUTPOINT
    assert tx.inputs[0].sequence == FINAL == 0xFFFFFFFF
    assert tx.inputs[0].script_sig == b"" and tx.inputs[0].witness == ()
    assert tx.outputs == (TxOut(12_345, contract.change_script),)
    exhausted = contract.payment_tx(0)
    assert exhausted.outputs == ()
    assert exhausted.inputs == tx.inputs


def test_payment_hashtype() -> None:
    assert payment_hashtype(1) == 0x83
    assert payment_hashtype(VALUE) == 0x83
    assert payment_hashtype(0) == 0x82


def test_v3_sighash_commits_to_the_amount() -> None:
    tx = make_contract(3).payment_tx(5000)
    for hashtype in (SINGLE_ACP, NONE_ACP, SIGHASH_ALL):
        assert make_contract(3).sighash(tx, hashtype) != make_contract(3, VALUE + 1).sighash(
            tx, hashtype)


@pytest.mark.parametrize("version", [1, 2])
def test_legacy_sighash_does_not_commit_to_the_amount(version: int) -> None:
    tx = make_contract(version).payment_tx(5000)
    for hashtype in (SINGLE_ACP, NONE_ACP, SIGHASH_ALL):
        assert make_contract(version).sighash(tx, hashtype) == make_contract(
            version, VALUE + 1).sighash(tx, hashtype)


@pytest.mark.parametrize("version", VERSIONS)
def test_sighash_depends_on_the_change(version: int) -> None:
    contract = make_contract(version)
    assert (contract.sighash(contract.payment_tx(5000), SINGLE_ACP)
            != contract.sighash(contract.payment_tx(5001), SINGLE_ACP))


def _bad_payments(contract: Contract) -> dict[str, tuple[int, bytes]]:
    change = VALUE - 10_000
    good = contract.sign_payment(CLIENT, change)
    der, hashtype = split_sig_hashtype(good)
    flipped = der[:-1] + bytes((der[-1] ^ 1,)) + bytes((hashtype,))
    return {
        "change above value": (VALUE + 1, contract.sign_payment(CLIENT, VALUE + 1)),
        "dust change": (DUST - 1, contract.sign_payment(CLIENT, DUST - 1)),
        "change of 1": (1, contract.sign_payment(CLIENT, 1)),
        "tampered signature": (change, flipped),
        "signature for other change": (change, contract.sign_payment(CLIENT, change + 1)),
        "wrong key": (change, contract.sign_payment(OTHER, change)),
        "server key": (change, contract.sign_payment(SERVER, change)),
        "SIGHASH_ALL": (change, sign(CLIENT, contract, contract.payment_tx(change),
                                     SIGHASH_ALL)),
        "NONE|ACP with change": (change, sign(CLIENT, contract, contract.payment_tx(change),
                                              NONE_ACP)),
        "SINGLE without ACP": (change, sign(CLIENT, contract, contract.payment_tx(change),
                                            SIGHASH_SINGLE)),
        "SINGLE|ACP with zero change": (0, sign(CLIENT, contract, contract.payment_tx(0),
                                                SINGLE_ACP)),
        "high S": (change, high_s(good)),
        "hashtype swapped": (change, der + bytes((SIGHASH_ALL,))),
        "not DER": (change, b"\x30\x02\x01\x01" + bytes((SINGLE_ACP,))),
    }


BAD_PAYMENT_CASES = list(_bad_payments(make_contract(1)))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", BAD_PAYMENT_CASES)
def test_check_payment_rejects(version: int, case: str) -> None:
    contract = make_contract(version)
    change, signature = _bad_payments(contract)[case]
    with pytest.raises(RemoteProtocolError) as caught:
        contract.check_payment(change, signature)
    assert caught.value.code is ErrorCode.BAD_TRANSACTION


def test_high_s_helper_makes_a_valid_but_high_signature() -> None:
    contract = make_contract(2)
    good = contract.sign_payment(CLIENT, 5000)
    bad = high_s(good)
    assert bad != good and high_s(bad) == good  # an involution: same (r, s) pair, mirrored


@pytest.mark.parametrize("version", VERSIONS)
def test_check_payment_rejects_an_empty_signature(version: int) -> None:
    # DecodeError, which the server machine answers with BAD_TRANSACTION.
    with pytest.raises(DecodeError):
        make_contract(version).check_payment(5000, b"")


@pytest.mark.parametrize("version", VERSIONS)
def test_payment_signature_is_bound_to_its_contract(version: int) -> None:
    contract = make_contract(version)
    signature = contract.sign_payment(CLIENT, 5000)
    other_outpoint = dataclasses.replace(contract, outpoint=OutPoint(OUTPOINT.txid, 1))
    with pytest.raises(RemoteProtocolError):
        other_outpoint.check_payment(5000, signature)
    other_expiry = make_contract(version, expiry=EXPIRY + 1)
    if version == 1:  # the bare 2-of-2 script does not name the expiry
        other_expiry.check_payment(5000, signature)
    else:
        with pytest.raises(RemoteProtocolError):
            other_expiry.check_payment(5000, signature)


# -- round_change / dust ---------------------------------------------------------------------


@pytest.mark.parametrize(("change", "rounded"), [
    (0, 0), (1, 0), (DUST - 1, 0), (DUST, DUST), (DUST + 1, DUST + 1), (VALUE, VALUE),
])
def test_round_change(change: int, rounded: int) -> None:
    assert DUST == 546
    assert round_change(change) == rounded


# -- settlement --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("change", [VALUE - 50_000, DUST, 0])
def test_settlement(version: int, change: int) -> None:
    contract = make_contract(version)
    client_sig = contract.sign_payment(CLIENT, change)
    tx = contract.settlement(change, client_sig, SERVER, PAYOUT, FEE_RATE)
    assert tx.version == 1 and tx.locktime == 0
    assert len(tx.inputs) == 1
    assert tx.inputs[0].prevout == OUTPOINT and tx.inputs[0].sequence == FINAL
    if change:
        assert len(tx.outputs) == 2
        assert tx.outputs[0] == TxOut(change, contract.change_script)
    else:
        assert len(tx.outputs) == 1
    payout = tx.outputs[-1]
    assert payout.script_pubkey == PAYOUT
    fee = VALUE - sum(o.value for o in tx.outputs)
    assert fee * 1000 >= FEE_RATE * tx.vsize  # never under the rate
    assert fee * 1000 <= FEE_RATE * (tx.vsize + 6) + 1000  # sized with worst-case sigs only
    assert payout.value == VALUE - change - fee
    # Both signatures are in place and valid for this very transaction.
    csig, ssig = spend_sigs(contract, tx)
    assert csig == client_sig
    der, hashtype = split_sig_hashtype(ssig)
    assert hashtype == SIGHASH_ALL
    assert SERVER.pub.verify(contract.sighash(tx, SIGHASH_ALL), der)
    cder, ctype = split_sig_hashtype(csig)
    assert CLIENT.pub.verify(contract.sighash(tx, ctype), cder)


@pytest.mark.parametrize("version", VERSIONS)
def test_settlement_fee_scales_with_rate(version: int) -> None:
    contract = make_contract(version)
    change = VALUE - 100_000
    sig = contract.sign_payment(CLIENT, change)
    low = contract.settlement(change, sig, SERVER, PAYOUT, 1_000)
    high = contract.settlement(change, sig, SERVER, PAYOUT, 10_000)
    assert high.outputs[1].value < low.outputs[1].value
    assert VALUE - sum(o.value for o in high.outputs) >= 10 * low.vsize


@pytest.mark.parametrize("version", VERSIONS)
def test_settlement_refused_when_share_cannot_cover_fee_and_dust(version: int) -> None:
    contract = make_contract(version)
    probe_change = VALUE - 100_000
    probe = contract.settlement(probe_change, contract.sign_payment(CLIENT, probe_change),
                                SERVER, PAYOUT, FEE_RATE)
    fee = VALUE - sum(o.value for o in probe.outputs)
    edge = VALUE - fee - DUST  # leaves the server exactly DUST after the fee
    ok = contract.settlement(edge, contract.sign_payment(CLIENT, edge), SERVER, PAYOUT,
                             FEE_RATE)
    assert ok.outputs[1].value == DUST
    over = edge + 1
    with pytest.raises(LocalProtocolError):
        contract.settlement(over, contract.sign_payment(CLIENT, over), SERVER, PAYOUT, FEE_RATE)
    with pytest.raises(LocalProtocolError):
        contract.settlement(VALUE - 1000, contract.sign_payment(CLIENT, VALUE - 1000), SERVER,
                            PAYOUT, 100_000)


# -- refunds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_refund_tx(version: int) -> None:
    contract = make_contract(version)
    tx = contract.refund_tx(1234)
    assert len(tx.inputs) == 1
    assert tx.inputs[0].prevout == OUTPOINT
    assert tx.inputs[0].sequence == NON_FINAL == 0xFFFFFFFE
    assert tx.locktime == EXPIRY
    assert tx.outputs == (TxOut(VALUE - 1234, contract.change_script),)
    assert contract.refund_tx(1234, locktime=EXPIRY + 99).locktime == EXPIRY + 99


@pytest.mark.parametrize("version", VERSIONS)
def test_refund_tx_refuses_a_fee_leaving_dust(version: int) -> None:
    contract = make_contract(version, value=10_000)
    assert contract.refund_tx(10_000 - DUST).outputs[0].value == DUST
    with pytest.raises(LocalProtocolError):
        contract.refund_tx(10_000 - DUST + 1)


@pytest.mark.parametrize("version", [2, 3])
def test_client_alone_refund_is_signed_for_all(version: int) -> None:
    contract = make_contract(version)
    refund = contract.refund_tx(contract.refund_fee(FEE_RATE))
    signed = contract.sign_refund(CLIENT, refund)
    sig = (signed.inputs[0].witness[0] if version == 3
           else script_pushes(signed.inputs[0].script_sig)[0][1])
    assert sig is not None
    der, hashtype = split_sig_hashtype(sig)
    assert hashtype == SIGHASH_ALL
    assert CLIENT.pub.verify(contract.sighash(signed, SIGHASH_ALL), der)
    fee = VALUE - signed.outputs[0].value
    assert fee * 1000 >= FEE_RATE * signed.vsize


def test_refund_fee() -> None:
    # Sized by the refund's worst-case size: v1 carries two signatures, v3 is discounted.
    assert make_contract(3).refund_fee(FEE_RATE) < make_contract(2).refund_fee(FEE_RATE)
    v1 = make_contract(1)
    signed = v1.with_spend(v1.refund_tx(0), [bytes(73)] * 2, Branch.COOPERATIVE)
    assert v1.refund_fee(FEE_RATE) == -(-FEE_RATE * signed.vsize // 1000)
    assert BareMultisig.presigned_refund_fee == 1000  # the refund exchanged at opening: bitcoinj
    assert make_contract(2).refund_fee(0) == 1


def test_v1_refund_needs_the_server_signature() -> None:
    contract = make_contract(1)
    with pytest.raises(LocalProtocolError):
        contract.sign_refund(CLIENT, contract.refund_tx(BareMultisig.presigned_refund_fee))
    with pytest.raises(LocalProtocolError, match="none is stored"):
        contract.refund(CLIENT, FEE_RATE, None)  # no refund signed at opening


def test_v1_refund_with_server_signature() -> None:
    contract = make_contract(1)
    refund = contract.refund_tx(BareMultisig.presigned_refund_fee)
    server_sig = contract.sign_refund_as_server(SERVER, refund)
    assert server_sig[-1] == NONE_ACP
    contract.check_server_refund_signature(refund, server_sig)  # does not raise
    signed = contract.sign_refund(CLIENT, refund, server_sig)
    items = script_pushes(signed.inputs[0].script_sig)
    assert items[0] == (0, b"")  # OP_0 for CHECKMULTISIG's extra pop
    assert items[2][1] == server_sig
    client_sig = items[1][1]
    assert client_sig is not None and client_sig[-1] == SIGHASH_ALL
    assert CLIENT.pub.verify(contract.sighash(signed, SIGHASH_ALL), client_sig[:-1])
    # NONE|ANYONECANPAY: the server's signature does not cover the outputs ...
    other_outputs = dataclasses.replace(refund, outputs=(TxOut(5, PAYOUT),))
    contract.check_server_refund_signature(other_outputs, server_sig)


def _tampered_refund_signatures(contract: Contract) -> dict[str, tuple[Transaction, bytes]]:
    refund = contract.refund_tx(BareMultisig.presigned_refund_fee)
    good = contract.sign_refund_as_server(SERVER, refund)
    der = good[:-1]
    return {
        "flipped byte": (refund, der[:-2] + bytes((der[-2] ^ 1, der[-1], NONE_ACP))),
        "hashtype ALL": (refund, der + bytes((SIGHASH_ALL,))),
        "signed ALL": (refund, sign(SERVER, contract, refund, SIGHASH_ALL)),
        "wrong key": (refund, contract.sign_refund_as_server(OTHER, refund)),
        "client key": (refund, contract.sign_refund_as_server(CLIENT, refund)),
        "other locktime": (dataclasses.replace(refund, locktime=EXPIRY + 1), good),
        "other sequence": (refund.with_input(0, TxIn(OUTPOINT, b"", 0)), good),
        "other outpoint": (refund.with_input(0, TxIn(OutPoint(OUTPOINT.txid, 1), b"",
                                                     NON_FINAL)), good),
        "high S": (refund, high_s(good)),
    }


@pytest.mark.parametrize("case", list(_tampered_refund_signatures(make_contract(1))))
def test_v1_tampered_refund_signature_fails(case: str) -> None:
    contract = make_contract(1)
    refund, signature = _tampered_refund_signatures(contract)[case]
    with pytest.raises(RemoteProtocolError) as caught:
        contract.check_server_refund_signature(refund, signature)
    assert caught.value.code is ErrorCode.BAD_TRANSACTION


# -- contract_from_tx --------------------------------------------------------------------------


def _funding(script_pubkey: bytes, value: int = VALUE) -> Transaction:
    return Transaction(2, (TxIn(OutPoint(sha256(b"coin"), 3), b"", 0xFFFFFFFD,
                                (bytes(71), bytes(33))),),
                       (TxOut(value, script_pubkey), TxOut(50_000, PAYOUT)), 0)


@pytest.mark.parametrize("version", VERSIONS)
def test_contract_from_tx(version: int) -> None:
    tx = _funding(output_script(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY))
    contract = contract_from_tx(version, tx, CLIENT.pub.data, SERVER.pub.data, EXPIRY)
    assert contract.outpoint == OutPoint(tx.txid, 0)
    assert contract.txid == tx.txid_hex
    assert contract.value == VALUE
    assert (contract.version, contract.expiry) == (version, EXPIRY)
    assert (contract.client_pub, contract.server_pub) == (CLIENT.pub.data, SERVER.pub.data)


@pytest.mark.parametrize("version", VERSIONS)
def test_contract_from_tx_rejects(version: int) -> None:
    good = output_script(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY)
    wrong = [
        *([output_script(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY + 1)]
          if version != 1 else []),  # v1's bare 2-of-2 does not name the expiry
        output_script(version, CLIENT.pub.data, OTHER.pub.data, EXPIRY),
        output_script(version, SERVER.pub.data, CLIENT.pub.data, EXPIRY),
        *(output_script(v, CLIENT.pub.data, SERVER.pub.data, EXPIRY)
          for v in VERSIONS if v != version),
    ]
    for script in wrong:
        assert script != good
        with pytest.raises(RemoteProtocolError) as caught:
            contract_from_tx(version, _funding(script), CLIENT.pub.data, SERVER.pub.data,
                             EXPIRY)
        assert caught.value.code is ErrorCode.BAD_TRANSACTION
    # Output 0 must be the channel; a channel output at index 1 does not count.
    swapped = Transaction(2, _funding(good).inputs, (TxOut(1, PAYOUT), TxOut(VALUE, good)), 0)
    no_inputs = Transaction(2, (), (TxOut(VALUE, good),), 0)
    no_outputs = Transaction(2, _funding(good).inputs, (), 0)
    for tx in (swapped, no_inputs, no_outputs):
        with pytest.raises(RemoteProtocolError):
            contract_from_tx(version, tx, CLIENT.pub.data, SERVER.pub.data, EXPIRY)


# -- check_refund_request ----------------------------------------------------------------------


def _request(
    inputs: int = 1, outputs: int = 1, index: int = 0, sequence: int = NON_FINAL,
    locktime: int = EXPIRY,
) -> Transaction:
    txins = tuple(TxIn(OutPoint(sha256(bytes((k,))), index), b"", sequence)
                  for k in range(inputs))
    txouts = tuple(TxOut(VALUE - 1000, PAYOUT) for _ in range(outputs))
    return Transaction(1, txins, txouts, locktime)


@pytest.mark.parametrize("refund", [
    _request(),
    _request(sequence=0),  # the 2013 rule
    _request(locktime=EXPIRY + 86_400),
])
def test_check_refund_request_accepts(refund: Transaction) -> None:
    check_refund_request(refund, EXPIRY)


def test_check_refund_request_accepts_heights() -> None:
    check_refund_request(_request(locktime=800_000), 800_000)


@pytest.mark.parametrize(("refund", "min_expiry"), [
    (_request(inputs=2), EXPIRY),
    (_request(inputs=0), EXPIRY),
    (_request(outputs=2), EXPIRY),
    (_request(outputs=0), EXPIRY),
    (_request(index=1), EXPIRY),
    (_request(sequence=FINAL), EXPIRY),
    (_request(locktime=EXPIRY - 1), EXPIRY),
    (_request(locktime=0), EXPIRY),
    (_request(locktime=799_999), 800_000),
    (_request(locktime=EXPIRY), 800_000),  # a unix time where the expiry is a height
], ids=["2 inputs", "0 inputs", "2 outputs", "0 outputs", "output 1", "final sequence",
        "locktime before expiry", "locktime 0", "height before expiry", "time vs height"])
def test_check_refund_request_rejects(refund: Transaction, min_expiry: int) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        check_refund_request(refund, min_expiry)
    assert caught.value.code is ErrorCode.BAD_TRANSACTION


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("change", [VALUE, VALUE - 1, 546, 0])
def test_payment_sighash_from_cached_parts_is_the_payment_tx_sighash(version: int,
                                                                     change: int) -> None:
    contract = make_contract(version)
    hashtype = SINGLE_ACP if change else NONE_ACP
    want = contract.sighash(contract.payment_tx(change), hashtype)
    assert contract.payment_sighash(change) == want
    assert contract.payment_sighash(change) == want  # again, from the cached parts

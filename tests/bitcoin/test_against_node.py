"""The bitcoin primitives against a real regtest bitcoind, not only against themselves.

Serialization and hashes must agree with the node's decoding; addresses with the wallet's and
decodescript's; and transactions signed by our sighash and key code must be accepted by the
node's mempool (and confirm), while tampered or high-S signatures are refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from bitcoind_paychan.bitcoin.address import address_to_script, script_to_address
from bitcoind_paychan.bitcoin.hashes import hash160, sha256
from bitcoind_paychan.bitcoin.keys import (
    CURVE_ORDER,
    PrivateKey,
    append_hashtype,
    is_low_s,
    split_sig_hashtype,
)
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.script import (
    cltv_channel_script,
    iter_script,
    multisig_2of2_script,
    p2pkh_script,
    p2sh_script,
    p2wpkh_script,
    p2wsh_script,
    push,
    push_int,
)
from bitcoind_paychan.bitcoin.sighash import (
    ONE,
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    bip143_sighash,
    legacy_sighash,
)
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.node.bitcoind import to_btc, to_sat
from regtest.node import RegtestNode, regtest_nodes

REGTEST = Network.REGTEST
ACP = SIGHASH_ANYONECANPAY
ALL, NONE, SINGLE = SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE
FEE = 10_000
COIN = 1_000_000
FINAL_BUT_LOCKTIME = 0xFFFFFFFE
HASHTYPES = [ALL, NONE, SINGLE, ALL | ACP, NONE | ACP, SINGLE | ACP]
NODE_HASHTYPE_NAMES = {
    ALL: "ALL",
    NONE: "NONE",
    SINGLE: "SINGLE",
    ALL | ACP: "ALL|ANYONECANPAY",
    NONE | ACP: "NONE|ANYONECANPAY",
    SINGLE | ACP: "SINGLE|ANYONECANPAY",
}


@pytest.fixture(scope="module")
def chain() -> Iterator[RegtestNode]:
    """One regtest node for the whole module, with several mature coinbases in its wallet."""
    with regtest_nodes(1) as (node,):
        node.mine(10)
        yield node


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coin:
    outpoint: OutPoint
    value: int
    script_pubkey: bytes


def fund(node: RegtestNode, *scripts: bytes, value: int = COIN) -> list[Coin]:
    """Pay `value` to each script in one wallet transaction and confirm it."""
    payees = {script_to_address(s, REGTEST): to_btc(value) for s in scripts}
    txid = node.pay_in_block(payees)  # mined whatever the mempool thinks of it (CI once saw
    vouts = node.rpc("getrawtransaction", txid, True)["vout"]  # a sendmany left out of both)
    index = {bytes.fromhex(v["scriptPubKey"]["hex"]): int(v["n"]) for v in vouts}
    return [Coin(OutPoint.from_hex(txid, index[s]), value, s) for s in scripts]


def spend(
    node: RegtestNode,
    coins: Sequence[Coin],
    n_outputs: int = 1,
    locktime: int = 0,
    sequences: Sequence[int] | None = None,
) -> Transaction:
    """An unsigned version-2 transaction spending `coins` to fresh wallet addresses."""
    seqs = sequences or [0xFFFFFFFF] * len(coins)
    inputs = tuple(TxIn(c.outpoint, sequence=s) for c, s in zip(coins, seqs, strict=True))
    each = (sum(c.value for c in coins) - FEE) // n_outputs
    outputs = tuple(
        TxOut(each, address_to_script(node.new_address(), REGTEST)) for _ in range(n_outputs)
    )
    return Transaction(2, inputs, outputs, locktime)


def legacy_sig(key: PrivateKey, tx: Transaction, i: int, script_code: bytes, ht: int) -> bytes:
    return append_hashtype(key.sign(legacy_sighash(tx, i, script_code, ht)), ht)


def segwit_sig(
    key: PrivateKey, tx: Transaction, i: int, script_code: bytes, amount: int, ht: int
) -> bytes:
    return append_hashtype(key.sign(bip143_sighash(tx, i, script_code, amount, ht)), ht)


def pushes(*items: bytes) -> bytes:
    return b"".join(push(item) for item in items)


def mempool_verdict(node: RegtestNode, tx: Transaction) -> dict[str, Any]:
    verdict: dict[str, Any] = node.rpc("testmempoolaccept", [tx.hex()])[0]
    assert verdict["txid"] == tx.txid_hex
    return verdict


def assert_accepted_and_confirms(node: RegtestNode, tx: Transaction) -> None:
    verdict = mempool_verdict(node, tx)
    assert verdict["allowed"], verdict.get("reject-reason")
    assert node.rpc("sendrawtransaction", tx.hex()) == tx.txid_hex
    block = node.mine(1)[0]
    confirmed = node.rpc("getrawtransaction", tx.txid_hex, True)
    assert confirmed["blockhash"] == block
    assert confirmed["confirmations"] == 1
    assert confirmed["hex"] == tx.hex()


def assert_rejected(node: RegtestNode, tx: Transaction, *reasons: str) -> str:
    verdict = mempool_verdict(node, tx)
    assert not verdict["allowed"]
    reason = str(verdict["reject-reason"])
    for expected in reasons:
        assert expected in reason
    return reason


def assert_same_as_node(tx: Transaction, raw: str, decoded: dict[str, Any]) -> None:
    """Our parse of `raw` re-serializes exactly and agrees with the node's decoding."""
    assert tx.hex() == raw
    assert tx.txid_hex == decoded["txid"]
    assert tx.wtxid[::-1].hex() == decoded["hash"]
    assert (tx.vsize, tx.weight, len(tx.serialize())) == (
        decoded["vsize"],
        decoded["weight"],
        decoded["size"],
    )
    assert (tx.version, tx.locktime) == (decoded["version"], decoded["locktime"])
    for txin, vin in zip(tx.inputs, decoded["vin"], strict=True):
        if "coinbase" in vin:
            assert txin.script_sig.hex() == vin["coinbase"]
        else:
            assert (txin.prevout.txid_hex, txin.prevout.index) == (vin["txid"], vin["vout"])
            assert txin.script_sig.hex() == vin["scriptSig"]["hex"]
        assert txin.sequence == vin["sequence"]
        assert [w.hex() for w in txin.witness] == vin.get("txinwitness", [])
    for n, (txout, vout) in enumerate(zip(tx.outputs, decoded["vout"], strict=True)):
        assert vout["n"] == n
        assert txout.value == to_sat(vout["value"])
        assert txout.script_pubkey.hex() == vout["scriptPubKey"]["hex"]


def high_s(der: bytes) -> bytes:
    """The same signature with S replaced by N - S (equally valid for plain ECDSA)."""
    len_r = der[3]
    r = der[4 : 4 + len_r]
    s = CURVE_ORDER - int.from_bytes(der[6 + len_r :], "big")
    s_bytes = s.to_bytes(33, "big").lstrip(b"\x00")
    if s_bytes[0] & 0x80:
        s_bytes = b"\x00" + s_bytes
    body = b"\x02" + bytes((len(r),)) + r + b"\x02" + bytes((len(s_bytes),)) + s_bytes
    return b"\x30" + bytes((len(body),)) + body


def cltv_expiry(node: RegtestNode) -> int:
    """A CLTV expiry (unix time) already behind the chain's median-time-past."""
    return int(node.rpc("getblockchaininfo")["mediantime"]) - 1000


# -- 1. serialization ------------------------------------------------------------------------


def test_wallet_transactions_parse_to_what_the_node_says(chain: RegtestNode) -> None:
    txids = [
        chain.wallet_rpc("sendtoaddress", chain.wallet_rpc("getnewaddress", "", kind), "1.25")
        for kind in ("legacy", "p2sh-segwit", "bech32", "bech32m")
    ]
    # Several inputs and outputs: more than two coinbases' worth to three addresses.
    many = {chain.wallet_rpc("getnewaddress"): "40" for _ in range(3)}
    txids.append(chain.wallet_rpc("sendmany", "", many))
    block = chain.mine(1)[0]
    coinbase = chain.rpc("getblock", block, 2)["tx"][0]
    seen = [chain.rpc("getrawtransaction", txid, True) for txid in txids] + [coinbase]
    assert len(seen[-2]["vin"]) >= 2
    for decoded in seen:
        tx = Transaction.from_hex(decoded["hex"])
        assert tx.has_witness
        assert_same_as_node(tx, decoded["hex"], decoded)


def test_node_signed_legacy_transaction_parses_without_witness(chain: RegtestNode) -> None:
    legacy = chain.wallet_rpc("getnewaddress", "", "legacy")
    txid = chain.wallet_rpc("sendtoaddress", legacy, "0.5")
    chain.mine(1)
    vout = next(
        v["n"]
        for v in chain.rpc("getrawtransaction", txid, True)["vout"]
        if v["scriptPubKey"].get("address") == legacy
    )
    unsigned = chain.rpc(
        "createrawtransaction",
        [{"txid": txid, "vout": vout}],
        [{chain.new_address(): "0.4999"}],
    )
    raw = chain.wallet_rpc("signrawtransactionwithwallet", unsigned)["hex"]
    tx = Transaction.from_hex(raw)
    assert not tx.has_witness
    assert tx.wtxid == tx.txid
    assert_same_as_node(tx, raw, chain.rpc("decoderawtransaction", raw))


@pytest.mark.parametrize("with_witness", [False, True], ids=["stripped", "witness"])
def test_our_transactions_decode_on_the_node(chain: RegtestNode, with_witness: bool) -> None:
    key = PrivateKey.generate()
    script = cltv_channel_script(key.pub.data, key.pub.data, 1_700_000_000)
    templates = [
        p2pkh_script(key.pub.hash160()),
        p2sh_script(hash160(script)),
        p2wpkh_script(key.pub.hash160()),
        p2wsh_script(sha256(script)),
        b"\x6a" + push(os.urandom(40)),  # OP_RETURN
    ]
    # 253 outputs: the output count needs a 3-byte CompactSize.
    outputs = tuple(TxOut(546 + 7 * k, templates[k % len(templates)]) for k in range(253))
    inputs = (
        TxIn(OutPoint(os.urandom(32), 3), push(os.urandom(71)), 0xFFFFFFFD),
        TxIn(OutPoint(os.urandom(32), 0x01020304), b"", 0),
    )
    tx = Transaction(2, inputs, outputs, 500_000_123)
    if with_witness:
        # An empty item, a 300-byte one (3-byte length prefix) and a script.
        tx = tx.with_witness(0, (b"", os.urandom(300), script))
    assert tx.has_witness is with_witness
    decoded = chain.rpc("decoderawtransaction", tx.hex())
    assert_same_as_node(Transaction.from_hex(tx.hex()), tx.hex(), decoded)
    assert [v["scriptPubKey"]["type"] for v in decoded["vout"][:5]] == [
        "pubkeyhash",
        "scripthash",
        "witness_v0_keyhash",
        "witness_v0_scripthash",
        "nulldata",
    ]


# -- 2. addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["legacy", "p2sh-segwit", "bech32", "bech32m"])
def test_wallet_addresses_round_trip(chain: RegtestNode, kind: str) -> None:
    for _ in range(3):
        address = chain.wallet_rpc("getnewaddress", "", kind)
        info = chain.wallet_rpc("getaddressinfo", address)
        script = address_to_script(address, REGTEST)
        assert script.hex() == info["scriptPubKey"]
        assert script_to_address(script, REGTEST) == address
        assert chain.rpc("validateaddress", address)["scriptPubKey"] == script.hex()


@pytest.mark.parametrize("which", ["cltv", "multisig"])
def test_script_hash_addresses_match_decodescript(chain: RegtestNode, which: str) -> None:
    a, b = PrivateKey.generate().pub.data, PrivateKey.generate().pub.data
    if which == "cltv":
        script = cltv_channel_script(a, b, cltv_expiry(chain))
    else:
        script = multisig_2of2_script(a, b)
    info = chain.rpc("decodescript", script.hex())
    assert info["type"] == ("multisig" if which == "multisig" else "nonstandard")
    p2wsh = p2wsh_script(sha256(script))
    assert info["p2sh"] == script_to_address(p2sh_script(hash160(script)), REGTEST)
    assert info["segwit"]["hex"] == p2wsh.hex()
    assert info["segwit"]["address"] == script_to_address(p2wsh, REGTEST)
    assert info["segwit"]["p2sh-segwit"] == script_to_address(p2sh_script(hash160(p2wsh)), REGTEST)
    # And the node's tokenization of our script has as many operations as ours.
    assert len(info["asm"].split()) == len(list(iter_script(script)))


def test_our_key_addresses_match_the_nodes_descriptors(chain: RegtestNode) -> None:
    key = PrivateKey.generate()
    canonical = chain.rpc("getdescriptorinfo", f"wpkh({key.to_wif(REGTEST)})")["descriptor"]
    assert canonical.startswith(f"wpkh({key.pub.data.hex()})#")
    for desc, script in [
        ("pkh", p2pkh_script(key.pub.hash160())),
        ("wpkh", p2wpkh_script(key.pub.hash160())),
        ("sh(wpkh", p2sh_script(hash160(p2wpkh_script(key.pub.hash160())))),
    ]:
        body = f"{desc}({key.pub.data.hex()})" + ")" * desc.count("(")
        checked = chain.rpc("getdescriptorinfo", body)["descriptor"]
        assert chain.rpc("deriveaddresses", checked) == [script_to_address(script, REGTEST)]
        info = chain.rpc("decodescript", script.hex())
        assert info["address"] == script_to_address(script, REGTEST)


# -- 3. our signatures, judged by the node ---------------------------------------------------


def test_p2pkh_and_p2wpkh_spends_confirm(chain: RegtestNode) -> None:
    key = PrivateKey.generate()
    keyhash = key.pub.hash160()
    legacy, segwit = fund(chain, p2pkh_script(keyhash), p2wpkh_script(keyhash))

    tx = spend(chain, [legacy])
    tx = tx.with_script_sig(
        0, pushes(legacy_sig(key, tx, 0, legacy.script_pubkey, ALL), key.pub.data)
    )
    assert not tx.has_witness
    assert_accepted_and_confirms(chain, tx)

    tx = spend(chain, [segwit])
    sig = segwit_sig(key, tx, 0, p2pkh_script(keyhash), segwit.value, ALL)
    tx = tx.with_witness(0, (sig, key.pub.data))
    assert_accepted_and_confirms(chain, tx)


@pytest.mark.parametrize(
    "client_ht", [SINGLE | ACP, NONE | ACP, ALL], ids=["single", "none", "all"]
)
@pytest.mark.parametrize("wrap", ["p2sh", "p2wsh"])
def test_cltv_channel_cooperative_close(chain: RegtestNode, wrap: str, client_ht: int) -> None:
    server, client = PrivateKey.generate(), PrivateKey.generate()
    script = cltv_channel_script(server.pub.data, client.pub.data, cltv_expiry(chain) + 10**6)
    if wrap == "p2sh":
        (coin,) = fund(chain, p2sh_script(hash160(script)))
        tx = spend(chain, [coin], n_outputs=2)
        client_sig = legacy_sig(client, tx, 0, script, client_ht)
        server_sig = legacy_sig(server, tx, 0, script, ALL)
        tx = tx.with_script_sig(0, pushes(client_sig, server_sig) + push_int(1) + push(script))
    else:
        (coin,) = fund(chain, p2wsh_script(sha256(script)))
        tx = spend(chain, [coin], n_outputs=2)
        client_sig = segwit_sig(client, tx, 0, script, coin.value, client_ht)
        server_sig = segwit_sig(server, tx, 0, script, coin.value, ALL)
        tx = tx.with_witness(0, (client_sig, server_sig, b"\x01", script))
    assert_accepted_and_confirms(chain, tx)


@pytest.mark.parametrize("wrap", ["p2sh", "p2wsh"])
def test_cltv_channel_refund_after_expiry(chain: RegtestNode, wrap: str) -> None:
    server, client = PrivateKey.generate(), PrivateKey.generate()
    expiry = cltv_expiry(chain)
    script = cltv_channel_script(server.pub.data, client.pub.data, expiry)
    spk = p2sh_script(hash160(script)) if wrap == "p2sh" else p2wsh_script(sha256(script))
    (coin,) = fund(chain, spk)

    def refund(locktime: int) -> Transaction:
        tx = spend(chain, [coin], locktime=locktime, sequences=[FINAL_BUT_LOCKTIME])
        if wrap == "p2sh":
            sig = legacy_sig(client, tx, 0, script, ALL)
            return tx.with_script_sig(0, pushes(sig, b"") + push(script))
        sig = segwit_sig(client, tx, 0, script, coin.value, ALL)
        return tx.with_witness(0, (sig, b"", script))

    # One second short of the expiry the node's CLTV check fails: our script encodes it right.
    assert_rejected(chain, refund(expiry - 1), "Locktime requirement not satisfied")
    assert_accepted_and_confirms(chain, refund(expiry))


def test_multisig_2of2_p2wsh_spend_confirms(chain: RegtestNode) -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    script = multisig_2of2_script(a.pub.data, b.pub.data)
    (coin,) = fund(chain, p2wsh_script(sha256(script)))
    tx = spend(chain, [coin])
    sigs = [segwit_sig(k, tx, 0, script, coin.value, ALL) for k in (a, b)]
    assert_accepted_and_confirms(chain, tx.with_witness(0, (b"", *sigs, script)))


def test_one_transaction_mixing_every_kind_and_hashtype(chain: RegtestNode) -> None:
    """Five inputs of five kinds, distinct sequences, hashtypes that commit to other inputs'
    sequences and outputs differently: any slip in either sighash algorithm is fatal."""
    key, server, client = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    channel = cltv_channel_script(server.pub.data, client.pub.data, cltv_expiry(chain) + 10**6)
    multisig = multisig_2of2_script(server.pub.data, client.pub.data)
    coins = fund(
        chain,
        p2pkh_script(key.pub.hash160()),
        p2wpkh_script(key.pub.hash160()),
        p2sh_script(hash160(channel)),
        p2wsh_script(sha256(channel)),
        p2wsh_script(sha256(multisig)),
    )
    seqs = [0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xF0000001, 0x80000000]
    tx = spend(chain, coins, n_outputs=5, sequences=seqs)
    keycode = p2pkh_script(key.pub.hash160())
    v = [c.value for c in coins]
    tx = tx.with_script_sig(0, pushes(legacy_sig(key, tx, 0, keycode, SINGLE), key.pub.data))
    tx = tx.with_witness(1, (segwit_sig(key, tx, 1, keycode, v[1], NONE), key.pub.data))
    tx = tx.with_script_sig(
        2,
        pushes(
            legacy_sig(client, tx, 2, channel, SINGLE | ACP),
            legacy_sig(server, tx, 2, channel, ALL),
        )
        + push_int(1)
        + push(channel),
    )
    client_sig = segwit_sig(client, tx, 3, channel, v[3], NONE | ACP)
    server_sig = segwit_sig(server, tx, 3, channel, v[3], ALL | ACP)
    tx = tx.with_witness(3, (client_sig, server_sig, b"\x01", channel))
    ms_server = segwit_sig(server, tx, 4, multisig, v[4], SINGLE)
    ms_client = segwit_sig(client, tx, 4, multisig, v[4], SINGLE | ACP)
    tx = tx.with_witness(4, (b"", ms_server, ms_client, multisig))
    assert_accepted_and_confirms(chain, tx)


@pytest.mark.parametrize("kind", ["p2pkh", "p2wpkh"])
@pytest.mark.parametrize("hashtype", HASHTYPES, ids=NODE_HASHTYPE_NAMES.get)
def test_node_signatures_verify_under_our_sighash(
    chain: RegtestNode, kind: str, hashtype: int
) -> None:
    """The node signs with our WIF key; each signature verifies against OUR sighash."""
    key = PrivateKey.generate()
    spk = (p2pkh_script if kind == "p2pkh" else p2wpkh_script)(key.pub.hash160())
    # Signing needs no real coins: the node signs whatever previous outputs we describe.
    all_coins = [Coin(OutPoint(os.urandom(32), k), COIN + 1000 * k, spk) for k in range(3)]
    tx = spend(chain, all_coins, n_outputs=3)
    prevtxs = [
        {
            "txid": c.outpoint.txid_hex,
            "vout": c.outpoint.index,
            "scriptPubKey": c.script_pubkey.hex(),
            "amount": to_btc(c.value),
        }
        for c in all_coins
    ]
    signed = chain.rpc(
        "signrawtransactionwithkey",
        tx.hex(),
        [key.to_wif(REGTEST)],
        prevtxs,
        NODE_HASHTYPE_NAMES[hashtype],
    )
    assert signed["complete"], signed.get("errors")
    result = Transaction.from_hex(signed["hex"])
    assert result.outputs == tx.outputs
    assert [i.prevout for i in result.inputs] == [c.outpoint for c in all_coins]
    for i, coin in enumerate(all_coins):
        if kind == "p2pkh":
            items = [data for _, data in iter_script(result.inputs[i].script_sig)]
            assert items[1] == key.pub.data
            sig_with_type = items[0]
            assert sig_with_type is not None
            digest = legacy_sighash(tx, i, spk, hashtype)
        else:
            sig_with_type, pub = result.inputs[i].witness
            assert pub == key.pub.data
            digest = bip143_sighash(tx, i, p2pkh_script(key.pub.hash160()), coin.value, hashtype)
        der, got_type = split_sig_hashtype(sig_with_type)
        assert got_type == hashtype
        assert key.pub.verify(digest, der)


def test_legacy_single_without_matching_output_signs_one(chain: RegtestNode) -> None:
    """Consensus keeps the SIGHASH_SINGLE bug: input 1 of a one-output transaction signs the
    number one, which our legacy_sighash returns, and the node accepts."""
    key = PrivateKey.generate()
    spk = p2pkh_script(key.pub.hash160())
    coins = fund(chain, spk) + fund(chain, spk)  # sendmany refuses one address twice
    tx = spend(chain, coins, n_outputs=1)
    assert legacy_sighash(tx, 1, spk, SINGLE) == ONE
    tx = tx.with_script_sig(0, pushes(legacy_sig(key, tx, 0, spk, ALL), key.pub.data))
    tx = tx.with_script_sig(1, pushes(legacy_sig(key, tx, 1, spk, SINGLE), key.pub.data))
    assert_accepted_and_confirms(chain, tx)


@pytest.mark.parametrize("wrap", ["p2wpkh", "p2wsh", "p2sh"])
def test_signature_over_tampered_sighash_is_rejected(chain: RegtestNode, wrap: str) -> None:
    key, other = PrivateKey.generate(), PrivateKey.generate()
    channel = cltv_channel_script(other.pub.data, key.pub.data, cltv_expiry(chain) + 10**6)
    if wrap == "p2wpkh":
        (coin,) = fund(chain, p2wpkh_script(key.pub.hash160()))
        tx = spend(chain, [coin])
        code = p2pkh_script(key.pub.hash160())
        good = segwit_sig(key, tx, 0, code, coin.value, ALL)
        bad = segwit_sig(key, tx, 0, code, coin.value + 1, ALL)  # wrong amount
        signed = {s: tx.with_witness(0, (s, key.pub.data)) for s in (good, bad)}
    elif wrap == "p2wsh":
        (coin,) = fund(chain, p2wsh_script(sha256(channel)))
        tx = spend(chain, [coin])
        server_sig = segwit_sig(other, tx, 0, channel, coin.value, ALL)
        good = segwit_sig(key, tx, 0, channel, coin.value, SINGLE | ACP)
        bad = segwit_sig(key, tx, 0, channel, coin.value - 1, SINGLE | ACP)
        signed = {s: tx.with_witness(0, (s, server_sig, b"\x01", channel)) for s in (good, bad)}
    else:
        (coin,) = fund(chain, p2sh_script(hash160(channel)))
        tx = spend(chain, [coin])
        server_sig = legacy_sig(other, tx, 0, channel, ALL)
        good = legacy_sig(key, tx, 0, channel, ALL)
        bad = legacy_sig(key, tx, 0, coin.script_pubkey, ALL)  # wrong script code
        redeem = push_int(1) + push(channel)
        signed = {s: tx.with_script_sig(0, pushes(s, server_sig) + redeem) for s in (good, bad)}
    # NULLFAIL: a non-empty signature failed its check (the good one differs in nothing else).
    assert_rejected(
        chain, signed[bad], "script-verify-flag", "Signature must be zero for failed CHECK"
    )
    assert_accepted_and_confirms(chain, signed[good])


def test_high_s_signature_is_refused_by_policy_not_consensus(chain: RegtestNode) -> None:
    key = PrivateKey.generate()
    (coin,) = fund(chain, p2wpkh_script(key.pub.hash160()))
    tx = spend(chain, [coin])
    digest = bip143_sighash(tx, 0, p2pkh_script(key.pub.hash160()), coin.value, ALL)
    low = key.sign(digest)
    high = high_s(low)
    assert high != low
    assert is_low_s(low)
    assert not is_low_s(high)
    assert not key.pub.verify(digest, high)
    low_tx = tx.with_witness(0, (append_hashtype(low, ALL), key.pub.data))
    high_tx = tx.with_witness(0, (append_hashtype(high, ALL), key.pub.data))
    assert high_tx.txid == low_tx.txid and high_tx.wtxid != low_tx.wtxid
    assert_rejected(chain, high_tx, "S value is unnecessarily high")
    assert mempool_verdict(chain, low_tx)["allowed"]
    # Low S is standardness only: a block may still carry the high-S spend.
    block = chain.mine_tx(high_tx.hex())
    assert chain.rpc("getrawtransaction", high_tx.txid_hex, True)["blockhash"] == block


def test_block_transactions_parse_as_the_node_lists_them(chain: RegtestNode) -> None:
    from bitcoind_paychan.bitcoin.tx import parse_block_transactions

    for _ in range(3):
        chain.wallet_rpc("sendtoaddress", chain.new_address(), 0.5)
    (block,) = chain.mine(1)
    txs = parse_block_transactions(bytes.fromhex(chain.rpc("getblock", block, 0)))
    assert [tx.txid_hex for tx in txs] == chain.rpc("getblock", block, 1)["tx"]
    assert len(txs) == 4

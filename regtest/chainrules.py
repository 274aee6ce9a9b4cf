"""The consensus rules an in-process chain checks, with the project's own sighash and key code
(no script interpreter): finality by height and median-time-past, spends of a channel's
contract (versions 1-3 through their kinds; version 4's P2TR by BIP341's key and script
paths) and of the wallet's P2WPKH and P2PKH coins.

Shared by the model test's chain (tests/channel/model/chain.py) and `regtest.memchain`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bitcoind_paychan.bitcoin.hashes import hash160, sha256
from bitcoind_paychan.bitcoin.keys import PublicKey, XOnlyKey, split_sig_hashtype
from bitcoind_paychan.bitcoin.script import (
    decode_script_num,
    iter_script,
    p2pkh_script,
    p2sh_script,
    p2wsh_script,
)
from bitcoind_paychan.bitcoin.sighash import bip143_sighash, legacy_sighash, taproot_sighash
from bitcoind_paychan.bitcoin.taproot import TapLeaf, branch_hash, output_key
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxOut
from bitcoind_paychan.channel.contract import (
    FINAL,
    LOCKTIME_THRESHOLD,
    Branch,
    Contract,
    locking_script,
)
from bitcoind_paychan.errors import DecodeError

ANY_HEIGHT = 2**32  # a height (or time) past every lock time: finality not checked


def is_final(tx: Transaction, height: int, median_time: int) -> bool:
    """Could `tx` be in a block at `height` whose predecessor's median-time-past is
    `median_time`? (Its lock time has passed, or every input's sequence is final.)"""
    clock = height if tx.locktime < LOCKTIME_THRESHOLD else median_time
    return (tx.locktime == 0 or tx.locktime < clock
            or all(txin.sequence == FINAL for txin in tx.inputs))


def spend_problem(contract: Contract, tx: Transaction, median_time: int,
                  height: int = ANY_HEIGHT, spent: tuple[TxOut, ...] = ()) -> str | None:
    """Why `tx` cannot spend contract:0 in a block at `height` whose predecessor's
    median-time-past is `median_time` (None: it can). The contract's kind reads the spend
    back and names its signers; every signature must verify, canonical for its scheme.
    `spent`: the outputs `tx`'s other inputs spend (a kind whose hashes commit to them)."""
    if not tx.inputs or tx.inputs[0].prevout != contract.outpoint:
        return "does not spend contract:0 in input 0"
    if not is_final(tx, height, median_time):
        return f"non-final: lock time {tx.locktime} not yet passed (median time {median_time})"
    if sum(o.value for o in tx.outputs) > contract.value and len(tx.inputs) == 1:
        return "pays out more than the contract holds"
    kind = contract.kind
    try:
        sigs, branch = kind.unlocking(tx)
    except (DecodeError, ValueError) as exc:
        return f"malformed unlocking data: {exc}"
    keys = kind.signers(branch)
    if branch is Branch.REFUND and (tx.locktime < contract.expiry
                                    or tx.inputs[0].sequence == FINAL
                                    or (tx.locktime < LOCKTIME_THRESHOLD)
                                    != (contract.expiry < LOCKTIME_THRESHOLD)):
        return "refund branch without the channel's lock time"
    if len(sigs) != len(keys):
        return f"{len(sigs)} signatures for {len(keys)} keys"
    for key, sig in zip(keys, sigs, strict=True):
        try:
            body, hashtype = kind.scheme.split(sig)
        except DecodeError as exc:
            return f"bad signature encoding: {exc}"
        if not (kind.scheme.canonical(body)
                and kind.scheme.verify(key, contract.sighash(tx, hashtype, branch, spent),
                                       body)):
            return f"signature by {key} does not verify"
    return None


def contract_spent(tx: Transaction, index: int, spent: TxOut, outpoint: OutPoint
                   ) -> Contract | None:
    """The channel contract input `index` of `tx` spends, read from the output it spends and
    the script the input reveals; None if that output is no channel contract. A version 1
    script holds no expiry (its spends are all cooperative): it reads 0."""
    txin = tx.inputs[index]
    script = spent.script_pubkey
    pushes = _pushes(txin.script_sig)
    if len(script) == 71 and script[0] == 0x52 and script[-1] == 0xAE:  # bare 2-of-2
        version, locking = 1, script
    elif pushes and script == p2sh_script(hash160(pushes[-1])):
        version, locking = 2, pushes[-1]
    elif txin.witness and script == p2wsh_script(sha256(txin.witness[-1])):
        version, locking = 3, txin.witness[-1]
    else:
        return None
    keys = _channel_keys(version, locking)
    if keys is None or locking_script(version, *keys) != locking:
        return None
    client, server, expiry = keys
    return Contract(version, client, server, expiry, outpoint, spent.value)


def _pushes(script: bytes) -> list[bytes]:
    try:
        return [data for _, data in iter_script(script) if data is not None]
    except (DecodeError, ValueError):
        return []


def _channel_keys(version: int, locking: bytes) -> tuple[bytes, bytes, int] | None:
    """(client key, server key, expiry) of a contract's locking script, or None."""
    try:
        items = list(iter_script(locking))
    except (DecodeError, ValueError):
        return None
    if version == 1:
        if len(items) != 5 or items[1][1] is None or items[2][1] is None:
            return None
        return items[1][1], items[2][1], 0
    if len(items) != 10:
        return None
    server, expiry_op, client = items[1][1], items[4], items[8][1]
    if server is None or client is None:
        return None
    return client, server, _script_int(*expiry_op)


def _script_int(op: int, data: bytes | None) -> int:
    """The number a push of `push_int` carries (OP_0..OP_16, or a minimal script number)."""
    return op - 0x50 if data is None else decode_script_num(data, 5) if data else 0


def key_spend_problem(tx: Transaction, index: int, spent: TxOut) -> str | None:
    """Why input `index` of `tx` cannot spend the P2WPKH or P2PKH output `spent` (None: it
    can); "unknown script" for any other output."""
    txin = tx.inputs[index]
    script = spent.script_pubkey
    if len(script) == 22 and script[:2] == b"\x00\x14":
        if len(txin.witness) != 2 or txin.script_sig:
            return "P2WPKH spend without exactly a signature and a key in its witness"
        sig, pub = txin.witness
        if hash160(pub) != script[2:]:
            return "P2WPKH spend with another key"
        code = p2pkh_script(script[2:])
        return _signature_problem(pub, sig, lambda t: bip143_sighash(tx, index, code,
                                                                     spent.value, t))
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14":
        pushes = _pushes(txin.script_sig)
        if len(pushes) != 2 or hash160(pushes[1]) != script[3:23]:
            return "P2PKH spend without a signature and the key"
        return _signature_problem(pushes[1], pushes[0],
                                  lambda t: legacy_sighash(tx, index, script, t))
    return f"unknown script {script.hex()} (this chain spends keys and channel contracts only)"


def _signature_problem(pub: bytes, sig: bytes, digest: Callable[[int], bytes]) -> str | None:
    try:
        key = PublicKey.parse(pub)
        der, hashtype = split_sig_hashtype(sig)
    except (DecodeError, ValueError) as exc:
        return f"bad key or signature encoding: {exc}"
    if not key.verify(digest(hashtype), der):
        return f"signature by {key} does not verify"
    return None


def is_taproot(script_pubkey: bytes) -> bool:
    return len(script_pubkey) == 34 and script_pubkey[:2] == b"\x51\x20"


def taproot_spend_problem(tx: Transaction, index: int, spent: Sequence[TxOut]) -> str | None:
    """Why input `index` of `tx` cannot spend the P2TR output `spent[index]` (`spent`: what
    every input spends, in order): BIP341's key path (one Schnorr signature by the output
    key) or its script path, the leaf proven by its control block, for the two leaf
    templates channels use: `<server> CHECKSIGVERIFY <client> CHECKSIG` and `<expiry> CLTV
    DROP <client> CHECKSIG` (BIP65 against the lock time; its finality is the caller's)."""
    txin = tx.inputs[index]
    witness = list(txin.witness)
    if txin.script_sig or not witness:
        return "P2TR spend with a scriptSig or no witness"
    try:
        output = XOnlyKey(spent[index].script_pubkey[2:])
        if len(witness) == 1:
            return _schnorr_problem(output, witness[0], tx, index, spent, None)
        *stack, leaf_script, control = witness
        if len(control) < 33 or (len(control) - 33) % 32:
            return "malformed control block"
        leaf = TapLeaf(leaf_script, control[0] & 0xFE)
        node = leaf.hash
        for at in range(33, len(control), 32):
            node = branch_hash(node, control[at:at + 32])
        tweaked, parity = output_key(XOnlyKey(control[1:33]), node)
        if tweaked != output or parity != control[0] & 1:
            return "the control block does not commit to this leaf"
        items = [data for _, data in iter_script(leaf_script)]
    except (DecodeError, ValueError) as exc:
        return f"malformed P2TR spend: {exc}"
    ops = bytes(op for op, _ in iter_script(leaf_script))
    if ops[1:] == b"\xad\x20\xac" and len(stack) == 2:  # <server> CHECKSIGVERIFY <client> ...
        server, client = items[0], items[2]
        assert server is not None and client is not None
        return (_schnorr_problem(XOnlyKey(server), stack[1], tx, index, spent, leaf.hash)
                or _schnorr_problem(XOnlyKey(client), stack[0], tx, index, spent, leaf.hash))
    if ops[1:] == b"\xb1\x75\x20\xac" and len(stack) == 1:  # <expiry> CLTV DROP <client> ...
        expiry = _script_int(ops[0], items[0])
        client = items[3]
        assert client is not None
        if (tx.locktime < expiry or txin.sequence == FINAL
                or (tx.locktime < LOCKTIME_THRESHOLD) != (expiry < LOCKTIME_THRESHOLD)):
            return "refund leaf without the channel's lock time"
        return _schnorr_problem(XOnlyKey(client), stack[0], tx, index, spent, leaf.hash)
    return f"unknown leaf script {leaf_script.hex()} (this chain spends channel leaves only)"


def _schnorr_problem(key: XOnlyKey, signature: bytes, tx: Transaction, index: int,
                     spent: Sequence[TxOut], leaf_hash: bytes | None) -> str | None:
    """BIP340/341: a 64-byte signature (SIGHASH_DEFAULT) or 65 with an explicit hashtype."""
    if len(signature) not in (64, 65) or signature[64:] == b"\x00":
        return f"bad Schnorr signature encoding ({len(signature)} bytes)"
    hashtype = signature[64] if len(signature) == 65 else 0
    try:
        digest = taproot_sighash(tx, index, spent, hashtype, leaf_hash)
    except ValueError as exc:
        return f"bad signature hashtype: {exc}"
    if not key.verify_schnorr(digest, signature[:64]):
        return f"Schnorr signature by {key} does not verify"
    return None

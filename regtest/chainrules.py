"""The consensus rules an in-process chain checks, with the project's own sighash and key code
(no script interpreter): finality by height and median-time-past, spends of a channel's
contract (every version, both branches, CLTV) and of the wallet's P2WPKH and P2PKH coins.

Shared by the model test's chain (tests/channel/model/chain.py) and `regtest.memchain`.
"""

from __future__ import annotations

from collections.abc import Callable

from bitcoind_paychan.bitcoin.hashes import hash160, sha256
from bitcoind_paychan.bitcoin.keys import PublicKey, split_sig_hashtype
from bitcoind_paychan.bitcoin.script import iter_script, p2pkh_script, p2sh_script, p2wsh_script
from bitcoind_paychan.bitcoin.sighash import bip143_sighash, legacy_sighash
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
                  height: int = ANY_HEIGHT) -> str | None:
    """Why `tx` cannot spend contract:0 in a block at `height` whose predecessor's
    median-time-past is `median_time` (None: it can). The contract's kind reads the spend
    back and names its signers; every signature must verify, canonical for its scheme."""
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
                and kind.scheme.verify(key, contract.sighash(tx, hashtype, branch), body)):
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
    candidates: list[tuple[int, bytes]] = []
    if len(script) == 71 and script[0] == 0x52 and script[-1] == 0xAE:  # bare 2-of-2
        candidates.append((1, script))
    elif pushes and script == p2sh_script(hash160(pushes[-1])):
        candidates.append((2, pushes[-1]))
    elif txin.witness and script == p2wsh_script(sha256(txin.witness[-1])):
        candidates.append((3, txin.witness[-1]))
    for version, locking in candidates:
        keys = _channel_keys(version, locking)
        if keys is None:
            continue
        client, server, expiry = keys
        if locking_script(version, client, server, expiry) == locking:
            return Contract(version, client, server, expiry, outpoint, spent.value)
    return None


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
    data = expiry_op[1]
    expiry = (expiry_op[0] - 0x50 if data is None
              else int.from_bytes(data, "little") if data else 0)
    return client, server, expiry


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

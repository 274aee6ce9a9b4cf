"""Signature hashes: the original (legacy) algorithm, BIP143's (segwit v0) and BIP341's
(Taproot, key path and script path; no annex).

`script_code` is the raw script, without its length prefix. Neither function removes
OP_CODESEPARATOR: our scripts (P2PKH, 2-of-2 multisig, the CLTV channel script) contain
none, and callers signing scripts that do must pass the already-cut script code. The
legacy function does not apply FindAndDelete of the signature either.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from bitcoind_paychan.bitcoin.hashes import hash256, sha256, tagged_hash
from bitcoind_paychan.bitcoin.tx import Transaction, TxOut, encode_varint

SIGHASH_DEFAULT = 0x00  # Taproot only: ALL, with a 64-byte signature (no hashtype byte)
SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80

ONE = b"\x01" + b"\x00" * 31
"""What the legacy algorithm signs for SIGHASH_SINGLE without a matching output."""

_ZERO = b"\x00" * 32
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_NULL_OUTPUT = b"\xff" * 8 + b"\x00"  # value -1, empty script


def _check_index(tx: Transaction, input_index: int) -> None:
    if not 0 <= input_index < len(tx.inputs):
        raise IndexError(f"input {input_index} out of range ({len(tx.inputs)} inputs)")


def legacy_sighash(tx: Transaction, input_index: int, script_code: bytes, hashtype: int) -> bytes:
    """The pre-segwit signature hash (32 bytes, internal order) of input `input_index`.

    `hashtype` is the full 32-bit value serialized into the preimage (negative values are
    taken modulo 2**32, as bitcoind's int32). SIGHASH_SINGLE with no output at
    `input_index` returns ONE (uint256 1), the historical bug consensus keeps.
    """
    _check_index(tx, input_index)
    base = hashtype & 0x1F
    if base == SIGHASH_SINGLE and input_index >= len(tx.outputs):
        return ONE
    anyone = hashtype & SIGHASH_ANYONECANPAY
    signed = tx.inputs[input_index]
    script = encode_varint(len(script_code)) + script_code
    parts = [_U32.pack(tx.version)]
    if anyone:
        parts += (b"\x01", signed.prevout.serialize(), script, _U32.pack(signed.sequence))
    else:
        # Other inputs: empty script; sequence zeroed under NONE and SINGLE.
        other_seq = b"\x00\x00\x00\x00" if base in (SIGHASH_NONE, SIGHASH_SINGLE) else None
        parts.append(encode_varint(len(tx.inputs)))
        for k, txin in enumerate(tx.inputs):
            parts.append(txin.prevout.serialize())
            if k == input_index:
                parts += (script, _U32.pack(txin.sequence))
            else:
                parts += (b"\x00", other_seq or _U32.pack(txin.sequence))
    if base == SIGHASH_NONE:
        parts.append(b"\x00")
    elif base == SIGHASH_SINGLE:
        parts += (encode_varint(input_index + 1), _NULL_OUTPUT * input_index)
        parts.append(tx.outputs[input_index].serialize())
    else:
        parts.append(encode_varint(len(tx.outputs)))
        parts += (o.serialize() for o in tx.outputs)
    parts += (_U32.pack(tx.locktime), _U32.pack(hashtype & 0xFFFFFFFF))
    return hash256(b"".join(parts))


def bip143_sighash(
    tx: Transaction, input_index: int, script_code: bytes, amount: int, hashtype: int
) -> bytes:
    """The BIP143 (segwit v0) signature hash of input `input_index` spending `amount` sats."""
    _check_index(tx, input_index)
    base = hashtype & 0x1F
    anyone = hashtype & SIGHASH_ANYONECANPAY
    inputs = tx.inputs
    if anyone:
        hash_prevouts = hash_sequence = _ZERO
    else:
        hash_prevouts = hash256(b"".join(i.prevout.serialize() for i in inputs))
        if base in (SIGHASH_NONE, SIGHASH_SINGLE):
            hash_sequence = _ZERO
        else:
            hash_sequence = hash256(b"".join(_U32.pack(i.sequence) for i in inputs))
    if base not in (SIGHASH_NONE, SIGHASH_SINGLE):
        hash_outputs = hash256(b"".join(o.serialize() for o in tx.outputs))
    elif base == SIGHASH_SINGLE and input_index < len(tx.outputs):
        hash_outputs = hash256(tx.outputs[input_index].serialize())
    else:
        hash_outputs = _ZERO
    signed = inputs[input_index]
    return hash256(
        b"".join(
            (
                _U32.pack(tx.version),
                hash_prevouts,
                hash_sequence,
                signed.prevout.serialize(),
                encode_varint(len(script_code)),
                script_code,
                _I64.pack(amount),
                _U32.pack(signed.sequence),
                hash_outputs,
                _U32.pack(tx.locktime),
                _U32.pack(hashtype & 0xFFFFFFFF),
            )
        )
    )


TAPROOT_HASHTYPES = frozenset((SIGHASH_DEFAULT, SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE,
                               SIGHASH_ALL | SIGHASH_ANYONECANPAY,
                               SIGHASH_NONE | SIGHASH_ANYONECANPAY,
                               SIGHASH_SINGLE | SIGHASH_ANYONECANPAY))
NO_CODESEPARATOR = 0xFFFFFFFF  # the script path's codesep_pos when none was executed


@dataclass(frozen=True)
class TaprootTxHashes:
    """BIP341's single-SHA256 hashes over all inputs and outputs of a transaction, the same
    for every input it signs (compute them once per transaction)."""

    prevouts: bytes
    amounts: bytes
    script_pubkeys: bytes
    sequences: bytes
    outputs: bytes

    @classmethod
    def of(cls, tx: Transaction, spent: Sequence[TxOut]) -> TaprootTxHashes:
        """`spent`: the outputs `tx`'s inputs spend, in input order."""
        if len(spent) != len(tx.inputs):
            raise ValueError(f"{len(spent)} spent outputs for {len(tx.inputs)} inputs")
        return cls(
            sha256(b"".join(i.prevout.serialize() for i in tx.inputs)),
            sha256(b"".join(_I64.pack(o.value) for o in spent)),
            sha256(b"".join(encode_varint(len(o.script_pubkey)) + o.script_pubkey
                            for o in spent)),
            sha256(b"".join(_U32.pack(i.sequence) for i in tx.inputs)),
            _outputs_hash(tx),
        )


def _outputs_hash(tx: Transaction) -> bytes:
    return sha256(b"".join(o.serialize() for o in tx.outputs))


def taproot_sigmsg(
    tx: Transaction, input_index: int, spent: Sequence[TxOut], hashtype: int,
    leaf_hash: bytes | None = None, codesep_pos: int = NO_CODESEPARATOR,
    hashes: TaprootTxHashes | None = None,
) -> bytes:
    """BIP341's SigMsg for input `input_index` (without the epoch byte): the key path when
    `leaf_hash` is None, else the script path of that leaf (BIP342's extension). `spent`: the
    outputs every input spends, in order; under ANYONECANPAY only the signed input's is read
    (`spent` may end after it: the others' need not be known). ValueError for a hashtype
    Taproot does not define or SIGHASH_SINGLE without a matching output (consensus makes
    those invalid)."""
    _check_index(tx, input_index)
    if hashtype not in TAPROOT_HASHTYPES:
        raise ValueError(f"hashtype {hashtype:#x} is not defined for Taproot")
    base, anyone = hashtype & 0x03, hashtype & SIGHASH_ANYONECANPAY
    if base == SIGHASH_SINGLE and input_index >= len(tx.outputs):
        raise ValueError(f"SIGHASH_SINGLE on input {input_index} without a matching output")
    signed = tx.inputs[input_index]
    parts = [bytes((hashtype,)), _U32.pack(tx.version), _U32.pack(tx.locktime)]
    if not anyone:
        hashes = hashes or TaprootTxHashes.of(tx, spent)
        parts += (hashes.prevouts, hashes.amounts, hashes.script_pubkeys, hashes.sequences)
    if base not in (SIGHASH_NONE, SIGHASH_SINGLE):
        parts.append(hashes.outputs if hashes else _outputs_hash(tx))
    parts.append(b"\x02" if leaf_hash is not None else b"\x00")  # spend type: ext, no annex
    if anyone:
        parts += (signed.prevout.serialize(), spent[input_index].serialize(),
                  _U32.pack(signed.sequence))
    else:
        parts.append(_U32.pack(input_index))
    if base == SIGHASH_SINGLE:
        parts.append(sha256(tx.outputs[input_index].serialize()))
    if leaf_hash is not None:
        parts += (leaf_hash, b"\x00", _U32.pack(codesep_pos))  # key_version 0
    return b"".join(parts)


def taproot_sighash(
    tx: Transaction, input_index: int, spent: Sequence[TxOut], hashtype: int,
    leaf_hash: bytes | None = None, codesep_pos: int = NO_CODESEPARATOR,
    hashes: TaprootTxHashes | None = None,
) -> bytes:
    """The BIP341 signature hash: TapSighash over the epoch (0) and `taproot_sigmsg`."""
    return tagged_hash("TapSighash", b"\x00" + taproot_sigmsg(
        tx, input_index, spent, hashtype, leaf_hash, codesep_pos, hashes))

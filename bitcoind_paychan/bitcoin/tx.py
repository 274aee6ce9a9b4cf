"""Transactions: outpoints, inputs, outputs, and their (BIP144) serialization.

Byte strings are kept in the order they are serialized in: `OutPoint.txid` and
`Transaction.txid` are in internal order; `txid_hex` is the reversed display/RPC form.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from bitcoind_paychan.bitcoin.hashes import hash256
from bitcoind_paychan.errors import DecodeError

MAX_SIZE = 0x02000000
"""Largest CompactSize bitcoind accepts for a count or length (32 MiB)."""

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_OUTPOINT = struct.Struct("<32sI")


def encode_varint(n: int) -> bytes:
    """CompactSize encoding of a non-negative integer."""
    if n < 0xFD:
        if n < 0:
            raise ValueError(f"CompactSize cannot encode negative {n}")
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + _U16.pack(n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + _U32.pack(n)
    return b"\xff" + _U64.pack(n)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Read a canonical CompactSize at `offset`; return (value, offset after it)."""
    try:
        first = data[offset]
        if first < 0xFD:
            return first, offset + 1
        if first == 0xFD:
            n, end, floor = _U16.unpack_from(data, offset + 1)[0], offset + 3, 0xFD
        elif first == 0xFE:
            n, end, floor = _U32.unpack_from(data, offset + 1)[0], offset + 5, 0x10000
        else:
            n, end, floor = _U64.unpack_from(data, offset + 1)[0], offset + 9, 0x100000000
    except (IndexError, struct.error):
        raise DecodeError(f"truncated CompactSize at offset {offset}") from None
    if n < floor:
        raise DecodeError(f"non-canonical CompactSize at offset {offset}")
    return n, end


def _ser_bytes(b: bytes) -> bytes:
    return encode_varint(len(b)) + b


@dataclass(frozen=True, slots=True)
class OutPoint:
    """A reference to a transaction output: txid (internal byte order) and index."""

    txid: bytes
    index: int

    def __post_init__(self) -> None:
        if len(self.txid) != 32:
            raise ValueError(f"txid must be 32 bytes, got {len(self.txid)}")

    @classmethod
    def from_hex(cls, txid_hex: str, index: int) -> OutPoint:
        """Build from a display-order (RPC) txid hex string."""
        try:
            raw = bytes.fromhex(txid_hex)
        except ValueError:
            raise DecodeError(f"txid is not hex: {txid_hex!r}") from None
        if len(raw) != 32:
            raise DecodeError(f"txid must be 64 hex digits, got {len(txid_hex)}")
        return cls(raw[::-1], index)

    @property
    def txid_hex(self) -> str:
        """The txid in display/RPC order."""
        return self.txid[::-1].hex()

    def serialize(self) -> bytes:
        return _OUTPOINT.pack(self.txid, self.index)


@dataclass(frozen=True, slots=True)
class TxIn:
    """A transaction input."""

    prevout: OutPoint
    script_sig: bytes = b""
    sequence: int = 0xFFFFFFFF
    witness: tuple[bytes, ...] = ()

    def serialize(self) -> bytes:
        """The input without its witness, as in the transaction body."""
        return self.prevout.serialize() + _ser_bytes(self.script_sig) + _U32.pack(self.sequence)


@dataclass(frozen=True, slots=True)
class TxOut:
    """A transaction output: value in satoshis and the locking script."""

    value: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return _I64.pack(self.value) + _ser_bytes(self.script_pubkey)


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction; `version` and `locktime` are unsigned 32-bit."""

    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    @property
    def has_witness(self) -> bool:
        return any(i.witness for i in self.inputs)

    def serialize(self, include_witness: bool = True) -> bytes:
        """Serialize; BIP144 marker, flag and witnesses only if asked and any input has one."""
        parts = [_U32.pack(self.version)]
        witness = include_witness and self.has_witness
        if witness:
            parts.append(b"\x00\x01")
        parts.append(encode_varint(len(self.inputs)))
        parts.extend(i.serialize() for i in self.inputs)
        parts.append(encode_varint(len(self.outputs)))
        parts.extend(o.serialize() for o in self.outputs)
        if witness:
            for i in self.inputs:
                parts.append(encode_varint(len(i.witness)))
                parts.extend(_ser_bytes(item) for item in i.witness)
        parts.append(_U32.pack(self.locktime))
        return b"".join(parts)

    def hex(self) -> str:
        """Hex of the full (witness) serialization, as bitcoind's RPC takes it."""
        return self.serialize().hex()

    @classmethod
    def from_hex(cls, hex_tx: str) -> Transaction:
        try:
            raw = bytes.fromhex(hex_tx)
        except ValueError:
            raise DecodeError("transaction is not valid hex") from None
        return cls.parse(raw)

    @classmethod
    def parse(cls, data: bytes) -> Transaction:
        """Parse a whole serialized transaction; DecodeError unless it is exactly one."""
        return _Parser(data).transaction()

    @property
    def txid(self) -> bytes:
        """hash256 of the witness-stripped serialization, internal byte order."""
        return hash256(self.serialize(include_witness=False))

    @property
    def txid_hex(self) -> str:
        """The txid in display/RPC order."""
        return self.txid[::-1].hex()

    @property
    def wtxid(self) -> bytes:
        """hash256 of the full serialization (equals txid without witnesses), internal order."""
        return hash256(self.serialize())

    @property
    def weight(self) -> int:
        """BIP141 weight: 3 x stripped size + total size."""
        return 3 * len(self.serialize(include_witness=False)) + len(self.serialize())

    @property
    def vsize(self) -> int:
        """Virtual size in vbytes: weight / 4, rounded up."""
        return (self.weight + 3) // 4

    def with_input(self, index: int, txin: TxIn) -> Transaction:
        """A copy with input `index` replaced."""
        inputs = list(self.inputs)
        inputs[index] = txin
        return dataclasses.replace(self, inputs=tuple(inputs))

    def with_script_sig(self, index: int, script_sig: bytes) -> Transaction:
        """A copy with the scriptSig of input `index` replaced."""
        txin = dataclasses.replace(self.inputs[index], script_sig=script_sig)
        return self.with_input(index, txin)

    def with_witness(self, index: int, witness: tuple[bytes, ...]) -> Transaction:
        """A copy with the witness of input `index` replaced."""
        return self.with_input(index, dataclasses.replace(self.inputs[index], witness=witness))


class _Parser:
    """A cursor over serialized bytes that raises DecodeError on any shortfall."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"transaction truncated at byte {self.pos} (needed {n} more)")
        b = self.data[self.pos : end]
        self.pos = end
        return b

    def u32(self) -> int:
        v: int = _U32.unpack(self.take(4))[0]
        return v

    def count(self, min_item: int, what: str) -> int:
        n, self.pos = decode_varint(self.data, self.pos)
        if n > MAX_SIZE or n * min_item > len(self.data) - self.pos:
            raise DecodeError(f"absurd {what} count {n} at byte {self.pos}")
        return n

    def var_bytes(self) -> bytes:
        return self.take(self.count(1, "byte"))

    def txin(self) -> TxIn:
        txid, index = _OUTPOINT.unpack(self.take(36))
        return TxIn(OutPoint(txid, index), self.var_bytes(), self.u32())

    def txout(self) -> TxOut:
        value: int = _I64.unpack(self.take(8))[0]
        return TxOut(value, self.var_bytes())

    def transaction(self) -> Transaction:
        tx = self.next_transaction()
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes after transaction")
        return tx

    def next_transaction(self) -> Transaction:
        """The transaction at the cursor (more bytes may follow, as in a block)."""
        version = self.u32()
        segwit = self.data[self.pos : self.pos + 1] == b"\x00"
        if segwit:
            marker_flag = self.take(2)
            if marker_flag != b"\x00\x01":
                raise DecodeError(f"bad segwit marker/flag {marker_flag.hex()} (or zero inputs)")
        inputs = [self.txin() for _ in range(self.count(41, "input"))]
        outputs = tuple(self.txout() for _ in range(self.count(9, "output")))
        if segwit:
            for k, txin in enumerate(inputs):
                items = tuple(self.var_bytes() for _ in range(self.count(1, "witness item")))
                inputs[k] = TxIn(txin.prevout, txin.script_sig, txin.sequence, items)
            if not any(i.witness for i in inputs):
                raise DecodeError("segwit flag set but every witness is empty")
        locktime = self.u32()
        return Transaction(version, tuple(inputs), outputs, locktime)


def parse_block_transactions(block: bytes) -> list[Transaction]:
    """The transactions of a serialized block (its 80-byte header is skipped)."""
    parser = _Parser(block)
    parser.take(80)
    txs = [parser.next_transaction() for _ in range(parser.count(60, "transaction"))]
    if parser.pos != len(block):
        raise DecodeError(f"{len(block) - parser.pos} trailing bytes after the block")
    return txs


def serialize_outputs(outputs: tuple[TxOut, ...]) -> bytes:
    """A list of outputs as a transaction carries them: their count, then each."""
    return encode_varint(len(outputs)) + b"".join(out.serialize() for out in outputs)


def parse_outputs(data: bytes) -> tuple[TxOut, ...]:
    """The outputs `serialize_outputs` wrote; DecodeError unless `data` is exactly that."""
    parser = _Parser(data)
    outputs = tuple(parser.txout() for _ in range(parser.count(9, "output")))
    if parser.pos != len(data):
        raise DecodeError(f"{len(data) - parser.pos} trailing bytes after the outputs")
    return outputs

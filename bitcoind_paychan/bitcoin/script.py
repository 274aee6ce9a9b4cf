"""Script: opcodes, minimal pushes and numbers, a tokenizer, and the templates we use."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from bitcoind_paychan.errors import DecodeError

OP_0 = 0x00
OP_FALSE = OP_0
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51
OP_TRUE = OP_1
OP_2 = 0x52
OP_3 = 0x53
OP_4 = 0x54
OP_5 = 0x55
OP_6 = 0x56
OP_7 = 0x57
OP_8 = 0x58
OP_9 = 0x59
OP_10 = 0x5A
OP_11 = 0x5B
OP_12 = 0x5C
OP_13 = 0x5D
OP_14 = 0x5E
OP_15 = 0x5F
OP_16 = 0x60
OP_NOP = 0x61
OP_IF = 0x63
OP_NOTIF = 0x64
OP_ELSE = 0x67
OP_ENDIF = 0x68
OP_VERIFY = 0x69
OP_RETURN = 0x6A
OP_DROP = 0x75
OP_DUP = 0x76
OP_SWAP = 0x7C
OP_SIZE = 0x82
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_SHA256 = 0xA8
OP_HASH160 = 0xA9
OP_HASH256 = 0xAA
OP_CODESEPARATOR = 0xAB
OP_CHECKSIG = 0xAC
OP_CHECKSIGVERIFY = 0xAD
OP_CHECKMULTISIG = 0xAE
OP_CHECKMULTISIGVERIFY = 0xAF
OP_CHECKLOCKTIMEVERIFY = 0xB1
OP_CHECKSEQUENCEVERIFY = 0xB2

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def op_n(n: int) -> int:
    """The opcode OP_0..OP_16 for n in 0..16."""
    if not 0 <= n <= 16:
        raise ValueError(f"no OP_n for {n}")
    return OP_0 if n == 0 else OP_1 + n - 1


def push(data: bytes) -> bytes:
    """Push `data` with the smallest push opcode (OP_0 when empty; never OP_1..OP_16)."""
    n = len(data)
    if n == 0:
        return b"\x00"
    if n < OP_PUSHDATA1:
        return bytes((n,)) + data
    if n <= 0xFF:
        return bytes((OP_PUSHDATA1, n)) + data
    if n <= 0xFFFF:
        return bytes((OP_PUSHDATA2,)) + _U16.pack(n) + data
    return bytes((OP_PUSHDATA4,)) + _U32.pack(n) + data


def push_int(n: int) -> bytes:
    """Push the number `n` minimally: OP_0, OP_1NEGATE, OP_1..OP_16, else a script number."""
    if n == -1:
        return bytes((OP_1NEGATE,))
    if 0 <= n <= 16:
        return bytes((op_n(n),))
    return push(script_num(n))


def script_num(n: int) -> bytes:
    """Minimal little-endian sign-magnitude encoding of `n` (CScriptNum); b'' for 0."""
    if n == 0:
        return b""
    mag = abs(n)
    out = mag.to_bytes((mag.bit_length() + 7) // 8, "little")
    if out[-1] & 0x80:
        return out + (b"\x80" if n < 0 else b"\x00")
    if n < 0:
        return out[:-1] + bytes((out[-1] | 0x80,))
    return out


def decode_script_num(data: bytes, max_size: int = 4, minimal: bool = True) -> int:
    """Decode a CScriptNum of at most `max_size` bytes (5 for CLTV/CSV operands)."""
    if len(data) > max_size:
        raise DecodeError(f"script number of {len(data)} bytes exceeds {max_size}")
    if not data:
        return 0
    last = data[-1]
    if minimal and not last & 0x7F and (len(data) == 1 or not data[-2] & 0x80):
        raise DecodeError(f"non-minimal script number {data.hex()}")
    mag = int.from_bytes(data[:-1] + bytes((last & 0x7F,)), "little")
    return -mag if last & 0x80 else mag


def iter_script(script: bytes) -> Iterator[tuple[int, bytes | None]]:
    """Yield (opcode, pushed data or None) for each operation; DecodeError on truncation."""
    pos, end = 0, len(script)
    while pos < end:
        op = script[pos]
        pos += 1
        if op > OP_PUSHDATA4:
            yield op, None
            continue
        if op < OP_PUSHDATA1:
            n = op
        else:
            width = 1 if op == OP_PUSHDATA1 else 2 if op == OP_PUSHDATA2 else 4
            if pos + width > end:
                raise DecodeError(f"truncated push length at byte {pos - 1}")
            n = int.from_bytes(script[pos : pos + width], "little")
            pos += width
        if pos + n > end:
            raise DecodeError(f"push of {n} bytes at byte {pos} runs past the script end")
        yield op, script[pos : pos + n]
        pos += n


def _check_len(name: str, b: bytes, n: int) -> None:
    if len(b) != n:
        raise ValueError(f"{name} must be {n} bytes, got {len(b)}")


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    """OP_DUP OP_HASH160 <20> OP_EQUALVERIFY OP_CHECKSIG."""
    _check_len("pubkey hash", pubkey_hash, 20)
    return b"\x76\xa9\x14" + pubkey_hash + b"\x88\xac"


def p2sh_script(script_hash: bytes) -> bytes:
    """OP_HASH160 <20> OP_EQUAL."""
    _check_len("script hash", script_hash, 20)
    return b"\xa9\x14" + script_hash + b"\x87"


def p2wpkh_script(pubkey_hash: bytes) -> bytes:
    """OP_0 <20>."""
    _check_len("pubkey hash", pubkey_hash, 20)
    return b"\x00\x14" + pubkey_hash


def p2wsh_script(script_sha256: bytes) -> bytes:
    """OP_0 <32>."""
    _check_len("script sha256", script_sha256, 32)
    return b"\x00\x20" + script_sha256


def multisig_2of2_script(pub_a: bytes, pub_b: bytes) -> bytes:
    """OP_2 <a> <b> OP_2 OP_CHECKMULTISIG, keys in the order given."""
    return bytes((OP_2,)) + push(pub_a) + push(pub_b) + bytes((OP_2, OP_CHECKMULTISIG))


MAX_CLTV_EXPIRY = 0xFFFFFFFF


def cltv_channel_script(server_pub: bytes, client_pub: bytes, expiry: int) -> bytes:
    """bitcoinj's v2 (CLTV) payment channel script.

    OP_IF <server pub> OP_CHECKSIGVERIFY OP_ELSE <expiry> OP_CHECKLOCKTIMEVERIFY OP_DROP
    OP_ENDIF <client pub> OP_CHECKSIG. The expiry (a unix time or a height) is pushed as a
    minimal number, as bitcoinj's ScriptBuilder.data does.
    """
    if not 0 <= expiry <= MAX_CLTV_EXPIRY:
        raise ValueError(f"expiry {expiry} out of range 0..{MAX_CLTV_EXPIRY}")
    return b"".join(
        (
            bytes((OP_IF,)),
            push(server_pub),
            bytes((OP_CHECKSIGVERIFY, OP_ELSE)),
            push_int(expiry),
            bytes((OP_CHECKLOCKTIMEVERIFY, OP_DROP, OP_ENDIF)),
            push(client_pub),
            bytes((OP_CHECKSIG,)),
        )
    )


def p2tr_script(output_key: bytes) -> bytes:
    """OP_1 <32>: a Taproot output to the x-only `output_key` (BIP341)."""
    _check_len("output key", output_key, 32)
    return b"\x51\x20" + output_key

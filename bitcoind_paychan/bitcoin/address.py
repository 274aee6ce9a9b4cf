"""Addresses: base58check (P2PKH, P2SH, WIF) and bech32/bech32m segwit (BIP173, BIP350)."""

from __future__ import annotations

import enum

from bitcoind_paychan.bitcoin.hashes import hash256
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.script import p2pkh_script, p2sh_script
from bitcoind_paychan.errors import DecodeError

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def base58_encode(data: bytes) -> str:
    """Base58 with one '1' per leading zero byte."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(out))


def base58_decode(s: str) -> bytes:
    n = 0
    for c in s:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise DecodeError(f"invalid base58 character {c!r}") from None
    zeros = len(s) - len(s.lstrip("1"))
    return b"\x00" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


def base58check_encode(payload: bytes) -> str:
    return base58_encode(payload + hash256(payload)[:4])


def base58check_decode(s: str) -> bytes:
    """The payload of a base58check string; DecodeError on a bad checksum."""
    raw = base58_decode(s)
    if len(raw) < 4 or hash256(raw[:-4])[:4] != raw[-4:]:
        raise DecodeError("base58check checksum mismatch")
    return raw[:-4]


_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Encoding(enum.IntEnum):
    """The checksum variant, valued by its final XOR constant."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode(hrp: str, data: list[int], encoding: Encoding) -> str:
    """Encode 5-bit `data` under `hrp` with the checksum of `encoding`."""
    mod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ encoding
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def bech32_decode(s: str) -> tuple[str, list[int], Encoding]:
    """Decode a bech32 or bech32m string into (lowercase hrp, 5-bit data, encoding)."""
    if len(s) > 90:
        raise DecodeError(f"bech32 string too long ({len(s)} > 90)")
    if any(not 33 <= ord(c) <= 126 for c in s):
        raise DecodeError("bech32 string has a character out of range")
    if s.lower() != s and s.upper() != s:
        raise DecodeError("bech32 string mixes upper and lower case")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise DecodeError("bech32 separator missing, HRP empty or checksum too short")
    hrp = s[:pos]
    try:
        data = [_CHARSET_INDEX[c] for c in s[pos + 1 :]]
    except KeyError as e:
        raise DecodeError(f"invalid bech32 data character {e.args[0]!r}") from None
    const = _polymod(_hrp_expand(hrp) + data)
    if const not in (Encoding.BECH32, Encoding.BECH32M):
        raise DecodeError("bech32 checksum mismatch")
    return hrp, data[:-6], Encoding(const)


def _convert_bits(data: list[int] | bytes, frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    max_acc = (1 << (frombits + tobits - 1)) - 1
    for v in data:
        acc = ((acc << frombits) | v) & max_acc
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        raise DecodeError("invalid padding in bech32 data")
    return out


def segwit_encode(hrp: str, witver: int, program: bytes) -> str:
    """A segwit address: bech32 for witness version 0, bech32m for versions 1 to 16."""
    _check_program(witver, program)
    encoding = Encoding.BECH32 if witver == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [witver, *_convert_bits(program, 8, 5, True)], encoding)


def segwit_decode(address: str) -> tuple[str, int, bytes]:
    """Decode a segwit address into (hrp, witness version, program)."""
    hrp, data, encoding = bech32_decode(address)
    if not data:
        raise DecodeError("segwit address has an empty data section")
    witver = data[0]
    if witver > 16:
        raise DecodeError(f"invalid witness version {witver}")
    program = bytes(_convert_bits(data[1:], 5, 8, False))
    _check_program(witver, program)
    if encoding != (Encoding.BECH32 if witver == 0 else Encoding.BECH32M):
        raise DecodeError(f"witness version {witver} address with a {encoding.name} checksum")
    return hrp, witver, program


def _check_program(witver: int, program: bytes) -> None:
    if not 0 <= witver <= 16:
        raise DecodeError(f"invalid witness version {witver}")
    if not 2 <= len(program) <= 40:
        raise DecodeError(f"invalid witness program length {len(program)}")
    if witver == 0 and len(program) not in (20, 32):
        raise DecodeError(f"invalid v0 witness program length {len(program)}")


def witness_script(witver: int, program: bytes) -> bytes:
    """The scriptPubKey of a witness program: OP_n <program>."""
    _check_program(witver, program)
    return bytes((0x50 + witver if witver else 0, len(program))) + program


def script_to_address(script_pubkey: bytes, network: Network) -> str:
    """The address of a P2PKH, P2SH or witness (P2WPKH, P2WSH, P2TR, ...) scriptPubKey."""
    s = script_pubkey
    n = len(s)
    if n == 25 and s[:3] == b"\x76\xa9\x14" and s[23:] == b"\x88\xac":
        return base58check_encode(bytes((network.p2pkh_version,)) + s[3:23])
    if n == 23 and s[:2] == b"\xa9\x14" and s[22] == 0x87:
        return base58check_encode(bytes((network.p2sh_version,)) + s[2:22])
    if 4 <= n <= 42 and (s[0] == 0 or 0x51 <= s[0] <= 0x60) and s[1] == n - 2:
        version = s[0] - 0x50 if s[0] else 0
        if version or n - 2 in (20, 32):
            return segwit_encode(network.hrp, version, s[2:])
    raise DecodeError(f"no address form for script {s.hex()}")


def address_to_script(address: str, network: Network) -> bytes:
    """The scriptPubKey an address of `network` pays to; DecodeError naming both networks
    when the address belongs to another one."""
    lower = address.lower()
    hrps = {n.hrp for n in Network}
    if any(lower.startswith(h + "1") for h in hrps):
        hrp, version, program = segwit_decode(address)
        if hrp != network.hrp:
            other = Network.describe(lambda n: n.hrp == hrp)
            raise DecodeError(f"address {address} is for {other}, not {network.label}")
        return witness_script(version, program)
    payload = base58check_decode(address)
    if len(payload) != 21:
        raise DecodeError(f"address {address} has a {len(payload)}-byte payload, not 21")
    version, body = payload[0], payload[1:]
    if version == network.p2pkh_version:
        return p2pkh_script(body)
    if version == network.p2sh_version:
        return p2sh_script(body)
    other = Network.describe(lambda n: version in (n.p2pkh_version, n.p2sh_version))
    raise DecodeError(f"address {address} is for {other}, not {network.label}")

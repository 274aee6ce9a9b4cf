"""The PROXY protocol (HAProxy's, v1 text and v2 binary): the real client a TCP balancer
names in front of a connection it forwards (haproxy `send-proxy-v2`, nginx stream
`proxy_protocol on`).

Read only from a trusted proxy (`TrustedProxies`), which must then send it: anyone else could
name any address. The header is parsed with a strict size bound (v1: 107 bytes, the
specification's; v2: `MAX_V2` bytes with its TLVs), without reading a byte past it, and within
the caller's timeout. LOCAL (v2) and UNKNOWN (v1), and address families other than IPv4 and
IPv6, name no client: the connection is the proxy's own (a health check). Anything else is a
ProxyHeaderError saying what was wrong.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass

from bitcoind_paychan.errors import ProxyHeaderError

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family, length
MAX_V2 = 16 + 36 + 460  # the fixed part, IPv6 addresses and ports, some TLVs
SHORTEST = 15  # "PROXY UNKNOWN\r\n": no header is shorter
_V2_ADDRESSES = {0x1: (4, ipaddress.IPv4Address), 0x2: (16, ipaddress.IPv6Address)}


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: the client's address and port, or None for the proxy's own
    connection (LOCAL, UNKNOWN, or a family without an IP address)."""

    client: str | None
    port: int | None = None
    version: int = 2


def missing(data: bytes) -> int:
    """How many more bytes the header beginning with `data` needs (0: it is whole).
    ProxyHeaderError once `data` cannot begin a header, or the header would be too long."""
    if len(data) < SHORTEST:
        return SHORTEST - len(data)
    if data.startswith(V2_SIGNATURE):
        if len(data) < V2_FIXED:
            return V2_FIXED - len(data)
        total = V2_FIXED + int.from_bytes(data[14:16], "big")
        if total > MAX_V2:
            raise ProxyHeaderError(f"a PROXY v2 header of {total} bytes, longer than the "
                                   f"{MAX_V2} accepted")
        return total - len(data)
    if data.startswith(V1_PREFIX):
        end = data.find(b"\r\n")
        if end == len(data) - 2:
            return 0
        if end >= 0:
            raise ProxyHeaderError("a PROXY v1 line shorter than any valid one")
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"a PROXY v1 line without CRLF within {V1_MAX} bytes")
        return 1  # a line: read it a byte at a time, never past its end
    raise ProxyHeaderError(f"no PROXY protocol header (the connection began with "
                           f"{bytes(data[:8])!r}): a proxy in server.trusted_proxies must "
                           "send one (haproxy send-proxy-v2, nginx proxy_protocol on)")


def parse(data: bytes) -> ProxyHeader:
    """The header `data` holds whole (as `missing` said); ProxyHeaderError if it is invalid."""
    if missing(data):
        raise ProxyHeaderError(f"a truncated PROXY header ({len(data)} bytes)")
    return _parse_v2(data) if data.startswith(V2_SIGNATURE) else _parse_v1(data)


async def read_header(sock: socket.socket, timeout: float) -> ProxyHeader:
    """The header at the start of a just accepted TCP connection, read within `timeout`
    seconds from its socket (before any transport exists: not a byte past the header is read,
    so a TLS handshake or the protocol's frames follow untouched); ProxyHeaderError if it is
    missing, invalid, cut short or late."""
    loop = asyncio.get_running_loop()
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while more := missing(data):
                got = await loop.sock_recv(sock, more)
                if not got:
                    raise ProxyHeaderError("the proxy hung up within the PROXY header")
                data += got
    except TimeoutError:
        raise ProxyHeaderError(f"no whole PROXY header within {timeout} s") from None
    except OSError as exc:
        raise ProxyHeaderError(f"reading the PROXY header failed: {exc}") from None
    return parse(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    try:
        line = data[len(V1_PREFIX):-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("a PROXY v1 line that is not ASCII") from None
    parts = line.split(" ")
    if parts[0] == "UNKNOWN":
        return ProxyHeader(None, version=1)
    if parts[0] not in ("TCP4", "TCP6") or len(parts) != 5:
        raise ProxyHeaderError(f"a PROXY v1 line {line!r}, expected 'TCP4|TCP6 source "
                               "destination source-port destination-port' or 'UNKNOWN'")
    family = ipaddress.IPv4Address if parts[0] == "TCP4" else ipaddress.IPv6Address
    try:
        source, _ = family(parts[1]), family(parts[2])
    except ValueError:
        raise ProxyHeaderError(f"a PROXY v1 line with addresses that are not {parts[0]}: "
                               f"{line!r}") from None
    ports = parts[3:]
    if not all(p.isdigit() and len(p) <= 5 and int(p) < 65536 for p in ports):
        raise ProxyHeaderError(f"a PROXY v1 line with ports that are not 0-65535: {line!r}")
    return ProxyHeader(str(source), int(ports[0]), version=1)


def _parse_v2(data: bytes) -> ProxyHeader:
    ver, command = data[12] >> 4, data[12] & 0xF
    family, transport = data[13] >> 4, data[13] & 0xF
    if ver != 2:
        raise ProxyHeaderError(f"a PROXY header of version {ver}, expected 2")
    if command == 0x0:  # LOCAL: the proxy's own connection (a health check)
        return ProxyHeader(None)
    if command != 0x1:
        raise ProxyHeaderError(f"a PROXY v2 command {command}, expected LOCAL (0) or PROXY (1)")
    if family not in _V2_ADDRESSES or transport != 0x1:  # UNSPEC, UNIX; or not a stream
        if transport == 0x2:
            raise ProxyHeaderError("a PROXY v2 header for a datagram, on a TCP connection")
        return ProxyHeader(None)
    size, kind = _V2_ADDRESSES[family]
    body = data[V2_FIXED:]
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError(f"a PROXY v2 header too short for its addresses "
                               f"({len(body)} bytes after the fixed part)")
    (port,) = struct.unpack_from("!H", body, 2 * size)
    return ProxyHeader(str(kind(body[:size])), port)

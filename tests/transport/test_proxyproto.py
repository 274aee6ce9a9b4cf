"""The PROXY protocol (v1 and v2): the parser on its own, then through a real TCP listener
whose limits count the client a trusted balancer names (and only a trusted one)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.errors import ErrorCode, ProxyHeaderError, RemoteProtocolError
from bitcoind_paychan.transport import tcp
from bitcoind_paychan.transport.limits import Admission, PeerGate, PeerLimits
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.proxyproto import (
    MAX_V2,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    missing,
    parse,
)
from bitcoind_paychan.transport.stream import MessageStream, frame
from bitcoind_paychan.transport.tlsdoor import TLSDoor
from tests.transport.certs import CertFactory


def v2(command: int = 1, family: int = 1, transport: int = 1, body: bytes | None = None,
       source: str = "203.0.113.7", port: int = 51000) -> bytes:
    """A v2 header (PROXY over TCP from `source`:`port` unless said otherwise)."""
    if body is None:
        address = ipaddress.ip_address(source)
        other = ipaddress.ip_address("::1" if address.version == 6 else "10.0.0.1")
        body = address.packed + other.packed + struct.pack("!HH", port, 4242)
    return (V2_SIGNATURE + bytes([0x20 | command, family << 4 | transport])
            + struct.pack("!H", len(body)) + body)


def whole(data: bytes) -> ProxyHeader:
    """Parse as the listener does: only as many bytes as `missing` asks for, in order."""
    got = b""
    while more := missing(got):
        assert len(got) + more <= len(data), "asked for more than the header"
        got += data[len(got):len(got) + more]
    assert got == data
    return parse(got)


@pytest.mark.parametrize(("header", "expected"), [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 4242\r\n", ProxyHeader("203.0.113.7", 51000, 1)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 4242\r\n",
     ProxyHeader("2001:db8::7", 51000, 1)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(None, None, 1)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(None, None, 1)),
    (v2(), ProxyHeader("203.0.113.7", 51000)),
    (v2(family=2, source="2001:db8::7"), ProxyHeader("2001:db8::7", 51000)),
    (v2(command=0, body=b""), ProxyHeader(None)),  # LOCAL: the balancer's health check
    (v2(family=0, transport=0, body=b""), ProxyHeader(None)),  # UNSPEC
    (v2(family=3, body=bytes(216)), ProxyHeader(None)),  # a UNIX socket's
    (v2(body=bytes([203, 0, 113, 7, 10, 0, 0, 1, 0xC7, 0x38, 0x10, 0x92]) + b"\x04\x00\x01x"),
     ProxyHeader("203.0.113.7", 51000)),  # a TLV after the addresses is skipped
])
def test_valid_headers_name_the_client_or_none(header: bytes, expected: ProxyHeader) -> None:
    assert whole(header) == expected


@pytest.mark.parametrize(("data", "said"), [
    (b"\x00\x00\x00\x0cjunk-frame-bytes", "no PROXY protocol header"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 " + b"9" * 100, "without CRLF within 107 bytes"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "expected 'TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 'TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "addresses that are not TCP4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "ports that are not 0-65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "ports that are not 0-65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n", "not ASCII"),
    (b"PROXY X\r\nPROXY UNKNOWN\r\n", "shorter than any valid one"),
    (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2), "longer than the 512 accepted"),
    (v2()[:12] + b"\x31" + v2()[13:], "version 3, expected 2"),
    (v2(command=2), "command 2"),
    (v2(transport=2), "datagram"),
    (v2(body=bytes(8)), "too short for its addresses"),
    (v2(family=2, body=bytes(20)), "too short for its addresses"),
])
def test_malformed_headers_are_refused_saying_why(data: bytes, said: str) -> None:
    with pytest.raises(ProxyHeaderError, match=said):
        got = b""
        while more := missing(got):
            assert len(got) < len(data), "the junk ran out before an error"
            got += data[len(got):len(got) + more]
        parse(got)


def test_headers_are_bounded_and_a_truncated_one_is_not_whole() -> None:
    assert V1_MAX == 107 and MAX_V2 == 512
    assert missing(b"PROX") == 11  # no header is shorter than 15 bytes
    assert missing(v2()[:14]) == missing(v2()[:15]) == 1 and missing(v2()[:16]) == 12
    with pytest.raises(ProxyHeaderError, match="truncated"):
        parse(v2()[:20])


# -- through a real listener -----------------------------------------------------------------


class Served:
    """What the listener handed over: each connection's peer name and its first message."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.first: list[int] = []
        self.done = asyncio.Event()

    async def __call__(self, stream: MessageStream, admission: Admission) -> None:
        self.peers.append(stream.peername)
        try:
            message = await stream.receive(10)
        except RemoteProtocolError:
            self.first.append(SYNTAX)
            return
        finally:
            self.done.set()
        self.first.append(message.type if message else -1)
        await stream.receive(10)  # hold the handshake slot until the client goes


GREETING = frame(messages.error(ErrorCode.OTHER, "hello"))
SYNTAX = -2  # the first bytes were not a frame


@asynccontextmanager
async def listening(trusted: list[str], door: TLSDoor | None = None
                    ) -> AsyncIterator[tuple[tcp.Listener, Served, int]]:
    served = Served()
    gate = PeerGate(PeerLimits(max_handshakes_per_ip=1))
    listener = tcp.Listener(gate, served, door, header_timeout=5,
                            proxy_protocol=TrustedProxies.parse(trusted))
    _, port = await listener.listen("127.0.0.1", 0)
    try:
        yield listener, served, port
    finally:
        await listener.stop()


async def connect(port: int, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    return reader, writer


async def refused(reader: asyncio.StreamReader) -> bool:
    """Whether the listener hung up without a word."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


def test_a_trusted_balancer_names_the_client_the_limits_count() -> None:
    async def scenario() -> tuple[list[str], list[int], bool]:
        async with listening(["127.0.0.1"]) as (_, served, port):
            writers = []
            for first in (v2(source="203.0.113.7") + GREETING,
                          # another client behind the same balancer: its own budget
                          b"PROXY TCP6 2001:db8::9 ::1 40000 4242\r\n" + GREETING):
                writers.append((await connect(port, first))[1])
                await served.done.wait()
                served.done.clear()
            # the first client's second handshake: over its 1
            reader, writer = await connect(port, v2(source="203.0.113.7", port=51001) + GREETING)
            over = await refused(reader)
            writer.close()
            # LOCAL (the balancer's health check): counted as the balancer itself
            writers.append((await connect(port, v2(command=0, body=b"") + GREETING))[1])
            await served.done.wait()
            for writer in writers:
                writer.close()
            return served.peers, served.first, over

    peers, first, over = asyncio.run(scenario())
    assert peers[:2] == ["203.0.113.7:51000", "[2001:db8::9]:40000"]
    assert peers[2].startswith("127.0.0.1:") and len(peers) == 3
    assert first == [messages.error(ErrorCode.OTHER, "x").type] * 3  # frames intact
    assert over


def test_a_trusted_balancer_without_a_valid_header_is_refused_with_a_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[bool]:
        async with listening(["127.0.0.1"]) as (_, served, port):
            outcomes = []
            for first in (GREETING, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n" + GREETING,
                          V2_SIGNATURE + b"\x21\x11\xff\xff"):
                reader, writer = await connect(port, first)
                outcomes.append(await refused(reader))
                writer.close()
            assert not served.peers  # nothing reached the protocol
            return outcomes

    with caplog.at_level(logging.WARNING, "bitcoind_paychan.transport.tcp"):
        assert asyncio.run(scenario()) == [True, True, True]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert all("refused a connection from a trusted proxy" in line for line in lines)
    assert "no PROXY protocol header" in lines[0] and "ports that are not" in lines[1]
    assert "longer than the 512 accepted" in lines[2]


def test_a_header_from_an_untrusted_peer_is_never_read() -> None:
    """Only 10.0.0.0/8 is trusted: the header from 127.0.0.1 is read as the start of its
    frames (a syntax error), and the peer is the socket's own."""
    async def scenario() -> tuple[list[str], list[int]]:
        async with listening(["10.0.0.0/8"]) as (_, served, port):
            _, writer = await connect(port, v2(source="203.0.113.7") + GREETING)
            await served.done.wait()
            writer.close()
            return served.peers, served.first

    peers, first = asyncio.run(scenario())
    assert len(peers) == 1 and peers[0].startswith("127.0.0.1:")
    assert first == [SYNTAX]


def test_a_proxied_tls_connection_reads_not_a_byte_past_the_header(tmp_path: Path) -> None:
    issued = CertFactory(tmp_path).issue("server")
    door = TLSDoor(issued.server, 5)

    async def scenario() -> list[str]:
        async with listening(["127.0.0.1"], door) as (_, served, port):
            _, writer = await connect(port, v2(source="198.51.100.4"))
            await writer.start_tls(issued.pin.context(), server_hostname="127.0.0.1")
            writer.write(GREETING)
            await served.done.wait()
            writer.close()
            return served.peers

    assert asyncio.run(scenario()) == ["198.51.100.4:51000"]

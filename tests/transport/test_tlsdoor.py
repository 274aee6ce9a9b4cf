"""The TLS door on both event loops: a client whose TLS hello is already waiting in the
socket when the listener accepts it (a busy server, a fast client) gets its handshake, on
asyncio's loop and on uvloop's alike. The door never relies on winning a race against the
transport's first read."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from bitcoind_paychan.daemon.eventloop import EVENT_LOOPS, run
from bitcoind_paychan.transport import tcp
from bitcoind_paychan.transport.limits import PeerGate
from bitcoind_paychan.transport.tlsdoor import TLSDoor
from bitcoind_paychan.wire import pb
from tests.transport.certs import CertFactory
from tests.transport.test_proxyproto import GREETING, Served

CONNECTIONS = 8
GREETING_TYPE = pb.TwoWayChannelMessage.ERROR  # the greeting frame's message type


async def hello_first(port: int, context: ssl.SSLContext) -> tuple[socket.socket, ssl.SSLObject,
                                                                    ssl.MemoryBIO, ssl.MemoryBIO]:
    """Connect and put the TLS ClientHello on the wire without letting the loop run (blocking
    calls), so it waits in the server's socket before the server has accepted it."""
    sock = socket.create_connection(("127.0.0.1", port))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    sock.sendall(outgoing.read())
    sock.setblocking(False)
    return sock, tls, incoming, outgoing


async def finish(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
    """Finish the handshake through the loop, then send one frame over TLS."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if data := outgoing.read():
                await loop.sock_sendall(sock, data)
            received = await loop.sock_recv(sock, 65536)
            assert received, "the server hung up during the handshake"
            incoming.write(received)
    tls.write(GREETING)
    await loop.sock_sendall(sock, outgoing.read())


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_a_hello_waiting_before_the_accept_is_handshaken(tmp_path: Path, event_loop: str) -> None:
    issued = CertFactory(tmp_path).issue("server")

    async def scenario() -> int:
        served = Served()
        listener = tcp.Listener(PeerGate(), served, TLSDoor(issued.server, 10))
        _, port = await listener.listen("127.0.0.1", 0)
        context = issued.pin.context()
        try:
            clients = [await hello_first(port, context) for _ in range(CONNECTIONS)]
            async with asyncio.timeout(20):
                await asyncio.gather(*(finish(*client) for client in clients))
                while len(served.first) < CONNECTIONS:
                    await asyncio.sleep(0.01)
            for sock, *_ in clients:
                sock.close()
            return served.first.count(GREETING_TYPE)
        finally:
            await listener.stop()

    assert run(scenario(), event_loop) == CONNECTIONS

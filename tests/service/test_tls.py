"""TLS on the payment listener and in the client, on the in-process chain (the node is not
the point): channels over TLS (CA file or pinned fingerprint), and each bad certificate or
mismatched peer refused with one clear error on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.errors import ChannelFailed
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.transport import websocket
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS
from regtest.waiting import until
from tests.service.conftest import Duo, MemSides
from tests.transport.certs import CertFactory

VALUE = 500_000
SERVER_LOGS = ("bitcoind_paychan.service.server", "bitcoind_paychan.transport.tlsdoor",
               "bitcoind_paychan.transport.http")


@pytest.fixture
def sides(mem_sides: MemSides) -> MemSides:
    return mem_sides


@contextlib.asynccontextmanager
async def serving(sides: Duo, transport: str, tls: ServerTLS | None, secure: bool,
                  **options: Any) -> AsyncIterator[tuple[PaymentServer, str]]:
    """A server listening on `transport` (tcp, ws), over TLS with `tls`; yields it and the
    peer a client dials (a wss:// URL if `secure`)."""
    server = sides.server(tls=tls, **options)
    if transport == "tcp":
        host, port = await server.listen()
        try:
            yield server, f"{host}:{port}"
        finally:
            await server.stop()
        return
    await server.start()
    listener = websocket.Listener(server.gate, server.serve, "/paychan", server.tls_door())
    host, port = await listener.listen("127.0.0.1", 0)
    try:
        yield server, f"{'wss' if secure else 'ws'}://{host}:{port}/paychan"
    finally:
        listener.close()
        await server.stop()
        await listener.stop()


@pytest.mark.parametrize("transport", ["tcp", "ws"])
@pytest.mark.parametrize("trust", ["ca_file", "fingerprint"])
def test_open_pay_resume_settle_over_tls(sides: MemSides, tmp_path: Path, trust: str,
                                         transport: str) -> None:
    certs = CertFactory(tmp_path)
    issued = certs.issue("server")
    client_tls = certs.ca.trusted() if trust == "ca_file" else issued.pin

    async def scenario() -> str:
        async with serving(sides, transport, issued.server, True) as (_, peer):
            client = sides.client(tls={peer: client_tls})
            channel = await client.open_channel(peer, VALUE)
            for _ in range(10):
                await channel.pay(2_000)
            await channel.disconnect()
            channel = await client.open_channel(peer, VALUE)  # resumed, over TLS again
            assert channel.resumed
            await channel.pay(3_000)
            settlement = await channel.close()
            await client.stop()
        return settlement.txid_hex

    settlement = asyncio.run(scenario())
    assert sum(p.amount for p in sides.payments()) == 1_000 + 10 * 2_000 + 3_000
    sides.mine(1)
    assert sides.confirmations(settlement) == 1


@dataclass(frozen=True)
class Case:
    server: ServerTLS | None  # None: a plain listener
    client: ClientTLS | None  # None: a plain client
    client_says: str
    server_logs: str
    over_ws: tuple[str, str] | None = None  # (client_says, server_logs) where they differ


def bad_cases(tmp_path: Path) -> dict[str, Case]:
    certs = CertFactory(tmp_path)
    good = certs.issue("good")
    expired = certs.issue("expired", days=(-30, -1))
    stranger = certs.issue("stranger", self_signed=True)
    elsewhere = certs.issue("elsewhere", hosts=("pay.example.com",))
    hung_up = "hung up during the TLS handshake: a client does so when it does not trust"
    refused = "the client refused the server's certificate"
    return {
        "self-signed, not from the CA": Case(
            stranger.server, certs.ca.trusted(),
            "certificate is not signed by the CA in", hung_up),
        "self-signed, system CAs": Case(
            stranger.server, ClientTLS(), "not signed by the system's CAs", hung_up),
        "wrong fingerprint": Case(
            good.server, stranger.pin, "not the pinned sha256:", refused),
        "expired, CA file": Case(
            expired.server, certs.ca.trusted(), "its certificate has expired", hung_up),
        "expired, pinned": Case(expired.server, expired.pin, "certificate expired on", refused),
        "another host name": Case(
            elsewhere.server, certs.ca.trusted(), "does not name this host", hung_up),
        "TLS client, plain server": Case(
            None, good.pin, "the server does not speak TLS",
            "it speaks TLS, and this connection is plain TCP",
            ("the server does not speak TLS", "spoke TLS to this plain HTTP listener")),
        "plain client, TLS server": Case(
            good.server, None, "this server speaks TLS: connect with TLS",
            "the peer does not speak TLS (a plain client, as bitcoinj's)",
            ("speaks only TLS: use a wss:// URL", "the peer does not speak TLS")),
    }


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_each_bad_certificate_or_mismatch_is_one_clear_error_on_both_sides(
        sides: MemSides, tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str) -> None:
    cases = bad_cases(tmp_path)

    def server_lines(logs: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name in SERVER_LOGS
                and logs in r.getMessage()]

    async def attempt(name: str, case: Case, logs: str) -> tuple[str, list[str]]:
        caplog.clear()
        async with serving(sides, transport, case.server, case.client is not None) as (
                _, peer):
            client = sides.client(tls={peer: case.client} if case.client else {})
            try:
                await client.open_channel(peer, VALUE)
                error = "opened"
            except ChannelFailed as exc:
                error = str(exc)
            await until(lambda: server_lines(logs), what=f"the server's log line ({name})")
            await client.stop()
        return error, server_lines(logs)

    with caplog.at_level(logging.INFO):
        for name, case in cases.items():
            errors_before = len(sides.errors())
            says, logs = (case.over_ws if transport == "ws" and case.over_ws
                          else (case.client_says, case.server_logs))
            error, lines = asyncio.run(attempt(name, case, logs))
            assert says in error and "nothing was stored or spent" in error, (name, error)
            assert len(lines) == 1, (name, lines)
            if case.server is not None:  # a TLS listener counts it as a refused peer
                assert len(sides.errors()) == errors_before + 1, name
    assert sides.client().channels() == []
    assert sides.server().channels() == []
    assert not sides.client_node.wallet.locked


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_tls_handshakes_time_out_and_count_against_the_peer_gate(
        sides: MemSides, tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str) -> None:
    issued = CertFactory(tmp_path).issue("server")

    async def scenario() -> tuple[bytes, bytes]:
        async with serving(sides, transport, issued.server, True,
                           limits=PeerLimits(max_handshakes_per_ip=2),
                           handshake_timeout=1.0) as (_, peer):
            host, port = "127.0.0.1", int(peer.split(":")[-1].split("/")[0])
            silent = [await asyncio.open_connection(host, port) for _ in range(2)]
            third_reader, _ = await asyncio.open_connection(host, port)
            refused_at_once = await third_reader.read()  # over the limit: no handshake
            timed_out = await silent[0][0].read()  # the server gives up on a silent stranger
            await until(lambda: "no TLS handshake within 1.0 s" in caplog.text)
            client = sides.client(tls={peer: issued.pin})
            channel = await client.open_channel(peer, VALUE)  # the slots were given back
            await channel.pay(1_000)
            await client.stop()
        return refused_at_once, timed_out

    with caplog.at_level(logging.INFO):
        refused_at_once, timed_out = asyncio.run(scenario())
    assert refused_at_once == b"" and timed_out == b""
    assert len(sides.payments()) == 2

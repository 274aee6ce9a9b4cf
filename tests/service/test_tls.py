"""TLS on the payment listener and in the client, on real regtest nodes: channels over TLS
(CA file or pinned fingerprint), and each bad certificate or mismatched peer refused with
one clear error on both sides."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from bitcoind_paychan.service.client import ChannelFailed
from bitcoind_paychan.service.limits import PeerLimits
from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS
from tests.service.conftest import Sides, until
from tests.transport.certs import CertFactory

VALUE = 500_000
SERVER_LOG = "bitcoind_paychan.service.server"


@pytest.mark.parametrize("trust", ["ca_file", "fingerprint"])
def test_open_pay_resume_settle_over_tls(sides: Sides, tmp_path: Path, trust: str) -> None:
    certs = CertFactory(tmp_path)
    issued = certs.issue("server")
    client_tls = certs.ca.trusted() if trust == "ca_file" else issued.pin

    async def scenario() -> str:
        server = sides.server(tls=issued.server)
        host, port = await server.listen()
        client = sides.client(tls={f"{host}:{port}": client_tls})
        channel = await client.open(host, port, VALUE)
        for _ in range(10):
            await channel.pay(2_000)
        await channel.disconnect()
        channel = await client.open(host, port, VALUE)  # resumed, over TLS again
        assert channel.resumed
        await channel.pay(3_000)
        settlement = await channel.close()
        await client.stop()
        await server.stop()
        return settlement.txid_hex

    settlement = asyncio.run(scenario())
    assert sum(p.amount for p in sides.payments()) == 1_000 + 10 * 2_000 + 3_000
    sides.mine(1)
    assert sides.client_node.rpc("getrawtransaction", settlement, True)["confirmations"] == 1


@dataclass(frozen=True)
class Case:
    server: ServerTLS | None  # None: a plain TCP listener
    client: ClientTLS | None  # None: a plain TCP client
    client_says: str
    server_logs: str


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
            "it speaks TLS, and this connection is plain TCP"),
        "plain client, TLS server": Case(
            good.server, None, "this server speaks TLS: connect with TLS",
            "the peer does not speak TLS (a plain TCP client)"),
    }


def test_each_bad_certificate_or_mismatch_is_one_clear_error_on_both_sides(
        sides: Sides, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cases = bad_cases(tmp_path)

    def server_lines(case: Case) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == SERVER_LOG
                and case.server_logs in r.getMessage()]

    async def attempt(name: str, case: Case) -> tuple[str, list[str]]:
        caplog.clear()
        server = sides.server(tls=case.server)
        host, port = await server.listen()
        peer = f"{host}:{port}"
        client = sides.client(tls={peer: case.client} if case.client else {})
        try:
            await client.open(host, port, VALUE)
            error = "opened"
        except ChannelFailed as exc:
            error = str(exc)
        await until(lambda: server_lines(case), what=f"the server's log line ({name})")
        await client.stop()
        await server.stop()
        return error, server_lines(case)

    with caplog.at_level(logging.INFO):
        for name, case in cases.items():
            errors_before = len(sides.errors())
            error, lines = asyncio.run(attempt(name, case))
            assert case.client_says in error and "nothing was stored or spent" in error, name
            assert len(lines) == 1, (name, lines)
            if case.server is not None:  # a TLS listener counts it as a refused peer
                assert len(sides.errors()) == errors_before + 1, name
    assert sides.client().channels() == []
    assert sides.server().channels() == []
    assert sides.client_node.wallet_rpc("listlockunspent") == []


def test_tls_handshakes_time_out_and_count_against_the_peer_gate(
        sides: Sides, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    issued = CertFactory(tmp_path).issue("server")

    async def scenario() -> tuple[bytes, bytes]:
        server = sides.server(tls=issued.server, limits=PeerLimits(max_handshakes_per_ip=2),
                              handshake_timeout=1.0)
        host, port = await server.listen()
        silent = [await asyncio.open_connection(host, port) for _ in range(2)]
        third_reader, _ = await asyncio.open_connection(host, port)
        refused_at_once = await third_reader.read()  # over the limit: hung up, no handshake
        timed_out = await silent[0][0].read()  # the server gives up on the silent stranger
        await until(lambda: "no TLS handshake within 1.0 s" in caplog.text)
        client = sides.client(tls={f"{host}:{port}": issued.pin})
        channel = await client.open(host, port, VALUE)  # the slots were given back
        await channel.pay(1_000)
        await client.stop()
        await server.stop()
        return refused_at_once, timed_out

    with caplog.at_level(logging.INFO):
        refused_at_once, timed_out = asyncio.run(scenario())
    assert refused_at_once == b"" and timed_out == b""
    assert len(sides.payments()) == 2

"""The WebSocket transport end to end on the in-process chain (the transport is the point; a
client daemon pays a server daemon over WebSocket on real nodes in tests/daemon): a channel
opened, paid, resumed and settled over ws://, and a peer that breaks the rules refused as on
TCP."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import ChannelFailed, ErrorCode
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.transport import websocket
from bitcoind_paychan.transport.base import Stream
from bitcoind_paychan.transport.limits import Admission, PeerGate, PeerLimits
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.wire import MAX_MESSAGE_SIZE, encode_message, error_code, pb
from tests.service.conftest import MemSides

T = pb.TwoWayChannelMessage
VALUE = 500_000



@pytest.fixture
def sides(mem_sides: MemSides) -> MemSides:
    return mem_sides

async def ws_server(sides: MemSides, path: str = "/paychan") -> tuple[PaymentServer,
                                                                   websocket.Listener, str]:
    server = sides.server()
    await server.start()
    listener = websocket.Listener(server.gate, server.serve, path)
    host, port = await listener.listen("127.0.0.1", 0)
    return server, listener, f"ws://{host}:{port}{path}"


def test_open_pay_resume_and_settle_over_websocket(sides: MemSides) -> None:
    async def scenario() -> tuple[str, str, bool, int]:
        server, listener, url = await ws_server(sides)
        client = sides.client()
        channel = await client.open(url, value=VALUE)
        for i in range(20):
            await channel.pay(1_000, f"item {i}".encode())
        await channel.disconnect()
        resumed = await client.open(url, value=VALUE)
        acks = await asyncio.gather(*(resumed.pay(500) for _ in range(30)))  # pipelined
        assert acks == [b""] * 30
        settlement = await resumed.close()
        await client.stop()
        listener.close()
        await server.stop()
        await listener.stop()
        return channel.contract_txid, settlement.txid_hex, resumed.resumed, resumed.paid

    contract, settlement, resumed, paid = asyncio.run(scenario())
    assert resumed
    assert paid == 1_000 + 20 * 1_000 + 30 * 500
    assert [p.amount for p in sides.payments()] == [1_000] + [1_000] * 20 + [500] * 30
    sides.mine(1)
    assert sides.confirmations(settlement) == 1
    record = sides.store("server").get(Role.SERVER, contract)
    assert record is not None and record.status is ChannelStatus.CLOSING
    assert record.paid == paid
    client_record = sides.store("client").get(Role.CLIENT, contract)
    assert client_record is not None and client_record.peer.startswith("ws://127.0.0.1:")


async def exchange(url: str, send: list[bytes | str]) -> tuple[list[aiohttp.WSMessage], int | None]:
    """Send raw WebSocket messages; what came back until the server closed, and its close
    code."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for data in send:
            if isinstance(data, str):
                await ws.send_str(data)
            else:
                await ws.send_bytes(data)
        received = []
        async for message in ws:
            received.append(message)
        return received, ws.close_code


def test_junk_a_text_message_and_an_oversized_message_are_refused(sides: MemSides) -> None:
    async def scenario() -> dict[str, tuple[list[ErrorCode], int | None]]:
        server, listener, url = await ws_server(sides)
        hello = encode_message(messages.client_version(2, messages.DEFAULT_TIME_WINDOW, None))
        outcomes = {}
        sends: dict[str, list[bytes | str]] = {
            "junk": [b"\xff\x00junk"], "text": ["hello"],
            "oversized": [bytes(MAX_MESSAGE_SIZE + 1)], "junk after hello": [hello, b"\x08\x63"]}
        for name, sent in sends.items():
            received, code = await exchange(url, sent)
            replies = [T.FromString(m.data) for m in received
                       if m.type is aiohttp.WSMsgType.BINARY]
            outcomes[name] = ([error_code(r.error) for r in replies if r.type == T.ERROR],
                              code)
        listener.close()
        await server.stop()
        await listener.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes["junk"][0] == [ErrorCode.SYNTAX_ERROR]
    assert outcomes["text"][0] == [ErrorCode.SYNTAX_ERROR]
    assert outcomes["junk after hello"][0] == [ErrorCode.SYNTAX_ERROR]
    assert outcomes["oversized"][1] == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert sides.errors() == []  # nothing reached a channel: no channel events


def test_a_silent_peer_is_timed_out_and_the_gate_counts_websocket_peers(sides: MemSides) -> None:
    async def scenario() -> tuple[list[ErrorCode], int]:
        server = sides.server(handshake_timeout=0.5,
                              limits=PeerLimits(max_handshakes_per_ip=1))
        await server.start()
        listener = websocket.Listener(server.gate, server.serve, "/")
        host, port = await listener.listen("127.0.0.1", 0)
        url = f"ws://{host}:{port}/"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as idle:
            try:
                await session.ws_connect(url)
                refused = 0
            except aiohttp.WSServerHandshakeError as exc:
                refused = exc.status
            silence = [T.FromString(m.data) async for m in idle
                       if m.type is aiohttp.WSMsgType.BINARY]
        listener.close()
        await server.stop()
        await listener.stop()
        return [error_code(m.error) for m in silence], refused

    codes, refused = asyncio.run(scenario())
    assert refused == 429  # a second handshake from the same address
    assert codes == [ErrorCode.TIMEOUT]


def test_a_wrong_path_is_a_clear_error_that_spends_nothing(sides: MemSides) -> None:
    async def scenario() -> str:
        server, listener, url = await ws_server(sides)
        client = sides.client()
        try:
            await client.open(url + "/wrong", value=VALUE)
        except ChannelFailed as exc:
            return str(exc)
        finally:
            await client.stop()
            listener.close()
            await server.stop()
            await listener.stop()
        raise AssertionError("opened over a wrong path")

    error = asyncio.run(scenario())
    assert "refused the WebSocket upgrade: 404" in error
    assert "nothing was stored or spent" in error
    assert sides.store("client").channels(Role.CLIENT) == []


async def through_proxy(trusted: list[str]) -> tuple[list[int], list[str]]:
    """Connections from 127.0.0.1 (the proxy) naming clients in X-Forwarded-For, one
    handshake per address allowed: the status of each upgrade, the peers as served."""
    served: list[str] = []

    async def serve(stream: Stream, admission: Admission) -> None:
        served.append(stream.peername)
        await stream.receive(None)  # hold the handshake slot until the client leaves

    gate = PeerGate(PeerLimits(max_handshakes_per_ip=1))
    listener = websocket.Listener(gate, serve, "/paychan",
                                  trusted_proxies=TrustedProxies.parse(trusted))
    host, port = await listener.listen("127.0.0.1", 0)
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        open_ones = []
        for forwarded in ("203.0.113.7", "198.51.100.9", "203.0.113.7",
                          "198.51.100.9, 203.0.113.7"):  # the client's own header, appended
            try:
                ws = await session.ws_connect(f"ws://{host}:{port}/paychan",
                                              headers={"X-Forwarded-For": forwarded})
                open_ones.append(ws)
                statuses.append(101)
            except aiohttp.WSServerHandshakeError as exc:
                statuses.append(exc.status)
        for ws in open_ones:
            await ws.close()
    listener.close()
    await listener.stop()
    return statuses, served


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    statuses, served = asyncio.run(through_proxy(["10.0.0.0/8"]))
    assert statuses == [101, 429, 429, 429]  # every client is the proxy's one address
    assert served[0].startswith("127.0.0.1:") and "203.0.113.7" not in served[0]


def test_forwarded_for_from_a_trusted_proxy_names_the_client_for_limits_and_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "bitcoind_paychan.transport.limits"):
        statuses, served = asyncio.run(through_proxy(["127.0.0.1"]))
    assert statuses == [101, 101, 429, 429]  # one handshake per client, not per proxy
    assert [name.split(" (via ")[0] for name in served] == ["203.0.113.7", "198.51.100.9"]
    assert all(" (via 127.0.0.1:" in name for name in served)
    refusals = [r.getMessage() for r in caplog.records]
    assert refusals and "hanging up on 203.0.113.7" in refusals[0]

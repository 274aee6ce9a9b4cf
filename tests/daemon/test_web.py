"""The daemon's HTTP listeners' limits (aiohttp), over real sockets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from bitcoind_paychan.daemon.web import MAX_BODY, WebServer, read_body

Scenario = Callable[[int, list[bytes]], Awaitable[None]]


def serve(scenario: Scenario, timeout: float = 5.0) -> None:
    async def main() -> None:
        seen: list[bytes] = []

        async def echo(request: web.Request) -> web.Response:
            if request.path == "/boom":
                raise RuntimeError("handler bug")
            body = await read_body(request, timeout=timeout)
            seen.append(body)
            return web.Response(body=f"{request.method} {request.path_qs} ".encode() + body)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        server = WebServer(app, "127.0.0.1", 0)
        host, port = await server.start()
        assert host == "127.0.0.1" and port > 0
        try:
            await scenario(port, seen)
        finally:
            await server.stop()

    asyncio.run(main())


async def exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send `raw` (adding Host and Connection: close), then read the answer until the
    server closes the connection."""
    line, crlf, rest = raw.partition(b"\r\n")
    if crlf and b"host:" not in rest.lower():  # HTTP/1.1 requires it
        raw = line + b"\r\nHost: localhost\r\nConnection: close\r\n" + rest
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        writer.close()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_good_request() -> None:
    async def scenario(port: int, seen: list[bytes]) -> None:
        answer = await exchange(port, b"POST /x?y=1 HTTP/1.1\r\nHost: h\r\nConnection: close"
                                      b"\r\nContent-Length: 5\r\n\r\nhello")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"\r\n\r\nPOST /x?y=1 hello")
        assert seen == [b"hello"]

    serve(scenario)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
])
def test_malformed_request_is_400(raw: bytes) -> None:
    async def scenario(port: int, seen: list[bytes]) -> None:
        answer = await exchange(port, raw)
        assert status(answer) == 400, answer[:100]
        assert seen == []

    serve(scenario)


def test_huge_body_is_413_without_reading_it() -> None:
    async def scenario(port: int, seen: list[bytes]) -> None:
        answer = await exchange(port, f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}"
                                      "\r\n\r\n".encode())
        assert status(answer) == 413 and seen == []
        answer = await exchange(port, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      + b"%x\r\n" % (MAX_BODY + 1) + bytes(MAX_BODY + 1)
                                      + b"\r\n0\r\n\r\n")
        assert status(answer) == 413 and seen == []
        answer = await exchange(port, f"POST / HTTP/1.1\r\nConnection: close\r\nContent-Length"
                                      f": {MAX_BODY}\r\n\r\n".encode() + bytes(MAX_BODY))
        assert status(answer) == 200 and len(seen[0]) == MAX_BODY  # exactly the cap is fine

    serve(scenario)


def test_long_header_and_too_many_headers() -> None:
    async def scenario(port: int, seen: list[bytes]) -> None:
        answer = await exchange(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert status(answer) in (400, 431)
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(200))
        answer = await exchange(port, b"GET / HTTP/1.1\r\n" + many + b"\r\n")
        assert status(answer) in (400, 431) and seen == []

    serve(scenario)


def test_a_body_that_never_comes_is_408() -> None:
    async def scenario(port: int, seen: list[bytes]) -> None:
        answer = await exchange(port, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        assert status(answer) == 408 and seen == []

    serve(scenario, timeout=0.3)


def test_headers_that_never_end_are_dropped() -> None:
    async def main() -> None:
        server = WebServer(web.Application(), "127.0.0.1", 0, idle_timeout=0.3)
        _, port = await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: slow")
            async with asyncio.timeout(10):
                assert await reader.read(-1) == b""
            writer.close()
        finally:
            await server.stop()

    asyncio.run(main())


def test_server_survives_garbage_and_failures() -> None:
    async def scenario(port: int, seen: list[bytes]) -> None:
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(os.urandom(50_000))
            writer.close()  # abrupt: the answer has nowhere to go
        answer = await exchange(port, os.urandom(3000).replace(b"\n", b"") + b"\r\n\r\n")
        assert status(answer) in (400, 431)
        answer = await exchange(port, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert status(answer) == 500  # a handler that raises
        answer = await exchange(port, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert status(answer) == 200 and answer.endswith(b"GET /ok ")

    serve(scenario)


def test_stop_closes_idle_connections_and_stops_listening() -> None:
    async def main() -> None:
        server = WebServer(web.Application(), "127.0.0.1", 0)
        _, port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            await server.stop()
            await reader.read(-1)
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.stop()  # twice is fine

    asyncio.run(main())

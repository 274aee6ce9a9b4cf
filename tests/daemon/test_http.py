"""The daemon's minimal HTTP server, over real sockets."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import pytest

from bitcoind_paychan.daemon.http import MAX_BODY, HttpServer, Request, Response

Scenario = Callable[[HttpServer, int, list[Request]], Awaitable[None]]


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    text = f"{request.method} {request.path} {request.headers.get('x-test', '-')} "
    return Response(200, text.encode() + request.body, "text/plain", {"X-Echo": "yes"})


def serve(scenario: Scenario, read_timeout: float = 5.0) -> None:
    async def main() -> None:
        seen: list[Request] = []

        async def handler(request: Request) -> Response:
            seen.append(request)
            return await echo(request)

        server = HttpServer(handler, "127.0.0.1", 0, read_timeout=read_timeout)
        host, port = await server.start()
        assert host == "127.0.0.1" and port > 0
        try:
            await scenario(server, port, seen)
        finally:
            await server.stop()

    asyncio.run(main())


async def exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send `raw`, then read the answer until the server closes the connection."""
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


def split(answer: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return headers, body


def test_good_request() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        answer = await exchange(port, b"POST /x?y=1 HTTP/1.1\r\nHost: h\r\nX-Test: abc\r\n"
                                      b"Content-Length: 5\r\n\r\nhello")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        headers, body = split(answer)
        assert body == b"POST /x?y=1 abc hello"
        assert headers["content-length"] == str(len(body))
        assert headers["content-type"] == "text/plain"
        assert headers["connection"] == "close"
        assert headers["x-echo"] == "yes"
        assert seen[0].headers == {"host": "h", "x-test": "abc", "content-length": "5"}
        assert seen[0].body == b"hello"

    serve(scenario)


def test_keep_alive_is_answered_then_closed() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        # Two pipelined requests: the first is answered, then the connection closes.
        answer = await exchange(port, b"GET /a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
                                      b"GET /b HTTP/1.1\r\n\r\n")
        assert answer.count(b"HTTP/1.1") == 1
        assert split(answer)[1] == b"GET /a - "
        assert [r.path for r in seen] == ["/a"]

    serve(scenario)


def test_expect_continue_and_head() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        answer = await exchange(port, b"POST /c HTTP/1.1\r\nExpect: 100-continue\r\n"
                                      b"Content-Length: 2\r\n\r\nok")
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"POST /c - ok")
        answer = await exchange(port, b"HEAD /h HTTP/1.1\r\n\r\n")
        headers, body = split(answer)
        assert status(answer) == 200 and body == b"" and headers["content-length"] == "10"

    serve(scenario)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET /\xff HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
])
def test_malformed_request_is_400(raw: bytes) -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        answer = await exchange(port, raw)
        assert status(answer) == 400, answer
        assert seen == []

    serve(scenario)


def test_chunked_is_501() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        answer = await exchange(port, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"2\r\nab\r\n0\r\n\r\n")
        assert status(answer) == 501 and seen == []

    serve(scenario)


def test_huge_body_is_413_without_reading_it() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        answer = await exchange(port, f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}"
                                      "\r\n\r\n".encode())
        assert status(answer) == 413 and seen == []
        # A client that sends the body anyway still gets the answer.
        answer = await exchange(port, f"POST / HTTP/1.1\r\nContent-Length: {2 * MAX_BODY}"
                                      "\r\n\r\n".encode() + bytes(2 * MAX_BODY))
        assert status(answer) == 413 and seen == []
        # Exactly the cap is fine.
        answer = await exchange(port, f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY}"
                                      "\r\n\r\n".encode() + bytes(MAX_BODY))
        assert status(answer) == 200 and len(seen[0].body) == MAX_BODY

    serve(scenario)


def test_long_header_and_too_many_headers() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        answer = await exchange(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert status(answer) == 431
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(200))
        answer = await exchange(port, b"GET / HTTP/1.1\r\n" + many + b"\r\n")
        assert status(answer) == 431 and seen == []

    serve(scenario)


def test_slow_client_times_out() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        # Headers never finish; then a body that never comes.
        for raw in (b"GET / HTTP/1.1\r\nHost: slow", b"POST / HTTP/1.1\r\nContent-Length: 10"
                                                      b"\r\n\r\nabc"):
            started = time.monotonic()
            answer = await exchange(port, raw)
            assert status(answer) == 408
            assert time.monotonic() - started < 3
        # A client dribbling bytes does not extend its deadline.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        with_answer = b""
        for _ in range(20):
            writer.write(b"X")
            await asyncio.sleep(0.05)
            if reader.at_eof():
                break
        async with asyncio.timeout(3):
            with_answer = await reader.read(-1)
        writer.close()
        assert status(with_answer) == 408
        assert seen == []

    serve(scenario, read_timeout=0.3)


def test_server_survives_garbage_and_failures() -> None:
    async def scenario(server: HttpServer, port: int, seen: list[Request]) -> None:
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(os.urandom(50_000))
            writer.close()  # abrupt: the answer has nowhere to go
        answer = await exchange(port, os.urandom(3000).replace(b"\n", b"") + b"\r\n\r\n")
        assert status(answer) in (400, 431)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()  # connect and hang up at once
        answer = await exchange(port, b"GET /boom HTTP/1.1\r\n\r\n")
        assert status(answer) == 500  # a handler that raises
        answer = await exchange(port, b"GET /ok HTTP/1.1\r\n\r\n")
        assert status(answer) == 200 and split(answer)[1] == b"GET /ok - "

    serve(scenario)


def test_stop_drops_idle_connections_and_stops_listening() -> None:
    async def main() -> None:
        server = HttpServer(echo, "127.0.0.1", 0)
        _, port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        async with asyncio.timeout(3):
            await server.stop()
            assert await reader.read(-1) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.stop()  # twice is fine

    asyncio.run(main())


def test_stop_lets_a_running_handler_answer() -> None:
    async def main() -> None:
        entered = asyncio.Event()

        async def slow(request: Request) -> Response:
            entered.set()
            await asyncio.sleep(0.2)
            return Response(200, b"done")

        server = HttpServer(slow, "127.0.0.1", 0)
        _, port = await server.start()
        call = asyncio.create_task(exchange(port, b"GET / HTTP/1.1\r\n\r\n"))
        await entered.wait()
        await server.stop()
        answer = await call
        assert status(answer) == 200 and answer.endswith(b"done")

    asyncio.run(main())

"""A minimal asyncio HTTP/1.1 server for the daemon's localhost endpoints (control API, metrics).

One request per connection: the server reads the request line, the headers and a
`Content-Length` body, awaits the handler, writes the response with `Connection: close` and
closes (a client asking for keep-alive is simply closed after its answer). Bodies above
`MAX_BODY` are refused with 413 without being read; malformed requests get 400, chunked
bodies 501, and a client that has not sent its whole request within `read_timeout` seconds
gets 408. A handler that raises gets 500 (logged); nothing a client does stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB
MAX_LINE = 8192  # request line or one header line
MAX_HEADERS = 100
READ_TIMEOUT = 10.0  # seconds to receive a whole request
WRITE_TIMEOUT = 10.0  # seconds to hand a response to a slow reader
STOP_GRACE = 5.0  # seconds stop() lets running handlers finish their answer

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/1\.[0-9]")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the request target as sent, query string included
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)  # extra headers


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    """The request cannot be served; answer `status` with `message` and close."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def text_response(status: HTTPStatus | int, message: str) -> Response:
    return Response(int(status), (message + "\n").encode())


class HttpServer:
    """Serves `handler` on `host:port` (port 0: any free port; `start()` says which)."""

    def __init__(self, handler: Handler, host: str, port: int, *,
                 read_timeout: float = READ_TIMEOUT, max_body: int = MAX_BODY) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.read_timeout = read_timeout
        self.max_body = max_body
        self._server: asyncio.Server | None = None
        self._reading: set[asyncio.Task[None]] = set()  # connections not yet handled
        self._handling: set[asyncio.Task[None]] = set()  # handlers running

    async def start(self) -> tuple[str, int]:
        """Listen; the bound (host, port)."""
        self._server = await asyncio.start_server(self._connection, self.host, self.port,
                                                  limit=MAX_LINE)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def stop(self) -> None:
        """Stop listening, drop idle connections, let running handlers answer (briefly)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._reading):
            task.cancel()
        current = asyncio.current_task()  # a handler may itself await stop()
        handling = {task for task in self._handling if task is not current}
        if handling:
            await asyncio.wait(handling, timeout=STOP_GRACE)
        for task in handling:
            task.cancel()
        pending = {task for task in self._reading | self._handling if task is not current}
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if current not in self._handling:  # (3.12+ would wait for the caller's connection)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._reading.add(task)
        try:
            response, method = await self._serve(reader, writer, task)
            await self._write(writer, response, method)
            if not method:  # refused before the body was read: let the client see the answer
                await _discard(reader)
        except asyncio.CancelledError:
            pass  # the server is stopping
        except (ConnectionError, TimeoutError) as exc:
            log.debug("http client %s: %s", _peer(writer), exc)
        except Exception:
            log.exception("http connection from %s failed", _peer(writer))
        finally:
            self._reading.discard(task)
            self._handling.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     task: asyncio.Task[None]) -> tuple[Response, str]:
        """The response to the connection's request, and the request's method ("" when the
        request was refused before its body was read)."""
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await self._read_head(reader)
                body = await self._read_body(reader, writer, head)
        except _BadRequest as bad:
            return text_response(bad.status, bad.message), ""
        except TimeoutError:
            return text_response(HTTPStatus.REQUEST_TIMEOUT, "request not received in time"), ""
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("client closed the connection mid-request") from None
        request = Request(head.method, head.path, head.headers, body)
        self._reading.discard(task)
        self._handling.add(task)
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("http handler failed on %s %s", request.method, request.path)
            response = text_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
        return response, request.method

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes:
        try:
            line = await reader.readuntil(b"\n")
        except (asyncio.LimitOverrunError, ValueError):
            raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                              "request line or header too long") from None
        return line.rstrip(b"\r\n")

    async def _read_head(self, reader: asyncio.StreamReader) -> Request:
        """The request line and headers (the body is still to be read)."""
        line = await self._read_line(reader)
        while not line:  # RFC 9112 2.2: ignore empty lines before the request line
            line = await self._read_line(reader)
        parts = line.split(b" ")
        if (len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]
                or not _VERSION.fullmatch(parts[2])):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
        try:
            method, path = parts[0].decode("ascii"), parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line") from None
        if not path.isprintable():
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request target")
        headers: dict[str, str] = {}
        while True:
            line = await self._read_line(reader)
            if not line:
                break
            if len(headers) >= MAX_HEADERS:
                raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            if key in headers:
                if key == "content-length" and headers[key] != text:
                    raise _BadRequest(HTTPStatus.BAD_REQUEST, "conflicting Content-Length")
                text = f"{headers[key]}, {text}" if key != "content-length" else text
            headers[key] = text
        return Request(method, path, headers, b"")

    async def _read_body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         request: Request) -> bytes:
        if "transfer-encoding" in request.headers:
            raise _BadRequest(HTTPStatus.NOT_IMPLEMENTED,
                              "Transfer-Encoding is not supported; send Content-Length")
        length_text = request.headers.get("content-length")
        if length_text is None:
            return b""
        if not length_text.isascii() or not length_text.isdigit():
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
        length = int(length_text)
        if length > self.max_body:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"body over {self.max_body} bytes")
        if length and request.headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await reader.readexactly(length)

    async def _write(self, writer: asyncio.StreamWriter, response: Response,
                     method: str) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        head = [f"HTTP/1.1 {response.status} {reason}",
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}",
                "Connection: close"]
        head += [f"{name}: {value}" for name, value in response.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            writer.write(response.body)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()


async def _discard(reader: asyncio.StreamReader, seconds: float = 1.0,
                   limit: int = 4 * MAX_BODY) -> None:
    """Read and drop what the client still sends, briefly: closing a socket with unread
    data resets the connection, and the client might lose the answer before reading it."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while limit > 0:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                limit -= len(chunk)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

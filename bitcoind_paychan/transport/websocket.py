"""WebSocket, for servers behind HTTP reverse proxies: one binary WebSocket message per protocol
message (no length prefix), on a configurable path. The one place WebSocket connections are
opened, by a server (`Listener`) or a client (`connect`).

Limits as on TCP: the server's PeerGate per address (over it: 429 before the upgrade; behind
trusted reverse proxies, the client's address their header names, `proxies`), the
protocol's largest message (32,767 bytes accepted, as on TCP; a larger one closes the
connection with WebSocket code 1009, message too big; aiohttp refuses a message of
`max_msg_size` itself, so it is given the limit plus one), the manager's handshake timeout; a
text message or junk is answered with ERROR (SYNTAX_ERROR) and a hang-up; an unmasked client
frame closes it with 1002 (RFC 6455; `wsmask.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from aiohttp import web

from bitcoind_paychan.errors import ErrorCode, RemoteProtocolError, TLSError
from bitcoind_paychan.reasons import connection_failure
from bitcoind_paychan.transport.base import Connections, Inbox, Stream, encode
from bitcoind_paychan.transport.http import WebServer
from bitcoind_paychan.transport.limits import Admission, PeerGate
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.tls import ClientTLS, handshake_failed, refusal
from bitcoind_paychan.transport.tlsdoor import TLS_ONLY_HEADER, TLSDoor
from bitcoind_paychan.transport.wsmask import MaskedWebSocketResponse
from bitcoind_paychan.wire import pb
from bitcoind_paychan.wire.framing import MAX_MESSAGE_SIZE, check_size

log = logging.getLogger(__name__)
Serve = Callable[[Stream, Admission], Awaitable[None]]
BUFFERED = 64  # messages read ahead of the channel (pipelined payments handled together)
CLOSE_TIMEOUT = 5.0
WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class WebSocketStream:
    """One WebSocket connection as a Stream. A reader task keeps up to BUFFERED messages read
    ahead, so payments already received are handled together (`receive_buffered`)."""

    def __init__(self, ws: WebSocket, peername: str,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._ws = ws
        self._session = session  # a client's, closed with the connection
        self._inbox = Inbox(peername, BUFFERED)
        self._reader = asyncio.ensure_future(self._read())
        self._closed = False

    @property
    def peername(self) -> str:
        return self._inbox.peername

    async def _read(self) -> None:
        """Move messages from the socket to the inbox until the peer leaves or breaks a rule."""
        end: RemoteProtocolError | None = None
        try:
            while True:
                await self._inbox.room()
                message = await self._ws.receive()
                if message.type is aiohttp.WSMsgType.BINARY:
                    self._inbox.put(message.data)
                    continue
                if message.type is aiohttp.WSMsgType.TEXT:
                    end = RemoteProtocolError(
                        f"{self.peername} sent a text message; the protocol's are binary",
                        code=ErrorCode.SYNTAX_ERROR)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    end = RemoteProtocolError(f"{self.peername}: {message.data}",
                                              code=ErrorCode.SYNTAX_ERROR)
                return  # CLOSE, CLOSING, CLOSED: the peer has left
        except (aiohttp.ClientError, ConnectionError) as exc:
            log.info("reading from %s failed: %s", self.peername, exc)
        finally:
            self._inbox.put(end)

    async def receive(self, timeout: float | None) -> pb.TwoWayChannelMessage | None:
        return await self._inbox.receive(timeout)

    def receive_buffered(self) -> pb.TwoWayChannelMessage | None:
        return self._inbox.receive_buffered()

    async def send(self, message: pb.TwoWayChannelMessage) -> None:
        await self.send_frames(encode([message]))

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            check_size(frame)
        for frame in frames:
            await self._ws.send_bytes(frame)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._ws.close()
        except (TimeoutError, ConnectionError, aiohttp.ClientError):
            pass
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if self._session is not None:
            await self._session.close()


async def connect(url: str, timeout: float | None,
                  tls: ClientTLS | None = None) -> WebSocketStream:
    """Connect to a payment channel server at a ws:// (wss://) URL; TimeoutError after
    `timeout` seconds, ConnectionError if the server refuses the upgrade. A wss:// server is
    verified by `tls` (default: the system's CAs); TLSError if it fails the checks."""
    secure = url.startswith("wss://")
    if tls is not None and not secure:
        raise TLSError(f"{url} is configured with TLS but is a ws:// URL: use wss://")
    tls = (tls or ClientTLS()) if secure else None
    session = aiohttp.ClientSession()
    try:
        async with asyncio.timeout(timeout):
            ws = await session.ws_connect(url, max_msg_size=MAX_MESSAGE_SIZE + 1, autoping=True,
                                          ssl=tls.context() if tls else True)
        if tls is not None:
            await _check(ws, url, tls)
    except TimeoutError:
        await session.close()
        raise TimeoutError(f"connecting to {url} timed out after {timeout} s") from None
    except aiohttp.ClientSSLError as exc:
        await session.close()
        assert tls is not None
        raise _tls_failed(exc, url, tls) from exc
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        if exc.headers and TLS_ONLY_HEADER in exc.headers:
            raise TLSError(f"{url} speaks only TLS: use a wss:// URL") from exc
        raise ConnectionError(f"{url} refused the WebSocket upgrade: {exc.status} "
                              f"{exc.message}") from exc
    except aiohttp.ClientConnectorError as exc:
        await session.close()
        raise exc.os_error from None  # refused, unreachable, no such host: said by the caller
    except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError) as exc:
        await session.close()
        raise ConnectionError(f"the peer at {url} does not answer in HTTP: it is not a "
                              "WebSocket listener (a paychan TCP port is reached as "
                              "host:port)") from exc
    except aiohttp.ClientError as exc:
        await session.close()
        raise ConnectionError(f"cannot connect to {url}: {connection_failure(exc)}") from exc
    except BaseException:
        await session.close()
        raise
    return WebSocketStream(ws, url, session)


async def _check(ws: aiohttp.ClientWebSocketResponse, url: str, tls: ClientTLS) -> None:
    """`tls`'s own checks (pin, dates) on the server's certificate; on failure tell the
    server why, then hang up."""
    ssl_object = ws.get_extra_info("ssl_object")
    try:
        tls.check(ssl_object.getpeercert(binary_form=True) if ssl_object else None, url)
    except TLSError as exc:
        await ws.send_bytes(refusal(exc))
        await ws.close()
        raise


def _tls_failed(exc: aiohttp.ClientSSLError, url: str, tls: ClientTLS) -> TLSError:
    cause = (exc.certificate_error if isinstance(exc, aiohttp.ClientConnectorCertificateError)
             else exc.os_error)
    if isinstance(cause, ssl.SSLError | ConnectionError):
        return handshake_failed(cause, url, tls)
    return TLSError(f"TLS with {url} failed: {exc}")


class Listener:
    """Accepts WebSocket connections on `path`: each client's address through `gate`, then
    `serve(stream, admission)`; the stream is closed when it returns. A connection from one
    of `trusted_proxies` is counted and logged by the client address their header names."""

    def __init__(self, gate: PeerGate, serve: Serve, path: str = "/",
                 door: TLSDoor | None = None, *,
                 trusted_proxies: TrustedProxies | None = None) -> None:
        self.gate = gate
        self.path = path
        self.door = door  # TLS (wss://): each connection's handshake, after the gate
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self._web: WebServer | None = None
        self._connections: Connections[WebSocketStream] = Connections(serve)
        self._accepting = True

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Accept connections on host:port; returns the bound (host, port)."""
        app = web.Application()
        app.router.add_get(self.path, self._accept)
        self._web = WebServer(app, host, port, door=self.door, gate=self.gate)
        return await self._web.start()

    def close(self) -> None:
        """Accept no more connections."""
        self._accepting = False

    async def stop(self) -> None:
        """Accept no more; end every connection."""
        self.close()
        await self._connections.stop()
        if self._web is not None:
            await self._web.stop()

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        if not self._accepting:
            raise web.HTTPServiceUnavailable(text="the payment server is stopping\n")
        proxies = self.trusted_proxies
        client = proxies.client(request.remote or "", request.headers.getall(proxies.header, []))
        admission = self.gate.admit(client)
        if admission is None:  # over a per-peer limit: refused before the upgrade
            raise web.HTTPTooManyRequests(text="too many connections from your address\n")
        ws = MaskedWebSocketResponse(max_msg_size=MAX_MESSAGE_SIZE + 1, autoping=True)
        try:
            await ws.prepare(request)
        except BaseException:
            admission.release()
            raise
        await self._connections.run(WebSocketStream(ws, _peername(request, client)), admission)
        return ws


def _peername(request: web.Request, client: str) -> str:
    """The peer for logs: its address and port, or the client a trusted proxy names (via)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    name = request.remote or "unknown peer"
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        name = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return name if client == (request.remote or "") else f"{client} (via {name})"

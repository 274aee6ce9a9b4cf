"""Listening sockets whose connections are handed over raw: accepted, nothing read.

A transport starts reading as soon as it exists (uvloop's even before a `connection_made`
that pauses it takes effect), so whatever must see a connection's first bytes untouched (the
PROXY header, the TLS door's peek) runs on the accepted socket, before any transport is made.
`Acceptor` is the one place the server side listens on TCP; each accepted socket is handled
in its own task by `handle(sock)`; a socket it has not handed over to a transport
(`hand_over`) is closed when it returns.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import cast

log = logging.getLogger(__name__)

BACKLOG = 100  # asyncio's default
RETRY_AFTER_EMFILE = 1.0  # seconds, as asyncio's own accept loop waits


class Acceptor:
    """Listens on host:port; `handle(sock)` gets each accepted, non-blocking socket."""

    def __init__(self, handle: Callable[[socket.socket], Awaitable[None]]) -> None:
        self.handle = handle
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: list[asyncio.Task[None]] = []

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind every address `host` names (all of this machine's for ""), as asyncio's
        create_server does (SO_REUSEADDR, IPv6 only on IPv6 sockets); the first bound (host,
        port). OSError as bind raises it."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        seen: set[tuple[int, object]] = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except BaseException:
            self._close_sockets()
            raise
        self._accepting = [asyncio.create_task(self._accept(sock)) for sock in self._sockets]
        bound = self._sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Accept no more connections (those accepted go on)."""
        for task in self._accepting:
            task.cancel()
        self._close_sockets()

    async def stop(self) -> None:
        """Accept no more; end every connection's task."""
        self.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._accepting, *self._tasks, return_exceptions=True)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listening)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept connections: %s; trying again in %g s (raise "
                              "the file descriptor limit)", exc.strerror, RETRY_AFTER_EMFILE)
                    await asyncio.sleep(RETRY_AFTER_EMFILE)
                    continue
                if listening.fileno() < 0:  # closed
                    return
                log.debug("accept failed: %s", exc)
                continue
            sock.setblocking(False)
            task = asyncio.create_task(self._handled(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handled(self, sock: socket.socket) -> None:
        try:
            await self.handle(sock)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("a connection failed before it was served")
        finally:
            sock.close()  # a no-op once handed over to a transport (`hand_over`)


def peer_of(sock: socket.socket) -> tuple[str, int] | None:
    """The peer's (address, port), or None once it has gone."""
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return str(peer[0]), int(peer[1])


async def readable(sock: socket.socket) -> None:
    """Return once `sock` has something to read (or has ended), reading nothing."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def reading(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A socket's transport, which reads and writes (uvloop's too: not asyncio subclasses)."""
    return cast(asyncio.Transport, transport)


def hand_over(sock: socket.socket) -> socket.socket:
    """`sock`'s connection in a new socket object, for a transport to own: `sock` itself is
    left empty, so closing it (as `Acceptor` does with a handler's socket that ends) never
    closes a descriptor a transport still uses."""
    return socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())

"""What the channel managers need of a connection, and a connection whose frames the
application carries itself.

A *frame* here is one encoded TwoWayChannelMessage (protobuf bytes, no length prefix): TCP
prefixes each with its length, WebSocket sends each as one binary message, an application may
carry it however it likes (an HTTP header, a queue message).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Protocol

from bitcoind_paychan.errors import ErrorCode, RemoteProtocolError
from bitcoind_paychan.wire import pb
from bitcoind_paychan.wire.codec import decode_message, encode_message
from bitcoind_paychan.wire.framing import check_received_size


def decode(frame: bytes | pb.TwoWayChannelMessage) -> pb.TwoWayChannelMessage:
    """A received frame as a message (a message stays as it is); RemoteProtocolError
    (SYNTAX_ERROR) if it is oversized or does not parse."""
    if isinstance(frame, pb.TwoWayChannelMessage):
        return frame
    return decode_message(check_received_size(frame))


def encode(messages: Sequence[pb.TwoWayChannelMessage]) -> list[bytes]:
    """Messages as frames."""
    return [encode_message(m) for m in messages]


class Link(Protocol):
    """One connection to a peer, as the application implements it: the managers' way out."""

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send `frames` to the peer, in order (after those of earlier calls). A peer that
        already left may raise ConnectionError or drop them quietly."""

    async def close(self) -> None:
        """Hang up (after what was sent); idempotent."""


class Stream(Link, Protocol):
    """A Link the managers read from themselves (TCP, WebSocket, CarriedStream)."""

    @property
    def peername(self) -> str:
        """The peer, for logs and errors."""

    async def receive(self, timeout: float | None) -> pb.TwoWayChannelMessage | None:
        """The next message; None once the peer has left. RemoteProtocolError: SYNTAX_ERROR
        for a bad frame, TIMEOUT when nothing arrives within `timeout` seconds."""

    def receive_buffered(self) -> pb.TwoWayChannelMessage | None:
        """The next message if it has already arrived whole, else None (never waits)."""


class CarriedStream:
    """A Stream over an application's Link: frames go out through `link`; the application
    hands in what arrives with `feed`, and `end` once the connection is gone."""

    def __init__(self, link: Link, peername: str) -> None:
        self.link = link
        self._peername = peername
        self._inbox: collections.deque[bytes | pb.TwoWayChannelMessage | None] = (
            collections.deque())
        self._arrived = asyncio.Event()

    @property
    def peername(self) -> str:
        return self._peername

    def feed(self, frame: bytes | pb.TwoWayChannelMessage) -> None:
        """A frame (or decoded message) from the peer."""
        self._inbox.append(frame)
        self._arrived.set()

    def end(self) -> None:
        """The peer has left: what was fed is still read, then `receive` returns None."""
        self._inbox.append(None)
        self._arrived.set()

    async def receive(self, timeout: float | None) -> pb.TwoWayChannelMessage | None:
        if not self._inbox:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                raise RemoteProtocolError(f"no message from {self.peername} within {timeout} s",
                                          code=ErrorCode.TIMEOUT) from None
        return self._take()

    def receive_buffered(self) -> pb.TwoWayChannelMessage | None:
        return self._take() if self._inbox and self._inbox[0] is not None else None

    def _take(self) -> pb.TwoWayChannelMessage | None:
        item = self._inbox[0]
        if item is None:
            return None  # stays: the peer has left for good
        self._inbox.popleft()
        return decode(item)

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        await self.link.send_frames(frames)

    async def close(self) -> None:
        self.end()
        await self.link.close()

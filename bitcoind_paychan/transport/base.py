"""What the channel managers need of a connection, and a connection whose frames the
application carries itself.

A *frame* here is one encoded TwoWayChannelMessage (protobuf bytes, no length prefix): TCP
prefixes each with its length, WebSocket sends each as one binary message, an application may
carry it however it likes (an HTTP header, a queue message).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar, runtime_checkable

from bitcoind_paychan.errors import ErrorCode, RemoteProtocolError
from bitcoind_paychan.transport.limits import Admission
from bitcoind_paychan.wire import pb
from bitcoind_paychan.wire.codec import decode_message, encode_message
from bitcoind_paychan.wire.framing import check_received_size

log = logging.getLogger(__name__)


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

    async def send(self, message: pb.TwoWayChannelMessage) -> None:
        """Send one message."""


@runtime_checkable
class Tappable(Protocol):
    """A stream that can hand frames over as they arrive, in its protocol's callback
    (`transport/stream.py`'s MessageStream over a FrameProtocol: a TCP listener's)."""

    async def run_tapped(self, tap: Callable[[list[bytes]], int]) -> None:
        """Hand arriving frames to `tap` (it returns how many it took) until it leaves some,
        the peer leaves, or `untap()`."""

    def untap(self) -> None:
        """Stop handing frames over."""

    @property
    def backed_up(self) -> bool:
        """Is the peer not reading what was written (a writer would wait to drain)?"""

    def post_framed(self, data: bytes) -> None:
        """Write frames (length-prefixed, joined) now, unless the connection is closing."""


class Inbox:
    """What arrived from a peer, read in order: frames (or messages), then None once the peer
    has left, or the RemoteProtocolError it committed (raised once, then None). With a
    `capacity`, a reader that fills it waits in `room()` for the channel to take some."""

    def __init__(self, peername: str, capacity: int | None = None) -> None:
        self.peername = peername
        self.capacity = capacity
        self._items: collections.deque[bytes | pb.TwoWayChannelMessage | Exception | None] = (
            collections.deque())
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def put(self, item: bytes | pb.TwoWayChannelMessage | RemoteProtocolError | None) -> None:
        self._items.append(item)
        self._arrived.set()
        if self.capacity is not None and len(self._items) >= self.capacity:
            self._room.clear()

    async def room(self) -> None:
        await self._room.wait()

    async def receive(self, timeout: float | None) -> pb.TwoWayChannelMessage | None:
        if not self._items:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                raise RemoteProtocolError(f"no message from {self.peername} within {timeout} s",
                                          code=ErrorCode.TIMEOUT) from None
        return self._take()

    def receive_buffered(self) -> pb.TwoWayChannelMessage | None:
        ready = self._items and isinstance(self._items[0], bytes | pb.TwoWayChannelMessage)
        return self._take() if ready else None

    def _take(self) -> pb.TwoWayChannelMessage | None:
        item = self._items[0]
        if item is None:
            return None  # stays: the peer has left for good
        if isinstance(item, Exception):
            self._items[0] = None
            raise item
        self._items.popleft()
        self._room.set()
        return decode(item)


S = TypeVar("S", bound=Stream)


class _Unlinked:
    """The link of a CarriedStream being built (`CarriedStream.over`)."""

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        raise ConnectionError("this stream has no link yet")

    async def close(self) -> None:
        pass


class CarriedStream:
    """A Stream over an application's Link: frames go out through `link`; the application
    hands in what arrives with `feed`, and `end` once the connection is gone. When the link
    needs the stream (to feed it what arrives), build both with `CarriedStream.over`."""

    def __init__(self, link: Link, peername: str) -> None:
        self.link = link
        self.inbox = Inbox(peername)

    @classmethod
    def over(cls, make_link: Callable[[CarriedStream], Link], peername: str) -> CarriedStream:
        """A stream and its link: `make_link(stream)` builds the application's connection,
        which hands what arrives to `stream.feed` (and calls `stream.end()` when it ends)."""
        stream = cls(_Unlinked(), peername)
        stream.link = make_link(stream)
        return stream

    @property
    def peername(self) -> str:
        return self.inbox.peername

    def feed(self, frame: bytes | pb.TwoWayChannelMessage) -> None:
        """A frame (or decoded message) from the peer."""
        self.inbox.put(frame)

    def end(self) -> None:
        """The peer has left: what was fed is still read, then `receive` returns None."""
        self.inbox.put(None)

    async def receive(self, timeout: float | None) -> pb.TwoWayChannelMessage | None:
        return await self.inbox.receive(timeout)

    def receive_buffered(self) -> pb.TwoWayChannelMessage | None:
        return self.inbox.receive_buffered()

    async def send(self, message: pb.TwoWayChannelMessage) -> None:
        await self.link.send_frames(encode([message]))

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        await self.link.send_frames(frames)

    async def close(self) -> None:
        self.end()
        await self.link.close()


class Connections(Generic[S]):
    """A listener's connections, each served in its own task: `serve(stream, admission)`,
    then the admission released and the stream closed; `stop` ends them all."""

    def __init__(self, serve: Callable[[S, Admission], Awaitable[None]]) -> None:
        self.serve = serve
        self._tasks: set[asyncio.Task[object]] = set()

    async def run(self, stream: S, admission: Admission) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.serve(stream, admission)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection from %s failed", stream.peername)
        finally:
            admission.release()
            self._tasks.discard(task)
            await stream.close()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

"""Connections an application carries itself, as a request/response transport does: each
frame the client sends is one "request" handed to the server manager; the frames the server
sent while handling it are the "response", fed back to the client's CarriedStream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.service.server import ServerConnection, ServerManager
from bitcoind_paychan.transport import CarriedStream, Stream
from bitcoind_paychan.wire import pb

T = pb.TwoWayChannelMessage


@dataclass
class Replies:
    """The server side's Link: collects what the manager sends while handling a request."""

    frames: list[bytes] = field(default_factory=list)
    closed: bool = False

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        self.frames += frames

    async def close(self) -> None:
        self.closed = True


@dataclass
class Exchange:
    """One request and its response, with what the server had stored when it answered."""

    request: int  # message type
    response: list[int]
    paid_when_answered: int | None


class Requests:
    """The client side's Link: each frame a request to `manager`."""

    def __init__(self, manager: ServerManager, peer: str) -> None:
        self.manager = manager
        self.replies = Replies()
        self.connection: ServerConnection = manager.accept(self.replies, "app client")
        self.stream = CarriedStream(self, peer)
        self.exchanges: list[Exchange] = []
        self.hold = False  # keep what is sent in `held` (the application delivers it later)
        self.held: list[bytes] = []

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        if self.hold:
            self.held += frames
            return
        for frame in frames:
            for reply in await self.deliver(frame):
                self.stream.feed(reply)
            if self.replies.closed:
                self.stream.end()

    async def deliver(self, frame: bytes) -> list[bytes]:
        """Hand `frame` to the server; what it answered."""
        self.replies.frames = []
        await self.connection.receive(frame)  # returns once stored and answered
        txid = self.connection.contract_txid
        stored = txid and self.manager.store.get(Role.SERVER, txid)
        self.exchanges.append(Exchange(
            T.FromString(frame).type, [T.FromString(f).type for f in self.replies.frames],
            stored.paid if stored else None))
        return self.replies.frames

    async def close(self) -> None:
        self.connection.connection_lost()
        self.stream.end()


class Dialer:
    """The client manager's `dial`: a new carried connection to `manager` per call."""

    def __init__(self, manager: ServerManager) -> None:
        self.manager = manager
        self.connections: list[Requests] = []

    async def __call__(self, peer: str, timeout: float | None) -> Stream:
        self.connections.append(Requests(self.manager, peer))
        return self.connections[-1].stream

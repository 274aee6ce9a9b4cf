"""Sessions: one server-manager connection each, carried by HTTP POSTs instead of a socket.

A session is the manager's `Link`: what the manager sends is collected, and `exchange` hands
the manager one frame and returns what it answered — `receive` returns only once that frame's
effects (store, broadcast, ack) are carried out. One exchange at a time per session (its
`lock`), so each answer belongs to the request that carried the frame. A session that has not
opened (or resumed) a channel within the manager's handshake timeout is dropped, as a silent
TCP peer would be; so is one idle for an hour (the client resumes its channel in a new one).
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bitcoind_paychan.channel.effects import ChannelOpened, PaymentReceived
from bitcoind_paychan.transport.base import Link
from bitcoind_paychan.transport.limits import Admission, PeerGate


class CarriedConnection(Protocol):
    """What a session needs of one connection of the server manager."""

    async def receive(self, frame: bytes) -> None: ...

    def connection_lost(self) -> None: ...


class Acceptor(Protocol):
    """What sessions need of the server manager (service.server.ServerManager)."""

    @property
    def handshake_timeout(self) -> float: ...

    @property
    def gate(self) -> PeerGate: ...  # per-address limits: new sessions pass it

    def accept(self, link: Link, peer: str) -> CarriedConnection: ...


IDLE_TIMEOUT = 3600.0
SEQ_WINDOW = 1024  # a request spending credit may arrive this far behind the newest one
_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar("session",
                                                                          default=None)


class Session:
    """One connection of the server manager, addressed by an unguessable id (the contract
    txid is public on chain; this is known only to the client that opened the session)."""

    def __init__(self, server: Acceptor, on_closed: Callable[[Session], None],
                 admission: Admission | None = None) -> None:
        self.id = secrets.token_urlsafe(16)
        self.lock = asyncio.Lock()
        self.closed = False
        self.channel: str | None = None  # contract txid, once opened or resumed here
        self.change: int | None = None  # the client's change after the last stored payment
        self.received = 0  # sat stored during the exchange in progress
        self.used = time.monotonic()
        self._top_seq = 0  # the newest request number that spent credit here
        self._seqs: set[int] = set()  # those used within SEQ_WINDOW of it
        self._outbox: list[bytes] = []
        self._on_closed = on_closed
        self._admission = admission  # its address's handshake slot, until a channel opens
        self.connection: CarriedConnection = server.accept(self, f"http session {self.id[:8]}")

    def use_seq(self, seq: int) -> bool:
        """Mark request number `seq` (spending credit) used: False if it was (a replay), or
        is too far behind the newest one to tell (SEQ_WINDOW)."""
        if seq <= self._top_seq - SEQ_WINDOW or seq in self._seqs:
            return False
        self._seqs.add(seq)
        if seq > self._top_seq:
            self._top_seq = seq
            if len(self._seqs) > 2 * SEQ_WINDOW:
                self._seqs = {s for s in self._seqs if s > seq - SEQ_WINDOW}
        return True

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """The manager's answer: kept for the request being handled."""
        self._outbox.extend(frames)

    async def close(self) -> None:
        """The manager hung up (refused, settled, or the channel moved to a newer session)."""
        if not self.closed:
            self.closed = True
            self._release()
            self._on_closed(self)

    def opened(self, channel_id: str, change: int) -> None:
        """The manager opened (or resumed) channel `channel_id` in this session."""
        self.channel, self.change = channel_id, change
        self._release()

    def _release(self) -> None:
        if self._admission is not None:
            self._admission.release()
            self._admission = None

    async def exchange(self, frame: bytes) -> list[bytes]:
        """Hand the manager `frame` (the caller holds `lock`); what it sent back. `received`
        is then the sat stored meanwhile (the manager's events, through `session_event`)."""
        self.used = time.monotonic()
        self.received = 0
        token = _current.set(self)
        try:
            await self.connection.receive(frame)
        finally:
            _current.reset(token)
        answer, self._outbox = self._outbox, []
        return answer

    async def lost(self) -> None:
        """The session is over from our side: the manager forgets the connection."""
        if not self.closed:
            self.connection.connection_lost()
            await self.close()


def session_event(event: object) -> None:
    """The server manager's events (its `on_event`, or called from it): the session whose
    frame caused one learns its channel (opened or resumed) and each payment stored."""
    session = _current.get()
    if session is None:
        return
    if isinstance(event, ChannelOpened):
        session.opened(event.record.channel_id, event.record.change)
    elif isinstance(event, PaymentReceived):
        session.change = event.record.change
        session.received += event.amount


class Sessions:
    """The live sessions, by id. One unused for `idle_timeout` seconds is dropped (its
    channel stays stored; the client resumes it in a new session when it comes back)."""

    def __init__(self, server: Acceptor, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.server = server
        self.idle_timeout = idle_timeout
        self._by_id: dict[str, Session] = {}

    async def admit(self, peer: str | None) -> Session | None:
        """A new session for a client at `peer`, or None if the server's gate refuses that
        address (too many sessions a minute, or too many without a channel yet)."""
        admission = self.server.gate.admit(peer) if peer else None
        if peer and admission is None:
            return None
        return await self.new(admission)

    async def new(self, admission: Admission | None = None) -> Session:
        """A new session (holding its address's `admission` until its channel opens)."""
        await self._expire()
        session = Session(self.server, self._forget, admission)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._by_id.get(session_id)
        return None if session is None or session.closed else session

    def __len__(self) -> int:
        return len(self._by_id)

    def _forget(self, session: Session) -> None:
        self._by_id.pop(session.id, None)

    async def _expire(self) -> None:
        """Drop sessions silent for longer than the handshake timeout before their channel is
        open, or than the idle timeout after."""
        now, handshake = time.monotonic(), self.server.handshake_timeout
        for session in [s for s in self._by_id.values() if not s.lock.locked()]:
            timeout = handshake if session.channel is None else self.idle_timeout
            if session.used < now - timeout:
                await session.lost()

    async def close_all(self) -> None:
        for session in list(self._by_id.values()):
            await session.lost()

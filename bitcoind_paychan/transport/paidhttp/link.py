"""The client's side of a session: a client-manager connection carried by POSTs.

The manager's dialer gets `HttpLink(...).stream` (a CarriedStream over this link). The manager
sends frames through `send_frames`; they are POSTed to the channel endpoint in order, one POST
at a time, and the frames the server answered are fed to the stream, where the manager reads
them. A payment the application is about to attach to a request (`expect_payment`) is kept
instead of POSTed: it travels in that request's `Authorization: Payment` credential, and the
ack from its answer's receipt (with what else the server sent, in order) is fed to the
stream the same way (`feed`); then `answered()`.

The server reads the session's frames in the order they were sent, as on a socket (a
re-anchor needs it: R is checked against the payments before it, and a payment signed after
R must reach the server after R): a kept payment is handed over only once every frame sent
before it was POSTed and answered, and frames sent after it are POSTed only once its
request was answered; if the session ends first, they are not sent at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from bitcoind_paychan.errors import LocalProtocolError, PaychanError
from bitcoind_paychan.transport.base import CarriedStream, Stream, decode
from bitcoind_paychan.transport.paidhttp.wire import (
    CLOSED_HEADER,
    CREDIT_HEADER,
    FRAMES_TYPE,
    SESSION_HEADER,
    join_frames,
    split_frames,
)
from bitcoind_paychan.wire import pb

log = logging.getLogger(__name__)
T = pb.TwoWayChannelMessage


class _Kept:
    """A payment kept for a request, in its place among the frames POSTed."""

    def __init__(self, payment: asyncio.Future[bytes], frame: bytes) -> None:
        self.payment, self.frame = payment, frame
        self.answered = asyncio.Event()  # its request's answer was handed in (or never comes)
        self.lost = False  # ... never comes: the session ended first

    def hand_over(self) -> None:
        """Every frame before it was answered: its request may go."""
        if not self.payment.done():
            self.payment.set_result(self.frame)


class HttpLink:
    """One session with the server at `endpoint`; each POST may take `timeout` seconds."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: str,
                 timeout: float | None) -> None:
        self.http = http
        self.endpoint = endpoint
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.stream = CarriedStream(self, endpoint)  # what the manager reads
        self.session: str | None = None  # the server's id for it, from the first answer
        self.credit: int | None = None  # the channel's credit, as the last answer said
        self.closed = False
        self.seq = 0  # the last number given a request spending credit in this session
        self._queue: asyncio.Queue[list[bytes] | _Kept] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._busy = False  # the worker is POSTing, or waiting for a kept payment's answer
        self._payment: asyncio.Future[bytes] | None = None
        self._kept: _Kept | None = None  # the kept payment whose answer is not in yet
        # Held (`keep`) from before `expect_payment` until its request is answered or the
        # session ends: one kept payment at a time, as the link hands them over in order.
        self.keeping = asyncio.Lock()
        self._keeper: object | None = None  # the token of who holds it

    def next_seq(self) -> int:
        """A new number for a request that spends the session's credit (each used once)."""
        self.seq += 1
        return self.seq

    def expect_payment(self) -> asyncio.Future[bytes]:
        """The next UPDATE_PAYMENT the manager sends is kept for a request, not POSTed: the
        future is its frame once every frame sent before it was answered (cancelled if the
        session ends first). Hand the request's answer in, then call `answered()`. Hold
        `keeping` first when payments may be made concurrently: a second kept payment
        before the first was answered is refused (RuntimeError)."""
        if self._kept is not None or (self._payment is not None and
                                      not self._payment.done()):
            raise LocalProtocolError("a payment is kept already for a request: hold the "
                                     "link's `keeping` (`keep`) to keep one at a time")
        self._payment = asyncio.get_running_loop().create_future()
        return self._payment

    def answered(self, token: object | None = None) -> None:
        """The kept payment's request was answered (its receipt fed to the stream): the
        frames sent after it may be POSTed; `keeping` is released. A `token` that no longer
        holds `keeping` is a late answer (its session ended since): nothing is done."""
        if token is not None and token is not self._keeper:
            return
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.answered.set()
        self.kept_done(token)

    async def keep(self) -> object:
        """Hold `keeping` (wait for the kept payment before to be over): the hold's token,
        for `answered` and `kept_done`."""
        await self.keeping.acquire()
        self._keeper = token = object()
        return token

    def kept_done(self, token: object | None = None) -> None:
        """Release `keeping` if `token` still holds it (None: whoever does, as the session
        ends): the next payment may be kept."""
        if self.keeping.locked() and (token is None or token is self._keeper):
            self._keeper = None
            self.keeping.release()

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        if not frames:
            return
        if self.closed:
            raise ConnectionError(f"the session with {self.endpoint} has ended")
        pending: list[list[bytes] | _Kept] = [list(frames)]
        payment = self._payment
        if payment is not None and not payment.done():
            for index, frame in enumerate(frames):
                if decode(frame).type == T.UPDATE_PAYMENT:
                    self._payment = None
                    self._kept = _Kept(payment, frame)
                    pending = [list(frames[:index]), self._kept, list(frames[index + 1:])]
                    break
        pending = [item for item in pending if item]
        if isinstance(pending[0], _Kept) and self._queue.empty() and not self._busy:
            pending[0].hand_over()  # nothing before it in flight: at once
        for item in pending:
            self._queue.put_nowait(item)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._post_all())

    async def close(self) -> None:
        """Hang up: what is queued is still POSTed (an ERROR, say), then the session ends;
        not what was sent after a kept payment whose request was not answered."""
        if not self.closed:
            self.closed = True
            kept, self._kept = self._kept, None
            if kept is not None:
                kept.lost = True
                kept.answered.set()
            self.kept_done()
            if self._worker is None:
                await self._ended()
            else:
                self._queue.put_nowait([])  # wakes the worker to finish

    async def _post_all(self) -> None:
        while True:
            self._busy = False
            item = await self._queue.get()
            self._busy = True
            if isinstance(item, _Kept):
                if self.closed and not item.payment.done():
                    item.payment.cancel()  # hung up before its turn: it does not go
                    break
                if not item.payment.cancelled():
                    item.hand_over()
                    await item.answered.wait()
                    if item.lost:  # the server may not have read it: nothing after it goes
                        break
                    continue
                # Its request gave up before its turn: the payment goes as credit.
                if self._kept is item:
                    self._kept = None
                item = [item.frame]
            if not item:
                if self._queue.empty():
                    break
                continue
            try:
                answer, ended = await self._post(item)
            except (aiohttp.ClientError, OSError, PaychanError) as exc:  # timeouts included
                log.info("session with %s failed: %s", self.endpoint, exc)
                break
            for frame in answer:
                self.stream.feed(frame)
            if ended:
                break
        self.closed = True
        await self._ended()

    async def _post(self, frames: list[bytes]) -> tuple[list[bytes], bool]:
        headers = {"Content-Type": FRAMES_TYPE}
        if self.session is not None:
            headers[SESSION_HEADER] = self.session
        async with self.http.post(self.endpoint, data=join_frames(frames), headers=headers,
                                  timeout=self.timeout) as response:
            body = await response.read()
            if response.status != 200:
                raise ConnectionError(f"the channel endpoint answered {response.status}: "
                                      f"{body[:300].decode(errors='replace')}")
            self.session = response.headers.get(SESSION_HEADER, self.session)
            credit = response.headers.get(CREDIT_HEADER, "")
            if credit.isdigit():
                self.credit = int(credit)
            return split_frames(body), response.headers.get(CLOSED_HEADER) == "1"

    async def _ended(self) -> None:
        payment, self._payment = self._payment, None
        if payment is not None and not payment.done():
            payment.cancel()
        kept, self._kept = self._kept, None
        if kept is not None:  # its request may still be answered: nothing goes after it
            kept.lost = True
            kept.answered.set()
        self.kept_done()
        while not self._queue.empty():  # never sent: a kept payment waiting for its turn too
            item = self._queue.get_nowait()
            if isinstance(item, _Kept) and not item.payment.done():
                item.payment.cancel()
        self.stream.end()


Dial = Callable[[str, "float | None"], Awaitable[Stream]]


def http_dialer(http: aiohttp.ClientSession) -> Dial:
    """A client manager's dialer: a session at the channel endpoint (the channels' peer)."""
    async def dial(endpoint: str, timeout: float | None) -> Stream:
        return HttpLink(http, endpoint, timeout).stream
    return dial

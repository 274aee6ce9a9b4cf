"""The server's side of the protocol over HTTP, for any aiohttp application: the channel
endpoint's handler (`endpoint`), and `take_payment`, which checks a request's credential and
has the manager verify and store its payment before anything is served.

The manager must hand its events to `session_event` (its `on_event`, or called from it):
that is how a session learns its channel and each payment stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bitcoind_paychan.errors import PaidHttpError
from bitcoind_paychan.transport.base import decode
from bitcoind_paychan.transport.paidhttp.sessions import Session, Sessions
from bitcoind_paychan.transport.paidhttp.wire import (
    CLOSED_HEADER,
    FRAMES_TYPE,
    PAYMENT_HEADER,
    SESSION_HEADER,
    Credential,
    join_frames,
    parse_credential,
    split_frames,
)
from bitcoind_paychan.wire import pb

log = logging.getLogger(__name__)
T = pb.TwoWayChannelMessage


@dataclass(frozen=True)
class Stored:
    """A payment the manager verified and stored: `ack` must reach the client, with every
    frame of `frames` when there are more (the receipt carries them: `receipt(...,
    stored.frames)`)."""

    session: Session
    channel: str  # its contract txid
    amount: int  # sat it added
    ack: bytes  # the PAYMENT_ACK
    # What the manager sent in answer to the payment, in order, the ack among them, when it
    # sent more than the ack (a re-anchor's terms after the payment, a promotion's lock
    # before it); the client handles them in this order, as it would on a socket.
    frames: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Refused:
    """Nothing was stored: answer `status` (402 with the offer, or 400) saying `why`."""

    status: int
    why: str
    closed: bool = False  # the session ended (Paychan-Closed: 1)


def at_least(sat: int) -> Callable[[str], Awaitable[int]]:
    """`take_payment`'s minimum: the same `sat` for every channel."""
    async def minimum(_channel: str) -> int:
        return sat
    return minimum


async def take_payment(sessions: Sessions, value: str | Credential,
                       minimum: Callable[[str], Awaitable[int]], *,
                       credit: bool = False) -> Stored | Refused:
    """The payment in the credential `value` (or `value` as parsed), stored, or why not. It
    must add at least `await minimum(channel)` sat to its channel's last payment (asked under
    the session's lock). With `credit` (a service that keeps credit: the gateway), a
    credential without a payment is taken too, once per `seq` in its session: Stored with 0
    sat and no ack (the caller takes the request's price from the channel's credit)."""
    try:
        found = parse_credential(value) if isinstance(value, str) else value
    except PaidHttpError as exc:
        return Refused(400, str(exc))
    if found.frame is None and not credit:
        return Refused(400, f"the {PAYMENT_HEADER} header carries no payment: this service "
                            "takes a payment with each request")
    session = sessions.get(found.session)
    if session is None or session.channel is None:
        return Refused(402, "no open channel in that session (it ended or never opened one): "
                            "open or resume a channel at the endpoint, then pay")
    if found.frame is None:
        if not session.use_seq(found.seq):
            return Refused(402, f"request number {found.seq} of this session was already "
                                "used (replayed) or is too old: number each request anew")
        return Stored(session, session.channel, 0, b"")
    frame, payment = found.frame, found.message
    assert frame is not None and payment is not None, "a credential with a payment"
    async with session.lock:
        channel, change = session.channel, session.change
        if session.closed or channel is None or change is None:
            return Refused(402, "the session's channel was closed; resume or open one at "
                                "the endpoint")
        amount = change - payment.update_payment.client_change_value
        least = await minimum(channel)
        if amount <= 0:
            return Refused(402, f"the payment is not new (replayed or old): channel {channel} "
                                f"already holds a payment leaving the client {change} sat; "
                                f"sign one leaving {change - least}")
        if amount < least:
            return Refused(402, f"underpaid: the payment adds {amount} sat, the request "
                                f"needs {least}")
        answer = await session.exchange(frame)
        stored = session.received
    ack = next((f for f in answer if decode(f).type == T.PAYMENT_ACK), None)
    if ack is None or stored < amount:
        return Refused(400, f"payment refused: {_explain(answer)}; the session is closed, "
                            "resume the channel at the endpoint", closed=session.closed)
    return Stored(session, channel, stored, ack, tuple(answer) if len(answer) > 1 else ())


async def endpoint(sessions: Sessions, request: web.Request,
                   on_stored: Callable[[str, int], None] | None = None,
                   peer: str | None = None) -> web.Response:
    """POST frames to a session (a new one without Paychan-Session); answer its frames.
    A payment stored meanwhile (a resume re-sends the channel's last payment as its proof:
    one the service never acknowledged is stored then) is told to `on_stored(channel, sat)`.
    `peer`: the client's address, if not the connection's (behind a trusted proxy)."""
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None:
        session = await sessions.admit(peer or request.remote)
        if session is None:
            return error(429, "too many sessions from your address (a minute, or without a "
                              "channel at once): retry later")
    else:
        session = sessions.get(session_id)
    if session is None:
        return error(410, "no such session (it ended, or expired before opening a channel): "
                          "POST without Paychan-Session to start a new one")
    try:
        received = split_frames(await request.read())
    except PaidHttpError as exc:
        await session.lost()
        return error(400, f"bad frames: {exc}; the session is closed", closed=True)
    answer: list[bytes] = []
    async with session.lock:
        for frame in received:
            if session.closed:
                break
            answer += await session.exchange(frame)
            if session.received and session.channel is not None and on_stored is not None:
                on_stored(session.channel, session.received)
    headers = {SESSION_HEADER: session.id}
    if session.closed:
        headers[CLOSED_HEADER] = "1"
    return web.Response(body=join_frames(answer), content_type=FRAMES_TYPE, headers=headers)


def error(status: int, why: str, closed: bool = False) -> web.Response:
    headers = {CLOSED_HEADER: "1"} if closed else {}
    return web.json_response({"error": why}, status=status, headers=headers)


def _explain(answer: list[bytes]) -> str:
    errors = [m.error.explanation for m in map(decode, answer) if m.type == T.ERROR]
    return errors[0] if errors else "the channel did not acknowledge it"

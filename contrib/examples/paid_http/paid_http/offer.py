"""What the paid API and its clients say to each other over HTTP, beside the channel protocol.

- A request without a payment is answered `402 Payment Required` with an `Offer` (JSON): the
  price per request, the channel endpoint, what a channel there must be (value, versions).
- The channel endpoint takes `POST`s whose body is protocol frames (bitcoinj's framing: a
  4-byte length, then the message) and answers with the frames the server sent back. The
  `Paychan-Session` header names the session (one manager connection); the first POST has
  none and the answer carries a new one. `Paychan-Closed: 1` says the server hung up.
- A paid request carries `Paychan-Payment: <session>:<base64 UPDATE_PAYMENT frame>` (a frame:
  one encoded message, no length prefix); its answer carries `Paychan-Ack: <base64
  PAYMENT_ACK frame>` once the payment is stored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bitcoind_paychan.errors import PaychanError
from bitcoind_paychan.transport import decode
from bitcoind_paychan.wire import FrameDecoder, encode_frame, pb, type_name

PAYMENT_HEADER = "Paychan-Payment"
ACK_HEADER = "Paychan-Ack"
SESSION_HEADER = "Paychan-Session"
CLOSED_HEADER = "Paychan-Closed"
FRAMES_TYPE = "application/x-paychan-frames"
MAX_FRAMES_BODY = 64 * 1024  # a handshake is a few hundred bytes; a contract tx a few more


class BadFrames(PaychanError):
    """A payment header, an ack header or a body of frames cannot be read; says why."""


@dataclass(frozen=True)
class Offer:
    """The body of a 402: what a request costs and where to open the channel that pays it."""

    price: int  # sat per request
    endpoint: str  # absolute URL of the channel endpoint (POST frames there)
    min_channel_value: int  # sat: the smallest channel the server accepts
    open_payment: int  # sat the client pays as it opens (the protocol's initial payment)
    versions: tuple[int, ...]  # channel protocol majors the server speaks
    header: str = PAYMENT_HEADER
    error: str = "payment required"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Offer:
        try:
            data = json.loads(text)
            return cls(price=int(data["price"]), endpoint=str(data["endpoint"]),
                       min_channel_value=int(data["min_channel_value"]),
                       open_payment=int(data["open_payment"]),
                       versions=tuple(int(v) for v in data["versions"]),
                       header=str(data.get("header", PAYMENT_HEADER)),
                       error=str(data.get("error", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadFrames(f"the server's 402 answer is not an offer: {exc}") from None


def join_frames(frames: Sequence[bytes]) -> bytes:
    """A POST body (or its answer) holding `frames`, each prefixed with its length."""
    return b"".join(encode_frame(frame) for frame in frames)


def split_frames(body: bytes) -> list[bytes]:
    """The frames of a body of whole length-prefixed frames; BadFrames if it is not one."""
    decoder = FrameDecoder()
    try:
        found = decoder.feed(body)
    except PaychanError as exc:
        raise BadFrames(str(exc)) from None
    if decoder.buffered:
        raise BadFrames(f"the body ends inside a frame ({decoder.buffered} bytes left over)")
    return found


def payment_header(session: str, payment: bytes) -> str:
    return f"{session}:{base64.b64encode(payment).decode('ascii')}"


def read_payment_header(value: str) -> tuple[str, bytes, pb.TwoWayChannelMessage]:
    """(session, frame, its UPDATE_PAYMENT) from a `Paychan-Payment` header; BadFrames if it
    is not one."""
    session, sep, encoded = value.strip().partition(":")
    if not sep or not session:
        raise BadFrames(f"{PAYMENT_HEADER} must be '<session>:<base64 UPDATE_PAYMENT frame>'")
    frame = _from_b64(encoded, PAYMENT_HEADER)
    message = _decode(frame, PAYMENT_HEADER)
    if message.type != pb.TwoWayChannelMessage.UPDATE_PAYMENT:
        raise BadFrames(f"{PAYMENT_HEADER} carries a {type_name(message)}, not an "
                        "UPDATE_PAYMENT")
    return session, frame, message


def ack_header(ack: bytes) -> str:
    return base64.b64encode(ack).decode("ascii")


def read_ack_header(value: str) -> bytes:
    frame = _from_b64(value, ACK_HEADER)
    if _decode(frame, ACK_HEADER).type != pb.TwoWayChannelMessage.PAYMENT_ACK:
        raise BadFrames(f"{ACK_HEADER} does not carry a PAYMENT_ACK")
    return frame


def _from_b64(encoded: str, header: str) -> bytes:
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadFrames(f"{header} is not valid base64") from None


def _decode(frame: bytes, header: str) -> pb.TwoWayChannelMessage:
    try:
        return decode(frame)
    except PaychanError as exc:
        raise BadFrames(f"{header} does not hold a protocol message: {exc}") from None

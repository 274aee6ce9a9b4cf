"""What a paid HTTP service and its clients say to each other, beside the channel protocol
(docs/paid-http.md is the specification). The shape is that of the `Payment` HTTP
authentication scheme (draft-httpauth-payment, MPP), with the method `paychan`:

- A request without a payment is answered `402 Payment Required` with a challenge,
  `WWW-Authenticate: Payment id=..., realm=..., method="paychan", intent="session",
  request=<base64url JSON offer>`, and the same `Offer` as the JSON body: the price, its unit,
  the reserve a request needs, the channel endpoint, what a channel there must be.
- The channel endpoint takes `POST`s whose body is protocol frames (bitcoinj's framing: a
  4-byte length, then the message) and answers with the frames the server sent back.
  `Paychan-Session` names the session (one manager connection); the first POST has none and
  the answer carries a new one. `Paychan-Closed: 1` says the server hung up.
- A paid request carries `Authorization: Payment <base64url JSON credential>`, whose payload
  names the session and holds one UPDATE_PAYMENT frame; its answer carries
  `Payment-Receipt: <base64url JSON>` with the PAYMENT_ACK once the payment is stored (and
  every frame the server sent with it, in order, when there are more: a re-anchor's), what
  the request was charged and the credit left in the session. A request the session's
  credit already covers (paid ahead) may instead carry a credential without a payment: the
  session and a number used once in it (`seq`); its receipt has no ack.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bitcoind_paychan.errors import PaidHttpError, PaychanError
from bitcoind_paychan.transport.base import decode
from bitcoind_paychan.wire import FrameDecoder, encode_frame, pb, type_name

SCHEME = "Payment"  # the HTTP authentication scheme
METHOD = "paychan"  # its payment method
INTENT = "session"  # pay as you go through a channel the session holds
PAYMENT_HEADER = "Authorization"  # carries the credential
CHALLENGE_HEADER = "WWW-Authenticate"
RECEIPT_HEADER = "Payment-Receipt"
SESSION_HEADER = "Paychan-Session"
CLOSED_HEADER = "Paychan-Closed"
CREDIT_HEADER = "Paychan-Credit"  # the channel endpoint's: its channel's credit (sat)
FRAMES_TYPE = "application/x-paychan-frames"
MAX_FRAMES_BODY = 64 * 1024  # a handshake is a few hundred bytes; a contract tx a few more
MAX_CREDENTIAL = 4096  # characters: a payment frame is about 100 bytes
UNITS = ("request", "byte", "second")


@dataclass(frozen=True)
class Offer:
    """The body of a 402 (and its challenge's `request`): what a request costs and where to
    open the channel that pays it."""

    price: int  # sat per `unit`
    endpoint: str  # absolute URL of the channel endpoint (POST frames there)
    min_channel_value: int  # sat: the smallest channel the server accepts
    open_payment: int  # sat the client pays as it opens (the protocol's initial payment)
    versions: tuple[int, ...]  # channel protocol majors the server speaks
    unit: str = "request"  # what `price` is per: request, byte (of the response), second
    reserve: int = 0  # sat a request needs in credit before it is served (0: `price`)
    quantity: int = 1  # `price` buys this many units (1 sat per 1000 bytes: 1, 1000)
    min_increment: int = 1  # sat: the least a payment after the opening may add
    header: str = PAYMENT_HEADER
    error: str = "payment required"

    @property
    def needed(self) -> int:
        """Sat of credit a request needs (its payment plus the session's credit)."""
        return self.reserve or self.price

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
                       unit=str(data.get("unit", "request")),
                       reserve=int(data.get("reserve", 0)),
                       quantity=int(data.get("quantity", 1)),
                       min_increment=int(data.get("min_increment", 1)),
                       header=str(data.get("header", PAYMENT_HEADER)),
                       error=str(data.get("error", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise PaidHttpError(f"the server's 402 answer is not an offer: {exc}") from None


def challenge(offer: Offer, realm: str) -> str:
    """The `WWW-Authenticate` value of a 402 carrying `offer`."""
    request = {k: v for k, v in asdict(offer).items() if k not in ("error", "header")}
    encoded = b64url(json.dumps(request, sort_keys=True, separators=(",", ":")).encode())
    return (f'{SCHEME} id="{secrets.token_urlsafe(12)}", realm="{_quoted(realm)}", '
            f'method="{METHOD}", intent="{INTENT}", request="{encoded}"')


def read_challenge(value: str) -> Offer:
    """The offer in a `WWW-Authenticate: Payment` challenge of the `paychan` method;
    PaidHttpError if it is not one."""
    scheme, _, params = value.strip().partition(" ")
    found = dict(re.findall(r'([A-Za-z_-]+)="((?:[^"\\]|\\.)*)"', params))
    if scheme.lower() != SCHEME.lower() or found.get("method") != METHOD or \
            "request" not in found:
        raise PaidHttpError(f"the {CHALLENGE_HEADER} header is not a {SCHEME} challenge of "
                            f"the {METHOD!r} method: {value[:200]!r}")
    return Offer.from_json(_from_b64url(found["request"],
                                        f"the {CHALLENGE_HEADER} header's request").decode())


def join_frames(frames: Sequence[bytes]) -> bytes:
    """A POST body (or its answer) holding `frames`, each prefixed with its length."""
    return b"".join(encode_frame(frame) for frame in frames)


def split_frames(body: bytes) -> list[bytes]:
    """The frames of a body of whole length-prefixed frames; PaidHttpError if it is not one."""
    decoder = FrameDecoder()
    try:
        found = decoder.feed(body)
    except PaychanError as exc:
        raise PaidHttpError(str(exc)) from None
    if decoder.buffered:
        raise PaidHttpError(f"the body ends inside a frame ({decoder.buffered} bytes left "
                            "over)")
    return found


def credential(session: str, payment: bytes | None, seq: int = 0) -> str:
    """The `Authorization` value paying with `payment` (an UPDATE_PAYMENT) in `session`; with
    None, spending the session's credit (a request numbered `seq`, at least 1, each used
    once in the session)."""
    payload: dict[str, object] = {"session": session}
    if payment is None:
        payload["seq"] = seq
    else:
        payload["payment"] = b64url(payment)
    body = {"method": METHOD, "payload": payload}
    return f"{SCHEME} {b64url(json.dumps(body, separators=(',', ':')).encode())}"


@dataclass(frozen=True)
class Credential:
    """What an `Authorization: Payment` value says: its session, and the payment it carries
    (`frame`, `message`), or none: the request spends the session's credit (`seq`)."""

    session: str
    frame: bytes | None = None  # the UPDATE_PAYMENT frame
    message: pb.TwoWayChannelMessage | None = None  # ... decoded
    seq: int = 0  # without a payment: the request's number in the session (from 1)


def parse_credential(value: str) -> Credential:
    """The credential in an `Authorization: Payment` value (with a payment, or spending
    credit); PaidHttpError if it is not one."""
    where = f"the {PAYMENT_HEADER} header"
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != SCHEME.lower() or not token or len(value) > MAX_CREDENTIAL:
        raise PaidHttpError(f"{where} must be '{SCHEME} <base64url JSON credential>' (at most "
                            f"{MAX_CREDENTIAL} characters)")
    data = _json(token.strip(), where)
    payload = data.get("payload")
    if data.get("method") != METHOD or not isinstance(payload, dict):
        raise PaidHttpError(f"{where}: expected method {METHOD!r} and a payload object")
    session, encoded, seq = payload.get("session"), payload.get("payment"), payload.get("seq")
    if not isinstance(session, str) or not session:
        raise PaidHttpError(f"{where}: the payload needs a session (a string)")
    if encoded is None:
        if type(seq) is not int or seq < 1:
            raise PaidHttpError(f"{where}: the payload needs a payment (a string), or a seq "
                                "(an integer from 1) to spend the session's credit")
        return Credential(session, seq=seq)
    if not isinstance(encoded, str):
        raise PaidHttpError(f"{where}: the payload's payment must be a string")
    frame = _from_b64url(encoded, where)
    message = _decode(frame, where)
    if message.type != pb.TwoWayChannelMessage.UPDATE_PAYMENT:
        raise PaidHttpError(f"{where} carries a {type_name(message)}, not an UPDATE_PAYMENT")
    return Credential(session, frame, message)


def read_credential(value: str) -> tuple[str, bytes, pb.TwoWayChannelMessage]:
    """(session, frame, its UPDATE_PAYMENT) from an `Authorization: Payment` value;
    PaidHttpError if it is not one that carries a payment."""
    found = parse_credential(value)
    if found.frame is None or found.message is None:
        raise PaidHttpError(f"the {PAYMENT_HEADER} header carries no payment")
    return found.session, found.frame, found.message


@dataclass(frozen=True)
class Receipt:
    """What a paid answer's `Payment-Receipt` says: the payment's ack (empty: the request
    carried no payment, it spent credit), what the request was charged, the credit left in
    the session (sat), and `frames`: when the server sent more than the ack in answer to the
    payment (a re-anchor's REANCHOR_TERMS, a promotion's REANCHOR_LOCKED), every frame it
    sent, in order, the ack among them (else empty: the ack alone)."""

    ack: bytes
    charged: int
    credit: int
    frames: tuple[bytes, ...] = ()

    @property
    def answer(self) -> tuple[bytes, ...]:
        """The frames the server sent in answer to the payment, in order (none: no ack)."""
        return self.frames or ((self.ack,) if self.ack else ())


def receipt(ack: bytes, charged: int, credit: int, frames: Sequence[bytes] = ()) -> str:
    """The `Payment-Receipt` value for a stored payment (`ack`: its PAYMENT_ACK; empty: the
    request spent credit, no ack); `frames`: everything the server sent with the ack, in
    order, when that is more than the ack."""
    body: dict[str, object] = {"status": "success", "method": METHOD, "charged": charged,
                               "credit": credit}
    if ack:
        body["ack"] = b64url(ack)
    if len(frames) > 1:
        body["frames"] = b64url(join_frames(frames))
    return b64url(json.dumps(body, separators=(",", ":")).encode())


def read_receipt(value: str) -> Receipt:
    where = f"the {RECEIPT_HEADER} header"
    data = _json(value.strip(), where)
    try:
        ack = _from_b64url(str(data["ack"]), where) if "ack" in data else b""
        frames = split_frames(_from_b64url(str(data["frames"]), where)) if "frames" in \
            data else []
        found = Receipt(ack, int(data["charged"]), int(data["credit"]), tuple(frames))
    except (KeyError, TypeError, ValueError) as exc:
        raise PaidHttpError(f"{where} lacks {exc}: expected ack, charged, credit") from None
    if ack and _decode(ack, where).type != pb.TwoWayChannelMessage.PAYMENT_ACK:
        raise PaidHttpError(f"{where} does not carry a PAYMENT_ACK")
    if frames and (not ack or frames.count(ack) != 1):
        raise PaidHttpError(f"{where}'s frames must hold its ack once: the server's answer "
                            "to the payment, in order")
    for frame in frames:
        _decode(frame, where)
    return found


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5), as the Payment scheme writes its tokens."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_b64url(encoded: str, where: str) -> bytes:
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_",
                                validate=True)
    except (binascii.Error, ValueError):
        raise PaidHttpError(f"{where} is not valid base64url") from None


def _json(token: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(_from_b64url(token, where))
    except (UnicodeDecodeError, ValueError):
        raise PaidHttpError(f"{where} does not hold base64url JSON") from None
    if not isinstance(data, dict):
        raise PaidHttpError(f"{where} does not hold a JSON object")
    return data


def _decode(frame: bytes, where: str) -> pb.TwoWayChannelMessage:
    try:
        return decode(frame)
    except PaychanError as exc:
        raise PaidHttpError(f"{where} does not hold a protocol message: {exc}") from None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')

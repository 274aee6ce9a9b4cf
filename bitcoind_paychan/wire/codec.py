"""Serialize and validate TwoWayChannelMessage payloads (one frame's content)."""

from __future__ import annotations

from typing import Literal

from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import EncodeError as _PbEncodeError

from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from bitcoind_paychan.wire import paychan_pb2 as pb
from bitcoind_paychan.wire.framing import MAX_MESSAGE_SIZE

TwoWayChannelMessage = pb.TwoWayChannelMessage
MessageType = pb.TwoWayChannelMessage.MessageType

_Body = Literal[
    "client_version",
    "server_version",
    "initiate",
    "provide_refund",
    "return_refund",
    "provide_contract",
    "update_payment",
    "error",
    "reanchor_terms",
    "reanchor_signed",
    "reanchor_ack",
    "reanchor_locked",
]

REQUIRED_BODY: dict[int, _Body] = {
    MessageType.CLIENT_VERSION: "client_version",
    MessageType.SERVER_VERSION: "server_version",
    MessageType.INITIATE: "initiate",
    MessageType.PROVIDE_REFUND: "provide_refund",
    MessageType.RETURN_REFUND: "return_refund",
    MessageType.PROVIDE_CONTRACT: "provide_contract",
    MessageType.UPDATE_PAYMENT: "update_payment",
    MessageType.ERROR: "error",
    MessageType.REANCHOR_TERMS: "reanchor_terms",
    MessageType.REANCHOR_SIGNED: "reanchor_signed",
    MessageType.REANCHOR_ACK: "reanchor_ack",
    MessageType.REANCHOR_LOCKED: "reanchor_locked",
}
"""Body each type must carry. CHANNEL_OPEN has none; CLOSE's settlement and PAYMENT_ACK's body
are optional (bitcoinj sends a bare PAYMENT_ACK when it has no info); so are REANCHOR_PROPOSE's
and REANCHOR_REFUSED's (all their fields are optional)."""

MAX_EXPLANATION = 1024
"""error_message() truncates longer explanations so the frame always fits."""


def _problem(msg: pb.TwoWayChannelMessage) -> str | None:
    """Describe what makes `msg` invalid, or None if it is valid."""
    if not msg.IsInitialized():
        # Runtime API, absent from types-protobuf's stubs; only reached on the error path.
        missing: list[str] = msg.FindInitializationErrors()  # type: ignore[attr-defined]
        return "missing required field(s): " + ", ".join(missing)
    body = REQUIRED_BODY.get(msg.type)
    if body is not None and not msg.HasField(body):
        return f"{MessageType.Name(msg.type)} message without its {body} body"
    return None


def type_name(msg: pb.TwoWayChannelMessage) -> str:
    """The message type's name, e.g. 'UPDATE_PAYMENT' (for logs and errors)."""
    return MessageType.Name(msg.type) if msg.HasField("type") else "<no type>"


def encode_message(msg: pb.TwoWayChannelMessage) -> bytes:
    """Serialize `msg` (unframed); LocalProtocolError if invalid or larger than a frame allows.
    A bare PAYMENT_ACK (one per payment) is bytes serialized once."""
    if msg.type == _ACK and not msg.HasField("payment_ack"):
        return _BARE_ACK
    return _encode(msg)


def _encode(msg: pb.TwoWayChannelMessage) -> bytes:
    problem = _problem(msg)
    if problem is not None:
        raise LocalProtocolError(f"refusing to send an invalid message: {problem}")
    try:
        payload = msg.SerializeToString()
    except _PbEncodeError as exc:  # pragma: no cover - _problem() catches this first
        raise LocalProtocolError(f"cannot serialize {type_name(msg)}: {exc}") from exc
    if len(payload) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(
            f"{type_name(msg)} message is {len(payload)} bytes; the limit is {MAX_MESSAGE_SIZE}"
        )
    return payload


_ACK = MessageType.PAYMENT_ACK
_BARE_ACK = _encode(pb.TwoWayChannelMessage(type=_ACK))


def decode_message(payload: bytes) -> pb.TwoWayChannelMessage:
    """Parse one frame's payload; RemoteProtocolError (SYNTAX_ERROR) if it is invalid."""
    msg = pb.TwoWayChannelMessage()
    try:
        msg.ParseFromString(payload)
    except _PbDecodeError as exc:
        raise RemoteProtocolError(
            f"peer sent {len(payload)} bytes that do not parse as a TwoWayChannelMessage",
            code=ErrorCode.SYNTAX_ERROR,
        ) from exc
    problem = _problem(msg)
    if problem is not None:
        raise RemoteProtocolError(
            f"peer sent an invalid message: {problem}", code=ErrorCode.SYNTAX_ERROR
        )
    return msg


def error_code(error: pb.Error) -> ErrorCode:
    """The code of a received Error body as our ErrorCode (OTHER when absent)."""
    return ErrorCode(error.code)


def error_message(
    code: ErrorCode, explanation: str, expected_value: int | None = None
) -> pb.TwoWayChannelMessage:
    """Build an ERROR message; the explanation is cut to MAX_EXPLANATION characters."""
    error = pb.Error(
        code=pb.Error.ErrorCode.ValueType(int(code)), explanation=explanation[:MAX_EXPLANATION]
    )
    if expected_value is not None:
        error.expected_value = expected_value
    return pb.TwoWayChannelMessage(type=MessageType.ERROR, error=error)

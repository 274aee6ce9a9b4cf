"""Wire layer: bitcoinj-compatible framing and messages of the payment channel protocol.

Pure: no sockets, no asyncio (the stream that carries frames over TCP is `transport.stream`)."""

from bitcoind_paychan.wire import paychan_pb2 as pb
from bitcoind_paychan.wire.codec import (
    REQUIRED_BODY,
    MessageType,
    TwoWayChannelMessage,
    decode_message,
    encode_message,
    error_code,
    error_message,
    type_name,
)
from bitcoind_paychan.wire.framing import MAX_MESSAGE_SIZE, FrameDecoder, encode_frame

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REQUIRED_BODY",
    "FrameDecoder",
    "MessageType",
    "TwoWayChannelMessage",
    "decode_message",
    "encode_frame",
    "encode_message",
    "error_code",
    "error_message",
    "pb",
    "type_name",
]

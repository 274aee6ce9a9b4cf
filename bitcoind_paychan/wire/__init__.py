"""Wire layer: bitcoinj-compatible framing and messages of the payment channel protocol."""

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
from bitcoind_paychan.wire.stream import MessageStream, open_connection, start_server

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REQUIRED_BODY",
    "FrameDecoder",
    "MessageStream",
    "MessageType",
    "TwoWayChannelMessage",
    "decode_message",
    "encode_frame",
    "encode_message",
    "error_code",
    "error_message",
    "open_connection",
    "pb",
    "start_server",
    "type_name",
]

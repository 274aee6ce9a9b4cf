"""Sans-IO length-prefixed framing, as bitcoinj's ProtobufConnection does it.

A frame is a 4-byte big-endian signed length followed by that many payload bytes. bitcoinj
drops the connection on a negative length or one above 32767; so do we.
"""

from __future__ import annotations

import struct

from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

MAX_MESSAGE_SIZE = 32767
"""Largest payload bitcoinj accepts (and so the largest we send or accept)."""

HEADER_SIZE = 4
TLS_RECORDS = (b"\x15\x03", b"\x16\x03")
"""How a TLS alert or handshake record starts: read as a frame length, over 350 MB."""
_HEADER = struct.Struct(">i")


def encode_frame(payload: bytes) -> bytes:
    """Prefix `payload` with its length; LocalProtocolError if it exceeds MAX_MESSAGE_SIZE."""
    return _HEADER.pack(check_size(payload)) + payload


def check_size(payload: bytes) -> int:
    """The size of a message we send; LocalProtocolError if it exceeds MAX_MESSAGE_SIZE."""
    size = len(payload)
    if size > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(
            f"message of {size} bytes exceeds the {MAX_MESSAGE_SIZE}-byte protocol limit; "
            "a bitcoinj peer would drop the connection"
        )
    return size


def check_received_size(payload: bytes) -> bytes:
    """`payload` from a peer, if within MAX_MESSAGE_SIZE; else RemoteProtocolError
    (SYNTAX_ERROR), as an oversized length prefix is on TCP."""
    if len(payload) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(
            f"peer sent a message of {len(payload)} bytes; allowed is 0..{MAX_MESSAGE_SIZE}",
            code=ErrorCode.SYNTAX_ERROR,
        )
    return payload


class FrameDecoder:
    """Split a byte stream into frame payloads; feed it whatever the socket delivers.

    A bad length poisons the decoder: the stream cannot be resynchronised, so every later
    `feed` raises the same error.
    """

    __slots__ = ("_buffer", "_error")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a complete frame."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        """True once a bad length was seen; the next `feed` raises."""
        return self._error is not None

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return the payloads of all frames now complete, in order.

        A header announcing a negative or oversized length raises RemoteProtocolError
        (SYNTAX_ERROR) at once, without waiting for (or buffering) the body. Frames completed
        before it in the same chunk are returned first; the error comes from the next `feed`.
        """
        if self._error is not None:
            raise self._error
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size < 0 or size > MAX_MESSAGE_SIZE:
                self._error = RemoteProtocolError(_bad_length(size, bytes(buf[pos:pos + 16])),
                                                  code=ErrorCode.SYNTAX_ERROR)
                del buf[:]
                if frames:
                    return frames
                raise self._error
            start = pos + HEADER_SIZE
            if end - start < size:
                break
            frames.append(bytes(buf[start : start + size]))
            pos = start + size
        if pos:
            del buf[:pos]
        return frames


def _bad_length(size: int, start: bytes) -> str:
    """Why a length prefix is impossible, said for what the peer probably speaks instead."""
    if start[:2] in TLS_RECORDS:
        return (f"peer sent a frame length of {size}; allowed is 0..{MAX_MESSAGE_SIZE}; it "
                "speaks TLS, and this connection is plain TCP")
    if start.startswith((b"HTTP/", b"GET ", b"POST ", b"HEAD ")):
        return ("the peer speaks HTTP, not the payment channel protocol: this is not a "
                "paychan TCP port (a paychan WebSocket listener is reached as "
                "ws://host:port/path)")
    text = start.split(b"\r")[0].split(b"\n")[0]
    if len(text) >= HEADER_SIZE and all(32 <= b < 127 for b in text):
        return (f"the peer sent text ({text.decode()!r}), not the payment channel protocol: "
                "is this a paychan port?")
    return (f"peer sent a frame length of {size}; allowed is 0..{MAX_MESSAGE_SIZE}: it does not "
            "speak the payment channel protocol")

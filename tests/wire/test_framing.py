"""Length-prefixed framing (sans-IO)."""

from __future__ import annotations

import struct

import pytest

from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from bitcoind_paychan.wire import MAX_MESSAGE_SIZE, FrameDecoder, encode_frame


def test_encode_frame() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_encode_refuses_oversized() -> None:
    assert len(encode_frame(bytes(MAX_MESSAGE_SIZE))) == MAX_MESSAGE_SIZE + 4
    with pytest.raises(LocalProtocolError, match="32768 bytes"):
        encode_frame(bytes(MAX_MESSAGE_SIZE + 1))


def test_split_byte_by_byte() -> None:
    data = encode_frame(b"hello") + encode_frame(b"") + encode_frame(b"world")
    dec = FrameDecoder()
    out = [frame for i in range(len(data)) for frame in dec.feed(data[i : i + 1])]
    assert out == [b"hello", b"", b"world"]
    assert dec.buffered == 0


def test_merged_and_straddling_chunks() -> None:
    data = b"".join(encode_frame(bytes([i]) * i) for i in range(1, 6))
    dec = FrameDecoder()
    assert dec.feed(data[:7]) == [b"\x01"]
    assert dec.feed(data[7:]) == [bytes([i]) * i for i in range(2, 6)]
    assert dec.feed(b"") == []


def test_exact_maximum_accepted() -> None:
    payload = b"\xab" * MAX_MESSAGE_SIZE
    dec = FrameDecoder()
    assert dec.feed(encode_frame(payload)[:1000]) == []
    assert dec.feed(encode_frame(payload)[1000:]) == [payload]


@pytest.mark.parametrize("length", [MAX_MESSAGE_SIZE + 1, -1, -(2**31), 2**31 - 1])
def test_bad_length_rejected_from_header_alone(length: int) -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match=f"length of {length}") as info:
        dec.feed(struct.pack(">i", length))  # no body: rejected without buffering it
    assert info.value.code == ErrorCode.SYNTAX_ERROR
    assert dec.buffered == 0 and dec.failed
    with pytest.raises(RemoteProtocolError):  # poisoned: the stream cannot resync
        dec.feed(encode_frame(b"ok"))


def test_good_frames_before_bad_header_are_delivered() -> None:
    dec = FrameDecoder()
    assert dec.feed(encode_frame(b"a") + struct.pack(">i", -5)) == [b"a"]
    with pytest.raises(RemoteProtocolError):
        dec.feed(b"")

"""RFC 6455 §5.1: a server must close the connection on a client frame that is not masked.
aiohttp's server reads unmasked frames as if they were masked; this follows the client's frame
headers (`MaskCheck`, sans-IO) in front of aiohttp's reader and refuses the first unmasked one
(close code 1002, protocol error), as aiohttp refuses an oversized one (1009).

Relies on aiohttp's server internals (`WebSocketResponse._post_start` hands its reader, feeding
its queue `_reader`, to the request's protocol as `_payload_parser`, after feeding it what came
with the upgrade, `_message_tail`); tests/transport/test_websocket_frames.py sends unmasked
frames, with the upgrade and after it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

UNMASKED = "the client sent an unmasked frame (RFC 6455 requires clients to mask every frame)"


class MaskCheck:
    """Follows a client's frames across reads, header by header (payloads skipped)."""

    def __init__(self) -> None:
        self._head = b""  # the frame header read so far
        self._skip = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> bool:
        """False as soon as a frame header says the frame is not masked."""
        pos = 0
        while pos < len(data):
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            take = data[pos:pos + self._needed() - len(self._head)]
            self._head += take
            pos += len(take)
            if len(self._head) >= 2 and not self._head[1] & 0x80:
                return False
            if len(self._head) == self._needed():
                self._skip, self._head = self._payload_length(), b""
        return True

    def _needed(self) -> int:
        """Bytes of the current header: 2, then its extended length and its 4-byte mask."""
        if len(self._head) < 2:
            return 2
        code = self._head[1] & 0x7F
        return 2 + (2 if code == 126 else 8 if code == 127 else 0) + 4

    def _payload_length(self) -> int:
        code = self._head[1] & 0x7F
        if code == 126:
            return int.from_bytes(self._head[2:4], "big")
        if code == 127:
            return int.from_bytes(self._head[2:10], "big")
        return code


class _MaskedOnly:
    """aiohttp's frame reader behind a MaskCheck: an unmasked frame ends the connection."""

    def __init__(self, reader: Any, queue: Any, check: MaskCheck) -> None:
        self._reader = reader
        self._queue = queue  # where the reader puts messages (and errors) for receive()
        self._check = check
        self._refused = False

    def refuse(self) -> None:
        self._refused = True
        self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED))

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self._refused and not self._check.feed(bytes(data)):
            self.refuse()
        if self._refused:
            return False, b""
        result: tuple[bool, bytes] = self._reader.feed_data(data)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class MaskedWebSocketResponse(web.WebSocketResponse):
    """A server's WebSocketResponse that refuses unmasked client frames."""

    def _post_start(self, request: Any, *args: Any, **kwargs: Any) -> None:
        protocol = request.protocol
        check = MaskCheck()
        early = check.feed(bytes(protocol._message_tail))  # frames sent with the upgrade
        if not early:
            protocol._message_tail = b""  # not to be read
        super()._post_start(request, *args, **kwargs)  # hands aiohttp's reader to protocol
        masked = _MaskedOnly(protocol._payload_parser, self._reader, check)
        protocol._payload_parser = masked
        if not early:
            masked.refuse()

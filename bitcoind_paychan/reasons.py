"""Why a connection failed, in an operator's words: no errno numbers, socket address tuples,
`ssl:default` or exception class names (what `str()` of Python's and aiohttp's errors holds)."""

from __future__ import annotations

import os
import re
import socket


def connection_failure(exc: BaseException) -> str:
    """`exc` (an OSError, TimeoutError or aiohttp connection error) as a short phrase:
    'connection refused', 'no answer in time', 'host name not found', ..."""
    inner = getattr(exc, "os_error", None)  # aiohttp's ClientConnectorError wraps one
    if isinstance(inner, OSError):
        exc = inner
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    # asyncio's "Multiple exceptions: [Errno 111] Connect call failed ('::1', 1, 0, 0), ...":
    # one per address the name resolved to; the first says it.
    numbers = re.findall(r"\[Errno (\d+)\]", str(exc))
    if numbers:
        return os.strerror(int(numbers[0])).lower()
    text = re.sub(r"\[Errno \d+\] |\(?'[^']*', \d+(, \d+, \d+)?\)?| ?ssl:\S+", "", str(exc))
    return text.strip(" :[]") or "connection failed"

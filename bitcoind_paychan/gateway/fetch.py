"""`paychan fetch URL`: a curl-like paying client (the httpx auth flow of client.py), its
channels in a store of its own, its coins from the configured bitcoind wallet.

The body goes to stdout (or `-o FILE`), what was paid to stderr. A Server-Sent Events answer
that asks for payment (`event: payment-required`) is topped up, at least the offer's reserve
at a time, as long as the request's cap allows. Exit status: 0 for an answer under 400, 1
otherwise (or a refusal: a price over a cap)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from bitcoind_paychan.errors import PriceRefused
from bitcoind_paychan.gateway.client import PaychanAuth, paying
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.transport.paidhttp.wire import RECEIPT_HEADER, read_receipt

PAYMENT_EVENT = "payment-required"


@dataclass(frozen=True)
class Fetch:
    """One `paychan fetch`: the request and the caps."""

    url: str
    method: str = "GET"
    headers: Sequence[tuple[str, str]] = ()
    data: bytes | None = None
    output: Path | None = None
    include: bool = False  # the status line and headers to stderr
    value: int = 1_000_000  # sat locked in a new channel
    max_request: int | None = None
    max_total: int | None = None
    timeout: float = 60.0


def header_pair(text: str) -> tuple[str, str]:
    """`Name: value` (curl's -H) as a pair; ValueError if it has no colon."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ValueError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


async def fetch(wallet: Node | NodePorts, store: ChannelStore, job: Fetch,
                err: IO[str] = sys.stderr) -> int:
    """Run `job`, paying through `wallet`'s channels in `store`; its exit status."""
    async with (paying(wallet, store, job.value, max_request=job.max_request,
                       max_total=job.max_total) as auth,
                httpx.AsyncClient(auth=auth, timeout=job.timeout) as http,
                http.stream(job.method, job.url, headers=list(job.headers),
                            content=job.data) as response):
        if job.include:
            print(f"HTTP/{response.http_version.split('/')[-1]} {response.status_code} "
                  f"{response.reason_phrase}", file=err)
            for name, value in response.headers.multi_items():
                print(f"{name}: {value}", file=err)
        out = job.output.open("wb") if job.output else sys.stdout.buffer
        try:
            if "text/event-stream" in response.headers.get("content-type", ""):
                await _events(auth, job, response, out, err)
            else:
                async for chunk in response.aiter_raw():
                    out.write(chunk)
                    out.flush()
        finally:
            if job.output:
                out.close()
        found = response.headers.get(RECEIPT_HEADER)
        if found is not None:
            receipt = read_receipt(found)
            print(f"paid {auth.paid} sat; charged {receipt.charged} sat, credit "
                  f"{receipt.credit} sat", file=err)
        elif response.status_code == 402:
            print(f"402 Payment Required: {response.headers.get('WWW-Authenticate', '')}",
                  file=err)
        return 0 if response.status_code < 400 else 1


async def _events(auth: PaychanAuth, job: Fetch, response: httpx.Response, out: IO[bytes],
                  err: IO[str]) -> None:
    """Copy an SSE stream, topping up when it asks for payment: all this fetch pays stays
    within `max_request`."""
    event = ""
    async for line in response.aiter_lines():
        out.write(line.encode() + b"\n")
        out.flush()
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event == PAYMENT_EVENT:
            asked = json.loads(line[5:])
            amount = max(int(asked.get("needed", 1)), int(asked.get("reserve", 0)), 1)
            if job.max_request is not None and auth.paid + amount > job.max_request:
                raise PriceRefused(f"the stream asks {amount} sat more: over the cap of "
                                   f"{job.max_request} sat per request (--max-request); "
                                   "refused, the stream ends")
            print(f"topping up {amount} sat", file=err)
            await auth.top_up(job.url, amount)
        elif not line:
            event = ""


__all__ = ["Fetch", "fetch", "header_pair"]

"""A test server that behaves on the wire as a bitcoinj 0.15 server does (PROTOCOL.md):

- it speaks majors 1 and 2 only, and answers an unknown major by hanging up: its ERROR frame,
  like every last frame it sends before hanging up, is lost (queued, then the socket closed);
- it never answers CLOSE: it broadcasts the settlement, then stays connected and silent (its
  broadcast future hangs);
- it acknowledges increments of any positive amount (`min_payment` bounds the first only).

Our own server's machine does the protocol; only what reaches the wire is changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bitcoind_paychan.channel.effects import Disconnect, Effect, Send
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.transport import Link
from bitcoind_paychan.transport.limits import Admission
from bitcoind_paychan.transport.stream import MessageStream
from bitcoind_paychan.wire import pb

T = pb.TwoWayChannelMessage
BITCOINJ_POLICY = ServerPolicy(versions=(1, 2), min_payment=1_000)


class BitcoinjServer(PaymentServer):
    """PaymentServer with bitcoinj 0.15's habits on the wire."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.silent: set[Link] = set()  # connections it settled without CLOSE
        self._streams: dict[int, Link] = {}  # id(machine) → its connection

    async def _serve(self, stream: MessageStream, admission: Admission) -> None:
        await super()._serve(stream, admission)
        if stream in self.silent:
            await asyncio.Event().wait()  # connected and silent until the server stops

    async def _carry_out(self, machine: ServerChannel, stream: Link | None,
                         effects: list[Effect], settling: Any = None,
                         stored: Any = None) -> bool:
        if stream is not None:
            self._streams[id(machine)] = stream
        return await super()._carry_out(machine, stream, self._as_bitcoinj(machine, effects),
                                        settling, stored)

    async def _settlement(self, machine: ServerChannel, txid: str) -> list[Effect]:
        return self._as_bitcoinj(machine, await super()._settlement(machine, txid))

    def _as_bitcoinj(self, machine: ServerChannel, effects: list[Effect]) -> list[Effect]:
        if not any(isinstance(e, Disconnect) for e in effects):
            return effects
        sends = [e for e in effects if isinstance(e, Send)]
        if not sends:
            return effects
        last = sends[-1]
        if last.message.type == T.CLOSE:  # settled: no CLOSE, no hang-up
            stream = self._streams.get(id(machine))
            if stream is not None:
                self.silent.add(stream)
            return [e for e in effects if e is not last and not isinstance(e, Disconnect)]
        return [e for e in effects if e is not last]  # the last frame is lost

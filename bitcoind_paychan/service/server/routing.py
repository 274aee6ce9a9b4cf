"""Routing: a transport's connection read into its ServerConnection (pipelined
payments handed over together, the handshake's admission released once the channel is
open), and each channel to the one connection that holds its lease (a mixin of
ServerManager)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bitcoind_paychan.channel.effects import (
    Effect,
    StorePayment,
)
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.errors import RemoteProtocolError
from bitcoind_paychan.service.server.connection import ServerConnection
from bitcoind_paychan.service.server.settlement import Settlements
from bitcoind_paychan.transport.base import Link, Stream, Tappable
from bitcoind_paychan.transport.limits import Admission

# The "server" subsystem's lines (daemon/logs.py), as before the server had its package.
log = logging.getLogger("bitcoind_paychan.service.server")


class Routing(Settlements):
    """ServerManager's connections and which channel each holds (mixed in: the attributes
    are the manager's)."""

    _connections: set[ServerConnection]
    _stopping: bool
    accept: Callable[[Link, str], ServerConnection]  # the manager's (manager.py)

    async def serve(self, stream: Stream, admission: Admission | None = None) -> None:
        """Run one connection a transport reads from until it ends (the transport closes it):
        idle timeouts, pipelined payments handled together, the handshake's admission
        released once the channel is open."""
        connection = self.accept(stream, stream.peername)
        try:
            while not connection.closed:
                if isinstance(stream, Tappable) and connection.fast:
                    await connection.run_fast_lane(stream)  # until it needs this task
                    if connection.closed or self._stopping:
                        return
                try:
                    batch = [message] if (message := await stream.receive(
                        connection.idle_timeout)) else []
                    while (batch and connection.takes_more(len(batch))
                           and (more := stream.receive_buffered()) is not None):
                        batch.append(more)  # pipelined payments already here
                except RemoteProtocolError as exc:
                    await connection.refuse(exc)
                    return
                if not batch:
                    connection.connection_lost()
                    return
                await connection.receive_many(batch)
                if admission is not None and connection.handshake_over:
                    admission.release()
                if self._stopping:
                    return
        finally:
            connection.connection_lost()

    async def _take_lease(self, machine: ServerChannel, stream: Link, txid: str,
                          remaining: list[Effect]) -> list[Effect] | None:
        """Take the channel's lease for this connection (fencing whichever held it, on any
        instance), then check the channel is as this connection loaded it. None if so; else
        what to answer instead: its settlement if it was settled meanwhile, a refusal if
        payments were stored since (by the connection it replaces)."""
        holder = f"{self.leases.instance}/{id(stream):x}"
        lease = await asyncio.to_thread(self.leases.acquire, Role.SERVER, txid, holder)
        self._held[id(stream)] = lease
        stored = await asyncio.to_thread(self.store.get, Role.SERVER, txid)
        loaded = next((e.record.change + e.amount for e in remaining
                       if isinstance(e, StorePayment)), None)
        if loaded is None:
            loaded = machine.record.change if machine.record is not None else None
        if stored is not None and stored.status is ChannelStatus.OPEN and (
                stored.change == loaded):
            return None
        del self._held[id(stream)]
        self.leases.release(lease)
        return self._settled_or_refused(machine, stored, (
            "the channel took payments on another connection while this one resumed it "
            "(nothing was stored here); resume again"))

    def _ended(self, connection: ServerConnection) -> None:
        self._connections.discard(connection)
        for txid, owner in list(self._owners.items()):
            if owner is connection.link:
                del self._owners[txid]
        lease = self._held.pop(id(connection.link), None)
        if lease is not None:
            self.leases.release(lease)

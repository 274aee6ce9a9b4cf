"""Sessions: a session silent too long is dropped (the manager forgets its connection). On the
in-process chain: the node is not the point."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bitcoind_paychan.service.server import ServerConnection, ServerManager
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport.paidhttp import Session, Sessions
from regtest.memchain import MemChain
from regtest.memnode import MemNode


def test_sessions_silent_too_long_are_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(tmp_path / "api.db")
        manager = ServerManager(MemNode(MemChain()), store)
        await manager.start()
        sessions = Sessions(manager, idle_timeout=600)
        handshaking, idle, paying = [await sessions.new() for _ in range(3)]
        idle.opened("ab" * 32, 5_000)
        paying.opened("cd" * 32, 5_000)
        handshaking.used -= manager.handshake_timeout + 1  # opened no channel in time
        idle.used -= 601  # its channel's client went quiet for longer than the idle timeout
        paying.used -= manager.handshake_timeout + 1  # open: only the idle timeout counts
        await sessions.new()  # a new session sweeps the old ones

        def closed(session: Session) -> bool:
            connection = session.connection
            assert isinstance(connection, ServerConnection)
            return connection.closed

        assert sessions.get(handshaking.id) is None and closed(handshaking)
        assert sessions.get(idle.id) is None and closed(idle)
        assert sessions.get(paying.id) is paying and not closed(paying)
        assert len(sessions) == 2
        await manager.stop()
        store.close()

    asyncio.run(main())

"""The server's re-anchoring steps (issue 23, docs/design/reanchoring.md), between a machine's
PrepareReanchor / CheckReanchor and its StoreChannel of the complete R (a mixin of the
manager: its wallet, node, leases and clock). Off unless the server's policy enables it
(`ServerPolicy.reanchoring`).

The quote prices R with the autopilot's fee estimate and pays out to the configured payout
script or a fresh one of the wallet. R is checked with the node (`testmempoolaccept`: the
client's wallet inputs exist, are unspent and signed); a payout script this connection did
not quote (R re-sent after a resume) must be the wallet's (`Wallet.owns_script`), else a
client could route the payout to itself. The complete R is stored under the connection's
lease (`Leases.store_reanchor`), after every payment handed to the writer before it, and only
then broadcast and sent back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import Disconnect, Effect, Send
from bitcoind_paychan.channel.reanchor import promoted
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.errors import ErrorCode, NodeError, StoreError, TransactionRejected
from bitcoind_paychan.node.ports import Broadcaster, Wallet
from bitcoind_paychan.service.outbox import send_all
from bitcoind_paychan.service.server.connection import ServerConnection
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.leases import Lease, Leases
from bitcoind_paychan.store.writer import PaymentWriter

log = logging.getLogger("bitcoind_paychan.service.server")

FOREIGN_PAYOUT = "it pays out to a script that is not the server's wallet's"


class Reanchors:
    """ServerManager's re-anchoring steps (mixed in: the attributes are the manager's)."""

    wallet: Wallet
    broadcaster: Broadcaster
    store: ChannelStore
    payments: PaymentWriter
    _connections: set[ServerConnection]
    _held: dict[int, Lease]
    leases: Leases
    watcher: ChainWatcher
    payout_script: bytes | None
    clock: Callable[[], float]

    async def _prepare_reanchor(self, machine: ServerChannel) -> list[Effect]:
        """The machine's quote at the node's fee estimate; REANCHOR_REFUSED if the node
        cannot give one (the channel goes on)."""
        try:
            fee_rate = await self.watcher.fee_rate()
            payout = self.payout_script or await self.wallet.payout_script()
        except NodeError as exc:
            log.warning("cannot quote a re-anchor now: %s", exc)
            return [Send(messages.reanchor_refused(f"the server cannot quote now: {exc}"))]
        return machine.quote_reanchor(fee_rate, payout, int(self.clock()))

    async def _check_reanchor(self, machine: ServerChannel, tx: Transaction,
                              payout_script: bytes) -> list[Effect]:
        """The machine's answer to the node's verdict on R (complete, not broadcast)."""
        refusal: str | None = None
        try:
            if payout_script and payout_script != self.payout_script and not (
                    await self.wallet.owns_script(payout_script)):
                refusal = FOREIGN_PAYOUT
            else:
                await self.broadcaster.check_acceptable(tx)
        except TransactionRejected as exc:
            refusal = f"the server's node refused it: {exc.reason}"
        except NodeError as exc:
            refusal = f"the server's node cannot check it now: {exc}"
        if refusal:
            log.info("refused re-anchor %s: %s", tx.txid_hex, refusal)
        return machine.reanchor_checked(refusal)

    async def _locked_offset(self, record: ChannelRecord | None) -> int | None:
        """A re-anchored channel's last offset (what its last re-anchor added to a payment's
        change on the contract before it), from the stored generations; None before any."""
        if record is None or not record.generation:
            return None
        generations = await asyncio.to_thread(self.store.generations, Role.SERVER,
                                              record.channel_id)
        last = generations[-1]
        return record.contract.value + last.payout - last.value

    async def _promote(self, channel_id: str) -> ChannelRecord | None:
        """The autopilot's promotion (its `promote:` duty claimed; R buried deep enough):
        through the live connection holding the channel here, whose machine moves with the
        store and tells the client (REANCHOR_LOCKED); else under the channel's lease, taken
        for it (a connection elsewhere is fenced: its client resumes and is told). The
        promoted record, or None if the store refused (it is tried again at the next
        review)."""
        connection = self._holder(channel_id)
        try:
            fee_rate = await self.watcher.fee_rate()  # a settlement moved to C' pays it
            if connection is not None:
                return await self._promote_live(connection, fee_rate)
            holder = f"{self.leases.instance}/promote"
            lease = await asyncio.to_thread(self.leases.acquire, Role.SERVER, channel_id,
                                            holder)
            try:
                return await asyncio.to_thread(self.leases.store_promotion, lease, fee_rate)
            finally:
                await asyncio.to_thread(self.leases.release, lease)
        except (StoreError, NodeError) as exc:
            log.warning("channel %s not promoted now: %s", channel_id, exc)
            return None

    def _holder(self, channel_id: str) -> ServerConnection | None:
        """The live, proven connection here holding the channel's lease, if any."""
        for connection in self._connections:
            record = connection.machine.record
            if (record is not None and record.channel_id == channel_id
                    and not connection.closed and id(connection.link) in self._held
                    and record.pending is not None and record.pending.complete):
                return connection
        return None

    async def _promote_live(self, connection: ServerConnection, fee_rate: int
                            ) -> ChannelRecord:
        """Promote in the order of the connection's payments: the store's promotion is
        queued behind every payment handed to the writer (signed for the old generation) and
        the machine moves in the same step, so every later payment is of the new one. Then
        REANCHOR_LOCKED goes out. If the store refuses, the connection ends (its client
        resumes)."""
        machine, link = connection.machine, connection.link
        lease = self._held[id(link)]
        promotion = asyncio.ensure_future(self.payments.in_order(
            partial(self.leases.store_promotion, lease, fee_rate)))
        record = machine.record
        assert record is not None
        effects = machine.reanchor_confirmed(promoted(record))
        try:
            stored = await promotion
        except StoreError:
            await link.close()
            connection.connection_lost()
            raise
        # The machine's answer is REANCHOR_LOCKED alone (nothing on a closed connection).
        await send_all(link, [effect.message for effect in effects if isinstance(effect, Send)])
        return stored

    async def _store_reanchor(self, record: ChannelRecord, lease: Lease | None) -> list[Effect]:
        """Store the complete R under `lease`; on refusal the connection's end (nothing
        stored, so R is neither broadcast nor sent back), else nothing."""
        try:
            if lease is None:
                raise StoreError("a re-anchor is stored only under the channel's lease")
            await asyncio.to_thread(self.leases.store_reanchor, record, lease)
        except StoreError as exc:  # LeaseLost, SettlementDecided, or the store failed
            log.warning("re-anchor of %s not stored, so not broadcast: %s",
                        record.channel_id, exc)
            why = f"cannot re-anchor now: {exc}"
            return [Send(messages.error(ErrorCode.OTHER, why)), Disconnect(why)]
        log.info("re-anchor %s of channel %s stored", record.pending and record.pending.txid,
                 record.channel_id)
        return []

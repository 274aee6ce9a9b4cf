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
from collections.abc import Awaitable, Callable

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import Disconnect, Effect, Send
from bitcoind_paychan.channel.reanchor_autopilot import server_wish
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy, ServerState
from bitcoind_paychan.errors import (
    ErrorCode,
    LocalProtocolError,
    NodeError,
    StoreError,
    TransactionRejected,
)
from bitcoind_paychan.node.ports import Broadcaster, Wallet
from bitcoind_paychan.service.server.connection import ServerConnection
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store.leases import Lease, Leases
from bitcoind_paychan.transport.base import Link
from bitcoind_paychan.wire import pb

log = logging.getLogger("bitcoind_paychan.service.server")

FOREIGN_PAYOUT = "it pays out to a script that is not the server's wallet's"
REQUOTE_AFTER = 60.0  # s before the autopilot quotes again a client that did not sign


class Reanchors:
    """ServerManager's re-anchoring steps (mixed in: the attributes are the manager's)."""

    wallet: Wallet
    broadcaster: Broadcaster
    leases: Leases
    watcher: ChainWatcher
    payout_script: bytes | None
    clock: Callable[[], float]
    policy: ServerPolicy
    _connections: set[ServerConnection]
    _carry_out: Callable[[ServerChannel, Link | None, list[Effect]], Awaitable[bool]]

    async def _prepare_reanchor(self, machine: ServerChannel, payout: bool = True,
                                time_window: int = 0) -> list[Effect]:
        """The machine's quote at the node's fee estimate (the client's PROPOSE answered, or
        the server's own wish: `payout`, a renewal of `time_window` s); REANCHOR_REFUSED if
        the node cannot give one (the channel goes on)."""
        try:
            fee_rate = await self.watcher.fee_rate()
            script = self.payout_script or await self.wallet.payout_script()
        except NodeError as exc:
            log.warning("cannot quote a re-anchor now: %s", exc)
            return [Send(messages.reanchor_refused(f"the server cannot quote now: {exc}"))]
        return machine.quote_reanchor(fee_rate, script, int(self.clock()), payout, time_window)

    async def _reanchor_unasked(self, connection: ServerConnection) -> None:
        """The autopilot (`payout_above`, `renew_before`): REANCHOR_TERMS sent unasked on a
        live connection once a payout or a renewal is due, at most once per REQUOTE_AFTER
        seconds while the client has not signed (it may decline without a word)."""
        machine, now = connection.machine, self.clock()
        if (not machine.reanchoring or machine.record is None or now < connection.quote_after
                or machine.state is not ServerState.OPEN):
            return
        wish = server_wish(self.policy, machine.record, machine.acked_change, int(now))
        if wish is None:
            return
        connection.quote_after = now + REQUOTE_AFTER
        effects = await self._prepare_reanchor(machine, *wish)
        await self._carry_out(machine, connection.link, effects)

    async def quote(self, channel_id: str, payout: bool = True, time_window: int = 0
                    ) -> dict[str, int]:
        """Send the live client of channel `channel_id` a re-anchor quote now (`paychan
        payout`, `paychan renew` on a server): a payout of what it acknowledged (`payout`)
        and/or a renewal to `time_window` s from now. The client signs it on its connection
        (its policy must enable re-anchoring); returns what was quoted. LocalProtocolError
        if the channel has no live connection here, did not negotiate re-anchoring, or
        has nothing to quote."""
        connection = next((c for c in self._connections if c.machine.record is not None
                           and c.machine.record.channel_id == channel_id
                           and not c.closed), None)
        if connection is None:
            raise LocalProtocolError(f"channel {channel_id} has no live connection on this "
                                     "server: a re-anchor is quoted to a connected client "
                                     "(the autopilot quotes when it comes back)")
        machine = connection.machine
        effects = await self._prepare_reanchor(machine, payout, time_window)
        quoted = next((e.message.reanchor_terms for e in effects if isinstance(e, Send)
                       and e.message.type == pb.TwoWayChannelMessage.REANCHOR_TERMS), None)
        refused = next((e.message.reanchor_refused.explanation for e in effects
                        if isinstance(e, Send) and e.message.type
                        == pb.TwoWayChannelMessage.REANCHOR_REFUSED), None)
        if refused is not None or not effects:
            raise LocalProtocolError(f"channel {channel_id} cannot be re-anchored now: "
                                     f"{refused or 'a re-anchor is in flight'}")
        await self._carry_out(machine, connection.link, effects)
        assert quoted is not None
        return {"payout": quoted.payout, "expiry": quoted.expire_time_secs,
                "fee_rate": quoted.fee_rate}

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

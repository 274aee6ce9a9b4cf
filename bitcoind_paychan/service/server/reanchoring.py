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

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import CheckReanchor, Disconnect, Effect, Send
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.errors import ErrorCode, NodeError, StoreError, TransactionRejected
from bitcoind_paychan.node.ports import Broadcaster, Wallet
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store.leases import Lease, Leases

log = logging.getLogger("bitcoind_paychan.service.server")

FOREIGN_PAYOUT = "it pays out to a script that is not the server's wallet's"


class Reanchors:
    """ServerManager's re-anchoring steps (mixed in: the attributes are the manager's)."""

    wallet: Wallet
    broadcaster: Broadcaster
    leases: Leases
    watcher: ChainWatcher
    payout_script: bytes | None
    clock: Callable[[], float]
    contract_checks: asyncio.Semaphore

    async def _check_slot(self, what: str, tx: Transaction) -> str:
        raise NotImplementedError  # the executor's

    async def _prepare_reanchor(self, machine: ServerChannel, quoted: bytes) -> list[Effect]:
        """The machine's quote at the node's fee estimate, to the connection's earlier quote's
        script (`quoted`), else the configured one or a fresh one of the wallet;
        REANCHOR_REFUSED if the node cannot give them (the channel goes on)."""
        try:
            fee_rate = await self.watcher.fee_rate()
            payout = quoted or self.payout_script or await self.wallet.payout_script()
        except NodeError as exc:
            log.warning("cannot quote a re-anchor now: %s", exc)
            return machine.reanchor_unquoted(f"the server cannot quote now: {exc}")
        return machine.quote_reanchor(fee_rate, payout, int(self.clock()))

    async def _check_reanchor(self, machine: ServerChannel, check: CheckReanchor
                              ) -> list[Effect]:
        """The machine's answer to the node's verdict on R (complete, not broadcast): with
        R's fee as the node counts it, and the fee estimate for an R not quoted here. Node
        checks share the contracts' slots (`max_contract_checks`)."""
        tx, payout_script = check.tx, check.payout_script
        refusal: str | None = None
        fee = estimate = None
        busy = await self._check_slot("re-anchor", tx)
        if busy:
            return machine.reanchor_checked(f"the server is {busy}")
        try:
            if payout_script and payout_script != self.payout_script and not (
                    await self.wallet.owns_script(payout_script)):
                refusal = FOREIGN_PAYOUT
            else:
                fee = (await self.broadcaster.check_acceptable(tx)).fee
                estimate = await self.watcher.fee_rate() if check.resent else None
        except TransactionRejected as exc:
            refusal = f"the server's node refused it: {exc.reason}"
        except NodeError as exc:
            refusal = f"the server's node cannot check it now: {exc}"
        finally:
            self.contract_checks.release()
        if refusal:
            log.info("refused re-anchor %s: %s", tx.txid_hex, refusal)
        return machine.reanchor_checked(refusal, fee, estimate)

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

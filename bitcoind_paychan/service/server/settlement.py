"""The server's settlements, one per channel: the steps ServerManager takes between a machine's
PrepareSettlement and the CLOSING write (a mixin of the manager: its store, leases, wallet,
autopilot and connections).

Whichever path asks for a settlement (the client's CLOSE or last payment, a resume near expiry,
the autopilot, the application's `settle`), it claims the channel's settling duty
(`settle:<txid>`; the autopilot claims it before), takes the channel's lease (fencing every
connection, on any instance), re-reads the channel and builds the settlement only if it is
still OPEN as the machine knows it. Its CLOSING write is stored only while that lease is
current and the channel still OPEN (`Leases.store_settlement`); otherwise nothing is stored
and nothing broadcast. A channel found settling is answered with its stored settlement.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import Disconnect, Effect, Send
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.channel.watch import replacing_rate
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, NodeError, StoreError
from bitcoind_paychan.node.ports import Wallet
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.leases import Lease, Leases
from bitcoind_paychan.transport.base import Link

log = logging.getLogger("bitcoind_paychan.service.server")  # the server's lines, as before


@dataclass
class Settling:
    """One carry-out's settlement: whether its duty was claimed before (by the autopilot),
    the duty it claimed itself (finished when the carry-out ends), the lease its CLOSING write
    is fenced by, and what came of it."""

    claimed: bool = False
    duty: str | None = None
    lease: Lease | None = None
    settlement: Transaction | None = None
    failure: str = ""


class Settlements:
    """ServerManager's settlement steps (mixed in: the attributes are the manager's)."""

    wallet: Wallet
    store: ChannelStore
    leases: Leases
    watcher: ChainWatcher
    payout_script: bytes | None
    _owners: dict[str, Link]
    _held: dict[int, Lease]

    def _settled_or_refused(self, machine: ServerChannel, stored: ChannelRecord | None,
                            refusal: str) -> list[Effect]:
        """The machine's answer if the stored channel is settling (its settlement), else
        `refusal` (ERROR, hang up)."""
        if stored is not None and stored.status is ChannelStatus.CLOSING:
            log.info("channel %s was settled meanwhile: answering with its settlement",
                     stored.contract_txid)
            return machine.settlement_decided(stored)
        log.info("refusing the resume of %s: %s", machine.record and
                 machine.record.contract_txid, refusal)
        return [Send(messages.error(ErrorCode.OTHER, refusal)), Disconnect(refusal)]

    async def _prepare_settlement(self, machine: ServerChannel, stream: Link | None,
                                  txid: str, settling: Settling) -> list[Effect]:
        """One settlement per channel: claim its settling duty (unless the autopilot did),
        take its lease (fencing every other connection, on any instance), re-read it; only if
        it is still open as this machine knows it, price and build the settlement."""
        if not settling.claimed:
            duty = f"settle:{txid}"
            if not await asyncio.to_thread(self.leases.claim, duty):
                stored = await asyncio.to_thread(self.store.get, Role.SERVER, txid)
                settling.failure = "another connection or instance is settling it"
                return self._settled_or_refused(machine, stored, (
                    "the channel is being settled by another connection or instance; resume "
                    "again to receive its settlement"))
            settling.claimed, settling.duty = True, duty
        holder = f"{self.leases.instance}/settle"
        lease = settling.lease = await asyncio.to_thread(self.leases.acquire, Role.SERVER,
                                                         txid, holder)
        if stream is not None:
            self._held[id(stream)] = lease  # released when the connection ends
        stored = await asyncio.to_thread(self.store.get, Role.SERVER, txid)
        record = machine.record
        if stored is None or record is None or stored.status is not ChannelStatus.OPEN or (
                stored.change != record.change):
            settling.failure = "it changed since it was read"
            return self._settled_or_refused(machine, stored, (
                "the channel took payments on another connection since this one loaded it "
                "(nothing was stored here); resume again"))
        owner = self._owners.pop(txid, None)
        if owner is not None and owner is not stream:
            await owner.close()
        return await self._settlement(machine, txid)

    async def _store_settlement(self, record: ChannelRecord, settling: Settling) -> str:
        """Store the channel CLOSING with its settlement, fenced by the settlement's lease;
        on refusal what to tell the client (nothing was stored: nothing is broadcast)."""
        if settling.lease is None:
            raise LocalProtocolError("a settlement is stored only under the lease it took")
        try:
            await asyncio.to_thread(self.leases.store_settlement, record, settling.lease)
        except StoreError as exc:  # LeaseLost, SettlementDecided, or the store failed
            log.warning("settlement of %s not stored, so not broadcast: %s",
                        record.contract_txid, exc)
            settling.failure = str(exc)
            return f"cannot settle now: {exc}"
        settling.settlement = Transaction.parse(record.settlement_tx or b"")
        return ""

    async def _settlement(self, machine: ServerChannel, txid: str) -> list[Effect]:
        try:
            fee_rate = await self.watcher.fee_rate()
            payout = self.payout_script or await self.wallet.payout_script()
            if machine.record is not None:  # a re-anchor R in flight: the settlement replaces it
                fee_rate = max(fee_rate, replacing_rate(machine.record, payout))
            return machine.settle(fee_rate, payout)
        except (NodeError, LocalProtocolError) as exc:
            log.error("cannot settle channel %s now: %s", txid, exc)
            return [Send(messages.error(ErrorCode.OTHER, f"cannot settle now: {exc}")),
                    Disconnect("settlement failed")]

    async def _fund_settlement(self, machine: ServerChannel, draft: Transaction, weight: int,
                               fee_rate: int) -> list[Effect]:
        contract = draft.inputs[0].prevout
        try:
            funded = await self.wallet.fund_external(
                draft, {(contract.txid_hex, contract.index): weight}, fee_rate)
            log.info("the settlement's fee comes from a wallet input (share too small)")
            return machine.settle_funded(funded)
        except (NodeError, LocalProtocolError) as exc:
            log.error("cannot fund the settlement of %s: %s", contract.txid_hex, exc)
            return [Send(messages.error(ErrorCode.OTHER, f"cannot settle now: {exc}")),
                    Disconnect("settlement failed")]

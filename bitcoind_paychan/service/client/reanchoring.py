"""The client's re-anchoring steps (issue 23, docs/design/reanchoring.md) for `Channel`: its
wallet funding a top-up (FundReanchor), what to do with that funding's coins when a
re-anchor ends, and the promotion on the server's REANCHOR_LOCKED once our own node confirms
R (ReanchorLocked). Off unless the client's policy enables it (`ClientPolicy.reanchoring`)."""

from __future__ import annotations

import asyncio
import logging

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import reanchor
from bitcoind_paychan.channel.client import ClientChannel
from bitcoind_paychan.channel.effects import Effect, FundReanchor, ReanchorEnded, ReanchorLocked
from bitcoind_paychan.errors import PaychanError
from bitcoind_paychan.node.ports import ChainSource, Outpoint, Wallet
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store import ChannelStore

log = logging.getLogger("bitcoind_paychan.service.client")


def wallet_inputs(tx: Transaction) -> tuple[Outpoint, ...]:
    """R's inputs our wallet added (input 0 is the contract)."""
    return tuple((txin.prevout.txid_hex, txin.prevout.index) for txin in tx.inputs[1:])


async def fund_reanchor(wallet: Wallet, machine: ClientChannel, effect: FundReanchor
                        ) -> list[Effect]:
    """The wallet's inputs and change for R (its coins locked), handed to the machine; the
    coins released again if the machine does not take them."""
    contract = effect.draft.inputs[0].prevout
    funded = await wallet.fund_external(
        effect.draft, {(contract.txid_hex, contract.index): effect.contract_input_weight},
        effect.fee_rate)
    try:
        return machine.reanchor_funded(funded)
    except BaseException:
        await wallet.release(wallet_inputs(funded))
        raise


async def reanchor_ended(wallet: Wallet, machine: ClientChannel, effect: ReanchorEnded
                         ) -> None:
    """Release the coins of a funded R that was never signed out (no pending re-anchor holds
    it). A refused R we sent keeps them locked: the server could still complete it, so they
    are released only once R cannot confirm (not built yet: spend one back)."""
    log.info("re-anchor of channel %s ended: %s", effect.contract_txid, effect.reason)
    if effect.tx is None:
        return
    pending = machine.record.pending if machine.record is not None else None
    if pending is not None and pending.txid == effect.tx.txid_hex:
        log.warning("the top-up coins of refused re-anchor %s stay locked until it cannot "
                    "confirm", effect.tx.txid_hex)
        return
    await wallet.release(wallet_inputs(effect.tx))



async def reanchor_locked(chain: ChainSource, store: ChannelStore, watcher: ChainWatcher,
                          machine: ClientChannel, effect: ReanchorLocked) -> list[Effect]:
    """The server says R confirmed: promote the channel only if our own node shows R with a
    confirmation (store the promoted record, then the machine follows); else stay on C,
    signing on both contracts, C's refund kept (our watcher promotes once R confirms)."""
    pending = effect.record.pending
    assert pending is not None
    try:
        status = await chain.transaction(pending.txid)
    except PaychanError as exc:
        log.warning("cannot see re-anchor %s on our node (%s): channel %s stays on its "
                    "contract until it can", pending.txid, exc, effect.record.channel_id)
        return []
    if status is None or status.confirmations < 1:
        log.info("the server says re-anchor %s confirmed; our node does not yet: channel %s "
                 "stays on its contract, payments signed on both", pending.txid,
                 effect.record.channel_id)
        return []
    promoted = reanchor.promoted(effect.record)
    await asyncio.to_thread(store.put, promoted)
    watcher.watch(promoted)
    return machine.reanchor_confirmed(promoted)

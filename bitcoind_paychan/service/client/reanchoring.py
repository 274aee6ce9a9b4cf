"""The client's re-anchoring steps (issue 23, docs/design/reanchoring.md) for `Channel`: its
wallet funding a top-up (FundReanchor), what to do with that funding's coins when a
re-anchor ends, and the promotion on the server's REANCHOR_LOCKED once our own node confirms
R (ReanchorLocked). Off unless the client's policy enables it (`ClientPolicy.reanchoring`)."""

from __future__ import annotations

import logging

from bitcoind_paychan.bitcoin.tx import Transaction, TxOut
from bitcoind_paychan.channel import reanchor
from bitcoind_paychan.channel.client import ClientChannel
from bitcoind_paychan.channel.effects import (
    Effect,
    FundReanchor,
    ReanchorEnded,
    ReanchorLocked,
    StoreChannel,
)
from bitcoind_paychan.errors import NodeError, PaychanError
from bitcoind_paychan.node.ports import Broadcaster, ChainSource, Outpoint, Wallet

log = logging.getLogger("bitcoind_paychan.service.client")


def wallet_inputs(tx: Transaction) -> tuple[Outpoint, ...]:
    """R's inputs our wallet added (input 0 is the contract)."""
    return tuple((txin.prevout.txid_hex, txin.prevout.index) for txin in tx.inputs[1:])


async def fund_reanchor(wallet: Wallet, chain: ChainSource, machine: ClientChannel,
                        effect: FundReanchor) -> list[Effect]:
    """The wallet's inputs and change for R (its coins locked), handed to the machine with
    the outputs those coins spend when the kind signs over them (v4); the coins released
    again if the machine does not take them."""
    contract = effect.draft.inputs[0].prevout
    funded = await wallet.fund_external(
        effect.draft, {(contract.txid_hex, contract.index): effect.contract_input_weight},
        effect.fee_rate)
    try:
        needs_spent = machine.record is not None and (
            machine.record.contract.kind.reanchor_needs_spent)
        spent = await spent_outputs(chain, funded) if needs_spent else ()
        return machine.reanchor_funded(funded, spent)
    except BaseException:
        await wallet.release(wallet_inputs(funded))
        raise


async def spent_outputs(chain: ChainSource, tx: Transaction) -> tuple[TxOut, ...]:
    """The outputs R's wallet inputs spend, as the node knows them."""
    outputs = []
    for txid, index in wallet_inputs(tx):
        status = await chain.transaction(txid)
        if status is None:
            raise NodeError(f"the node does not know {txid}, whose output {index} the wallet "
                            "funded the re-anchor with")
        outputs.append(status.tx.outputs[index])
    return tuple(outputs)


async def release_dead(wallet: Wallet, chain: ChainSource, effect: ReanchorEnded) -> int:
    """The watcher found R dead (a wallet input of it spent elsewhere): release those of
    its wallet coins still unspent (each alone: one released already, or spent, is no
    error). How many were released."""
    assert effect.tx is not None
    released = 0
    for outpoint in wallet_inputs(effect.tx):
        try:
            if not await chain.is_spent(*outpoint):
                await wallet.release((outpoint,))
                released += 1
        except NodeError as exc:
            log.debug("coin %s:%d of dead re-anchor not released: %s", *outpoint, exc)
    if released:
        log.info("%s; %d of its wallet coins released", effect.reason, released)
    return released


async def reanchor_ended(wallet: Wallet, broadcaster: Broadcaster, fee_rate: int,
                         machine: ClientChannel, effect: ReanchorEnded) -> None:
    """Release the coins of a funded R that was never signed out (no pending re-anchor holds
    it). A refused R we sent could still be completed by its server: one of its wallet coins
    is spent back to us first (`Wallet.reclaim`), which kills R, then the others are
    released; if our node refuses that spend (R itself is in the mempool: the server
    completed it after all), they stay locked and R may confirm (C' is ours to refund)."""
    log.info("re-anchor of channel %s ended: %s", effect.contract_txid, effect.reason)
    if effect.tx is None:
        return
    coins = wallet_inputs(effect.tx)
    pending = machine.record.pending if machine.record is not None else None
    if pending is not None and pending.txid == effect.tx.txid_hex:
        try:
            await broadcaster.broadcast(await wallet.reclaim(coins[0], fee_rate))
        except NodeError as exc:
            log.warning("the top-up coins of refused re-anchor %s stay locked until it cannot "
                        "confirm: spending one back was refused (%s)", effect.tx.txid_hex, exc)
            return
        log.info("refused re-anchor %s killed: coin %s:%d spent back to the wallet",
                 effect.tx.txid_hex, *coins[0])
        coins = coins[1:]
    if coins:
        await wallet.release(coins)


async def reanchor_locked(chain: ChainSource, machine: ClientChannel, effect: ReanchorLocked,
                          final: int) -> list[Effect]:
    """The server says R confirmed: promote the channel only if our own node shows R with a
    confirmation, or `final` (our `forget_depth`) for a top-up R (`promotion_depth`: a reorg
    could leave C funded with no refund of it); the machine moves, then the promoted record
    is stored in the order of the payments handed to the writer. Else stay on C, signing on
    both contracts, C's refund kept (our watcher moves it once R is buried:
    `Channel.promote_lagging`)."""
    pending = effect.record.pending
    assert pending is not None
    try:
        status = await chain.transaction(pending.txid)
    except PaychanError as exc:
        log.warning("cannot see re-anchor %s on our node (%s): channel %s stays on its "
                    "contract until it can", pending.txid, exc, effect.record.channel_id)
        return []
    needed = reanchor.promotion_depth(Transaction.parse(pending.tx), 1, final)
    if status is None or status.confirmations < needed:
        log.info("the server says re-anchor %s confirmed; our node does not show it %d deep "
                 "yet: channel %s stays on its contract, payments signed on both",
                 pending.txid, needed, effect.record.channel_id)
        return []
    effects = machine.reanchor_confirmed(reanchor.promoted(effect.record))
    assert machine.record is not None
    return [StoreChannel(machine.record), *effects]

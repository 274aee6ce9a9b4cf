"""The effects executor: what a server machine asks for, carried out strictly in
order (store, check with the node, broadcast, claim, settle, send), payments handed to the
group commit at once and each awaited in its place (a mixin of ServerManager)."""

from __future__ import annotations

import asyncio
import logging

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelClosed,
    ChannelOpened,
    CheckContract,
    CheckReanchor,
    ClaimChannel,
    Disconnect,
    Effect,
    FundSettlement,
    LoadChannel,
    PaymentReceived,
    PeerError,
    PrepareReanchor,
    PrepareSettlement,
    Purpose,
    ReanchorEnded,
    ReanchorSigned,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.errors import (
    ErrorCode,
    LeaseLost,
    NodeError,
    NodeUnreachable,
    SettlementDecided,
    TransactionRejected,
)
from bitcoind_paychan.logcontext import bind_channel
from bitcoind_paychan.node.ports import Broadcaster
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.outbox import effects_in_order
from bitcoind_paychan.service.server.events import EventHandler, PaymentHandler
from bitcoind_paychan.service.server.reanchoring import Reanchors
from bitcoind_paychan.service.server.routing import Routing
from bitcoind_paychan.service.server.settlement import Settling
from bitcoind_paychan.store.writer import Outcomes, PaymentWriter, Writes
from bitcoind_paychan.transport.base import Link
from bitcoind_paychan.transport.limits import PeerGate

# The "server" subsystem's lines (daemon/logs.py), as before the server had its package.
log = logging.getLogger("bitcoind_paychan.service.server")


class EffectsExecutor(Routing, Reanchors):
    """ServerManager's carrying out of effects (mixed in: the attributes are the
    manager's)."""

    broadcaster: Broadcaster
    payments: PaymentWriter
    gate: PeerGate
    contract_checks: asyncio.Semaphore
    handshake_timeout: float
    callbacks: Callbacks
    on_event: EventHandler | None
    on_payment: PaymentHandler | None

    async def _carry_out(self, machine: ServerChannel, stream: Link | None,
                         effects: list[Effect], settling: Settling | None = None,
                         stored: Outcomes | None = None) -> bool:
        """Do what the machine asked, in order. False once the connection must end.

        Every payment among `effects` is handed to the writer at once (so pipelined payments
        share a commit); each is still awaited in its place, before what follows it (its ack),
        and acks go out together after the last one's commit. Payments after a ClaimChannel
        wait for its lease (they are written under it, in their turn). A settlement's duty,
        claimed on the way, is finished at the end. `stored`: the payments were handed to
        the writer already (the fast lane's), with these outcomes."""
        claims = any(isinstance(effect, ClaimChannel) for effect in effects)
        writes = (Writes.answered(effects, stored, self.payments) if stored is not None else
                  self.payments.start([] if claims or stream is None else effects,
                                      self._held.get(id(stream)) if stream is not None
                                      else None))
        # A settlement decided on a later frame (a key-path close's last CLOSE) is fenced by
        # the lease its PrepareSettlement took for this connection.
        settling = settling or Settling(
            lease=self._held.get(id(stream)) if stream is not None else None)
        try:
            return await self._carry_out_in_order(machine, stream, list(effects), writes,
                                                  settling)
        finally:
            await writes.finish()
            if settling.duty is not None:
                await asyncio.to_thread(self.leases.finish, settling.duty)
            if stream is None and settling.lease is not None:
                await asyncio.to_thread(self.leases.release, settling.lease)

    async def _carry_out_in_order(self, machine: ServerChannel, stream: Link | None,
                                  queue: list[Effect], writes: Writes,
                                  settling: Settling) -> bool:
        async for effect in effects_in_order(queue, stream, (StorePayment, PaymentReceived)):
            match effect:
                case StoreChannel(record) if record.status is ChannelStatus.CLOSING:
                    refusal = await self._store_settlement(record, settling)
                    if refusal:
                        queue[:] = [Send(messages.error(ErrorCode.OTHER, refusal)),
                                    Disconnect(refusal)]
                        continue
                    self.watcher.watch(record)
                case StoreChannel(record) if record.pending and record.pending.complete:
                    await writes.finish()  # the payments before it, stored first
                    refused = await self._store_reanchor(record, self._held.get(id(stream))
                                                         if stream is not None else None)
                    if refused:
                        queue[:] = refused
                        continue
                    self.watcher.watch_reanchor(record)
                case StoreChannel(record):
                    await asyncio.to_thread(self.store.put, record)
                    self.watcher.watch(record)
                case StorePayment():
                    try:
                        await writes.stored(effect, self._held.get(id(stream))
                                            if stream is not None else None)
                    except LeaseLost as exc:  # resumed elsewhere: not stored, not acked
                        log.info("%s", exc)
                        queue[:] = [Send(messages.error(ErrorCode.OTHER, str(exc))),
                                    Disconnect("the channel's lease moved to another connection")]
                    except SettlementDecided as exc:  # not stored, not acked: its settlement
                        stored = await asyncio.to_thread(self.store.get, Role.SERVER,
                                                         effect.record.channel_id)
                        queue[:] = self._settled_or_refused(machine, stored, str(exc))
                case Broadcast():
                    refusal = await self._broadcast(effect)
                    if refusal:
                        queue[:] = [Send(messages.error(ErrorCode.BAD_TRANSACTION, refusal)),
                                    Disconnect(refusal)]
                case PrepareReanchor(_, script):
                    queue[:0] = await self._prepare_reanchor(machine, script)
                case CheckReanchor():
                    queue[:0] = await self._check_reanchor(machine, effect)
                case ReanchorSigned(signed):
                    log.info("re-anchor %s of channel %s stored, broadcast and sent back",
                             signed.pending and signed.pending.txid, signed.channel_id)
                    self.callbacks.event(self.on_event, effect)
                case ReanchorEnded(txid, reason):
                    log.info("re-anchor of channel %s ended: %s", txid, reason)
                case CheckContract(tx):
                    queue[:0] = machine.contract_checked(*await self._check_contract(tx))
                case LoadChannel(txid):
                    loaded = await asyncio.to_thread(self.store.get, Role.SERVER, txid)
                    queue[:0] = machine.channel_loaded(loaded, await self._locked_offset(loaded))
                case ClaimChannel(txid):
                    bind_channel(txid)  # and, from now on, its channel
                    answer = (await self._take_lease(machine, stream, txid, queue)
                              if stream is not None else None)
                    if answer is not None:
                        queue[:] = answer
                        continue
                    previous = self._owners.get(txid)
                    if stream is not None:
                        self._owners[txid] = stream
                    if previous is not None and previous is not stream:
                        log.info("channel %s moved to a new connection", txid)
                        await previous.close()
                case PrepareSettlement(txid):
                    bind_channel(txid)
                    queue[:0] = await self._prepare_settlement(machine, stream, txid, settling)
                case FundSettlement(draft, weight, fee_rate):
                    queue[:0] = await self._fund_settlement(machine, draft, weight, fee_rate)
                case PaymentReceived():
                    info = await self._notify_payment(effect)
                    queue[:0] = machine.payment_answered(effect, info or b"")
                case ChannelOpened() | ChannelClosed() | PeerError():
                    if isinstance(effect, ChannelOpened):
                        self.watcher.schedule_deadline(effect.record)
                        log.info("%s %s channel %s (%d sat)", effect.record.peer or "a client",
                                 "resumed" if effect.resumed else "opened",
                                 effect.record.contract_txid, effect.record.value)
                    self.callbacks.event(self.on_event, effect)
                case Disconnect(reason):
                    log.info("closing connection: %s", reason)
                    if stream is not None:
                        await stream.close()
                    return False
        return True

    async def _check_contract(self, tx: Transaction) -> tuple[str | None, bool]:
        """Would the node take this contract? (refusal or None, whether to retry later)

        At most `limits.max_contract_checks` checks run at once, whoever offered them: a
        contract waits for a free slot up to half the handshake timeout (leaving the check
        itself time before the client gives up), then is refused as retryable."""
        bind_channel(tx.txid_hex)  # the connection's channel, before it is claimed
        busy = await self._check_slot("contract", tx)
        if busy:
            return busy, True
        try:
            await self.broadcaster.check_acceptable(tx)
            return None, False
        except TransactionRejected as exc:
            log.info("refused contract %s: %s", tx.txid_hex, exc.reason)
            return str(exc), False
        except NodeError as exc:
            log.warning("cannot check contract %s, the node is unavailable: %s",
                        tx.txid_hex, exc)
            unreachable = isinstance(exc, NodeUnreachable)
            return ("its node does not answer" if unreachable else "its node failed"), True
        finally:
            self.contract_checks.release()

    async def _check_slot(self, what: str, tx: Transaction) -> str:
        """Take one of the `limits.max_contract_checks` slots for asking the node about `tx`
        (a contract, a re-anchor); the caller releases it. Waits up to half the handshake
        timeout (leaving the check itself time before the client gives up), else returns why
        it is refused (retryable), taking no slot."""
        wait = self.handshake_timeout / 2
        try:
            async with asyncio.timeout(wait):
                await self.contract_checks.acquire()
            return ""
        except TimeoutError:
            busy = self.gate.limits.max_contract_checks
            log.warning("refused %s %s unchecked: %d other transactions were being checked "
                        "for %.1f s (server.max_contract_checks)", what, tx.txid_hex, busy, wait)
            return (f"it is busy checking other {what}s (at most {busy} at once) and none "
                    f"finished within {wait:g} s")

    async def _broadcast(self, effect: Broadcast) -> str:
        """Broadcast; on refusal return what to tell the client.

        A contract reaches this only after the node said it would take it, and its record is
        stored. If the broadcast then fails, the record stays OPEN and nothing is marked: the
        contract may have reached the node (a timeout) and the watcher broadcasts it again at
        each review, or finds it double-spent (then FAILED, and pruned once buried). A node
        that does not answer is no reason to refuse the client: the channel opens. A refused
        settlement stays stored (CLOSING, the channel's one settlement): the autopilot
        broadcasts it again (its contract first), replaces it with a higher fee (same payout),
        or finds what spent the contract; the channel never goes back to OPEN.
        """
        if effect.purpose is Purpose.CONTRACT:
            bind_channel(effect.tx.txid_hex)  # the connection's channel, before it is claimed
        try:
            await self.broadcaster.broadcast(effect.tx)
            log.info("broadcast %s %s", effect.purpose, effect.tx.txid_hex)
            return ""
        except NodeError as exc:  # TransactionRejected included
            if effect.purpose is Purpose.CONTRACT and not isinstance(exc, TransactionRejected):
                log.warning("contract %s checked but not broadcast yet (%s); the autopilot "
                            "will broadcast it again", effect.tx.txid_hex, exc)
                return ""
            if effect.purpose is Purpose.REANCHOR:  # checked and stored: the client gets it
                log.warning("re-anchor %s stored but not broadcast (%s); the client may "
                            "broadcast it", effect.tx.txid_hex, exc)
                return ""
            log.error("broadcast of %s %s failed: %s", effect.purpose, effect.tx.txid_hex, exc)
            return f"the server's node refused the {effect.purpose}: {exc}"

    async def _notify_payment(self, event: PaymentReceived) -> bytes | None:
        self.callbacks.event(self.on_event, event)
        return await self.callbacks.answer(self.on_payment, event)

"""The modelled world: a client process, a server process, their stores, connections between
them and the chain. Each process carries out its machines' effects as the service adapters
do (store, broadcast, send, in order) and can crash before any one of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from bitcoind_paychan.bitcoin import musig2
from bitcoind_paychan.bitcoin.hashes import sha256
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel import messages, reanchor
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy
from bitcoind_paychan.channel.contract import Branch
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelOpened,
    CheckContract,
    CheckReanchor,
    ClaimChannel,
    DiscardChannel,
    Disconnect,
    Effect,
    ForgetChannel,
    FundContract,
    FundReanchor,
    FundSettlement,
    LoadChannel,
    MarkChannel,
    PaymentAcknowledged,
    PaymentReceived,
    PrepareReanchor,
    PrepareSettlement,
    PromoteChannel,
    Purpose,
    ReanchorLocked,
    ReanchorOffered,
    ResumeRefused,
    Send,
    SettleChannel,
    StoreChainState,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.kinds.v4_taproot import TaprootChannel
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy
from bitcoind_paychan.channel.watch import (
    Tip,
    apply_block,
    observe_mempool,
    observe_missing_inputs,
    reanchored,
    replacing_rate,
    revert_block,
    review,
)
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, MusigError, StoreError
from bitcoind_paychan.service.watcher.review import DEAD
from bitcoind_paychan.store import MemoryStore
from bitcoind_paychan.store.leases import promoting
from bitcoind_paychan.wire import decode_message, encode_message, pb
from tests.channel.model import glue
from tests.channel.model.chain import Chain
from tests.channel.model.checks import PAYOUT, WATCH_POLICY, Checks

T = pb.TwoWayChannelMessage
# What the watcher folds each block into (a client's given-up channel may still confirm).
LIVE = {Role.SERVER: (ChannelStatus.OPEN, ChannelStatus.CLOSING),
        Role.CLIENT: (ChannelStatus.OPEN, ChannelStatus.CLOSING, ChannelStatus.FAILED)}
PEER = "server:1"
SYNCED = "model:synced"
SERVER_POLICY = ServerPolicy(min_channel_size=100_000, min_payment=1_000,
                             settle_margin=WATCH_POLICY.settle_margin,  # as PaymentServer
                             reanchoring=True)
# Re-anchoring (docs/design/reanchoring.md): the server stores R, then broadcasts it (and its
# watcher again, after a crash or an eviction); R confirms, is double-spent (a top-up coin),
# replaced by the settlement of its contract at the deadline, or reorged out. Its watcher
# promotes the channel once R is PROMOTE_DEPTH deep (the client's: forget_depth, and only with
# no connection; a top-up R's: forget_depth on both sides, `reanchor.promotion_depth`), as the
# services do.
PROMOTE_DEPTH = {Role.SERVER: 1, Role.CLIENT: WATCH_POLICY.forget_depth}


class Crash(Exception):
    """The process died before carrying out its next effect."""


@dataclass
class Connection:
    """One TCP connection: frames in flight each way, and which ends have hung up."""

    client: ClientChannel
    server: ServerChannel
    stranger: bool = False
    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    client_done: bool = False
    server_done: bool = False
    tampered: bool = False  # a frame was dropped or duplicated

    @property
    def over(self) -> bool:
        return self.client_done and self.server_done


class Process:
    """What both sides' processes share: a store that survives crashes, a node that may be
    unreachable, and a countdown to a crash."""

    role: Role

    def __init__(self, world: World) -> None:
        self.world = world
        self.store = MemoryStore()
        self.up = True
        self.node_up = True
        self.crash_in: int | None = None
        self.reviewed: list[int] = []  # the chain (block ids) the last whole review saw

    def synced(self) -> bool:
        """Whether the stored statuses reflect the chain as it is now."""
        return self.up and self.reviewed == [b.id for b in self.chain.blocks]

    def tick(self) -> None:
        """Called before each effect (and each store write of the watcher)."""
        if self.crash_in is not None:
            if self.crash_in == 0:
                self.crash_in = None
                raise Crash(self.role)
            self.crash_in -= 1

    @property
    def chain(self) -> Chain:
        return self.world.chain

    def now(self) -> int:
        return self.chain.tip.time

    def broadcast(self, tx: Transaction) -> str | None:
        """The node's answer: None if taken, else why not."""
        if not self.node_up:
            return "the node does not answer"
        return self.chain.accept(tx)

    # -- the chain watcher -------------------------------------------------------------

    def watch(self, everything: bool = False) -> None:
        """Catch up with the chain (reverting what a reorg took away), then review: as the
        service's watcher, the live channels after new blocks, all of them after a reorg or
        when `everything` (the periodic review, a start)."""
        if not (self.up and self.node_up):
            return
        synced: list[int] = json.loads(self.store.get_meta(SYNCED) or "[]")
        ids = [b.id for b in self.chain.blocks]
        common = 0
        while common < min(len(synced), len(ids)) and synced[common] == ids[common]:
            common += 1
        reorg = common < len(synced)
        for record in self.store.channels(self.role, None if reorg else LIVE[self.role]):
            txid = record.channel_id
            before = state = self.store.chain_state(self.role, txid)
            for height in range(len(synced) - 1, common - 1, -1):
                state = revert_block(state, height)
            for block in self.chain.blocks[common:]:
                state = apply_block(record, state, block.txs, block.height)
            if state != before:
                self.tick()
                self.store.put_chain_state(self.role, txid, state)
        self.tick()
        self.store.set_meta(SYNCED, json.dumps(ids))
        self.review_all(everything or reorg)

    def review_all(self, everything: bool) -> None:
        tip = Tip(self.chain.tip.height, self.chain.median_time, self.chain.tip.time)
        self.reviewed = []
        for record in self.store.channels(self.role, None if everything else LIVE[self.role]):
            txid = record.channel_id
            state = self.store.chain_state(self.role, txid)
            dead = False
            if not state.spender_height and not record.status.final:
                spender = self.chain.mempool_spender(record.contract.outpoint)
                seen = observe_mempool(state, spender)
                if reanchored(record, state) and spender is None:  # R left the mempool
                    seen = replace(state, spender=b"")
                if seen != state:
                    self.tick()
                    self.store.put_chain_state(self.role, txid, seen)
                    state = seen
                dead = self.reanchor_dead(record, state)
            for effect in review(record, state, tip, self.chain.fee_rate, WATCH_POLICY,
                                 PROMOTE_DEPTH[self.role], dead):
                self.tick()
                if not self.carry_out_review(record, effect, tip):
                    break
        if everything:
            self.reviewed = [b.id for b in self.chain.blocks]

    def carry_out_review(self, record: ChannelRecord, effect: Effect, tip: Tip) -> bool:
        """As the service's ChainWatcher does; False stops this channel's review."""
        txid = record.channel_id
        match effect:
            case Broadcast(tx, purpose):
                self.world.checks.broadcast(self.role, record, tx, purpose, self.store)
                refused = self.broadcast(tx)
                if refused and purpose is not Purpose.CONTRACT:
                    return False
                if refused:
                    state = self.store.chain_state(self.role, txid)
                    seen = observe_missing_inputs(state, refused, tip.height)
                    if seen != state:
                        self.store.put_chain_state(self.role, txid, seen)
            case MarkChannel(_, status, closing_tx):
                self.store.modify(self.role, txid, lambda current: replace(
                    current, status=status, settlement_tx=closing_tx or current.settlement_tx))
            case StoreChainState(_, state):
                self.store.put_chain_state(self.role, txid, state)
            case SettleChannel():
                self.settle_stored(txid)
            case PromoteChannel():
                self.promote(record)
                return False  # the next review sees the next contract
            case ForgetChannel():
                self.world.checks.forgetting(self.role, record)
                self.store.forget(self.role, txid)
            case DiscardChannel():
                self.world.checks.forgetting(self.role, record)
                self.store.discard(self.role, txid)
        return True

    def reanchor_dead(self, record: ChannelRecord, state: ChainState) -> bool:
        """As the service's watcher: an open channel's R, in neither the mempool nor a block,
        that the node refuses for an input spent elsewhere (or a conflict)."""
        if record.pending is None or record.status is not ChannelStatus.OPEN or state.spender:
            return False
        refused = self.chain.test_accept(Transaction.parse(record.pending.tx))
        return refused is not None and any(m in refused for m in DEAD)

    def promote(self, record: ChannelRecord) -> None:
        """R is deep enough: the stored channel moves to its next contract (as the services'
        `_promote`), and its chain state describes that contract (R's block is its block)."""
        raise NotImplementedError

    def promote_stored(self, channel_id: str, fee_rate: int) -> ChannelRecord | None:
        """The store's promotion (`promoting`: an open channel; a closing one keeps closing,
        its settlement moved to the next contract at `fee_rate`); None if refused."""
        self.tick()
        try:
            promoted = self.store.modify(self.role, channel_id, promoting(fee_rate))
        except StoreError:
            return None  # tried again at the next review
        self.moved(promoted)
        return promoted

    def moved(self, record: ChannelRecord) -> None:
        """As the watcher's `moved`: the chain state that saw R spend the old contract now
        describes the next one."""
        state = self.store.chain_state(self.role, record.channel_id)
        if state.spender and Transaction.parse(state.spender).txid_hex == record.contract_txid:
            self.tick()
            self.store.put_chain_state(self.role, record.channel_id,
                                       ChainState(contract_height=state.spender_height))

    def settle_stored(self, txid: str) -> None:
        raise NotImplementedError

    def fence_settlement(self, record: ChannelRecord) -> None:
        """The service's fenced settlement write (executor: Leases.store_settlement): a
        server's CLOSING is stored only on a channel the store still holds open."""
        if record.role is not Role.SERVER or record.status is not ChannelStatus.CLOSING:
            return
        stored = self.store.get(Role.SERVER, record.channel_id)
        if stored is None or stored.status is not ChannelStatus.OPEN:
            raise StoreError(f"settlement refused: channel {record.channel_id} is not open")

    def in_order(self, queue: list[Effect], conn: Connection | None) -> Iterator[Effect]:
        """Take effects off `queue` (which the caller may extend) one by one, crashing
        before any of them if so armed; carries out the stores itself. A store that refuses
        ends the connection, as an exception in the service's adapters does."""
        while queue:
            effect = queue.pop(0)
            self.tick()
            try:
                if isinstance(effect, StoreChannel):
                    self.world.register(effect.record)
                    self.fence_settlement(effect.record)
                    self.world.checks.storing(self.store, effect.record)
                    self.store.put(effect.record)
                    if effect.record.generation and effect.record.pending is None:
                        self.moved(effect.record)  # promoted (REANCHOR_LOCKED): as the service
                    self.stored(effect.record)
                elif isinstance(effect, StorePayment):
                    self.store.record_payment(effect.record, effect.amount, effect.info)
                    self.stored(effect.record)
                else:
                    yield effect
            except StoreError as exc:
                self.world.checks.store_refusals.append(str(exc))
                if conn is not None:
                    self.world.close_end(conn, self.role)
                return

    def stored(self, record: ChannelRecord) -> None:
        """The store committed `record` (a channel or a payment)."""

    def crashed(self) -> None:
        self.up = False
        self.crash_in = None
        self.reviewed = []


class ServerProcess(Process):
    role = Role.SERVER

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.owners: dict[str, Connection] = {}

    def receive(self, conn: Connection, frame: bytes) -> None:
        message = decode_message(frame)
        effects = conn.server.receive(message)
        if conn.stranger and message.type == T.CLOSE and any(
                isinstance(e, PrepareSettlement) for e in effects):
            self.world.checks.stranger_close_honoured = True
        self.run(conn, conn.server, effects)

    def hang_up(self, conn: Connection) -> None:
        conn.server_done = True
        for txid, owner in list(self.owners.items()):
            if owner is conn:
                del self.owners[txid]

    def settle_stored(self, txid: str) -> None:
        """The operator's (or the autopilot's) close: as PaymentServer.settle."""
        record = self.store.get(Role.SERVER, txid)
        if record is None or record.status is not ChannelStatus.OPEN:
            return
        owner = self.owners.pop(txid, None)
        if owner is not None:
            self.world.close_end(owner, Role.SERVER)
        machine = glue.server_for_settlement(SERVER_POLICY, record, self.now())
        self.run(None, machine, self.settlement(machine))

    def still_open(self, machine: ServerChannel, txid: str) -> bool:
        """As the service's re-read after taking the lease (a claim, a settlement): the
        stored channel is still open (no settlement was decided since `machine` loaded it)."""
        stored = self.store.get(Role.SERVER, txid)
        return stored is not None and stored.status is ChannelStatus.OPEN

    def settled_or_refused(self, machine: ServerChannel, txid: str) -> list[Effect]:
        """As ServerManager._settled_or_refused: its settlement if it is settling."""
        stored = self.store.get(Role.SERVER, txid)
        if stored is not None and stored.status is ChannelStatus.CLOSING:
            return machine.settlement_decided(stored)
        return [Send(messages.error(ErrorCode.OTHER, "resume again")), Disconnect("moved")]

    def settlement(self, machine: ServerChannel) -> list[Effect]:
        if not self.node_up:
            return [Send(messages.error(ErrorCode.OTHER, "cannot settle now: no node")),
                    Disconnect("settlement failed")]
        try:  # a re-anchor R in flight: the settlement replaces it (as the service's)
            rate = self.chain.fee_rate
            if machine.record is not None:
                rate = max(rate, replacing_rate(machine.record, PAYOUT))
            return machine.settle(rate, PAYOUT)
        except LocalProtocolError as exc:
            return [Send(messages.error(ErrorCode.OTHER, f"cannot settle now: {exc}")),
                    Disconnect("settlement failed")]

    def fund_settlement(self, machine: ServerChannel, effect: FundSettlement) -> list[Effect]:
        """The wallet adds a coin and change to the draft (as fund_external does)."""
        if not self.node_up:
            return [Send(messages.error(ErrorCode.OTHER, "cannot settle now: no node")),
                    Disconnect("settlement failed")]
        coin = TxIn(self.world.fresh_outpoint(), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
        draft = effect.draft
        fee = -(-effect.fee_rate * (draft.vsize + 250) // 1000)  # the wallet pays it all
        contract = self.chain.contracts[draft.inputs[0].prevout.txid]
        spent = sum(o.value for o in draft.outputs) + 10_000 + fee - contract.value
        self.chain.coins[coin.prevout] = TxOut(max(spent, 10_000), PAYOUT)
        funded = Transaction(draft.version, (*draft.inputs, coin),
                             (*draft.outputs, TxOut(10_000, PAYOUT)), draft.locktime)
        return machine.settle_funded(funded)

    def run(self, conn: Connection | None, machine: ServerChannel,
            effects: list[Effect]) -> None:
        """Carry out effects in order, as PaymentServer._carry_out does."""
        queue = list(effects)
        for effect in self.in_order(queue, conn):
            match effect:
                case CheckContract(tx):
                    if self.node_up:
                        queue[:0] = machine.contract_checked(self.chain.test_accept(tx))
                    else:
                        queue[:0] = machine.contract_checked("its node does not answer", True)
                case Broadcast(tx, Purpose.REANCHOR):  # stored: the watcher retries if refused
                    assert machine.record is not None
                    self.world.checks.reanchor_released(self.store, machine.record, tx)
                    self.broadcast(tx)
                case PrepareReanchor():
                    if self.node_up:
                        queue[:0] = machine.quote_reanchor(self.chain.fee_rate, PAYOUT,
                                                           self.now())
                case CheckReanchor(tx, script):
                    refused = (self.chain.test_accept(tx) if self.node_up
                               else "its node does not answer")
                    if script not in (b"", PAYOUT):
                        refused = "the payout script is not our wallet's"
                    queue[:0] = machine.reanchor_checked(refused, self.chain.fee(tx),
                                                         self.chain.fee_rate)
                case Broadcast(tx, purpose):
                    self.world.checks.broadcast(Role.SERVER, machine.record, tx, purpose)
                    refused = self.broadcast(tx)
                    if refused and purpose is Purpose.CONTRACT and not self.node_up:
                        continue  # checked but not sent: the watcher broadcasts it again
                    if refused:  # a settlement stays stored, CLOSING: the watcher retries
                        queue[:] = [Send(messages.error(ErrorCode.BAD_TRANSACTION, refused)),
                                    Disconnect(refused)]
                case LoadChannel(txid):
                    loaded = self.store.get(Role.SERVER, txid)
                    queue[:0] = machine.channel_loaded(loaded, self.locked_offset(loaded))
                case ClaimChannel(txid) if not self.still_open(machine, txid):
                    queue[:] = self.settled_or_refused(machine, txid)
                case ClaimChannel(txid):
                    previous = self.owners.get(txid)
                    if conn is not None:
                        self.owners[txid] = conn
                    if previous is not None and previous is not conn:
                        if conn is not None and conn.stranger and not glue.server_settling(
                                machine):  # near its expiry any resume settles the channel
                            self.world.checks.stranger_displaced_owner = True
                        self.world.close_end(previous, Role.SERVER)
                case PrepareSettlement(txid) if not self.still_open(machine, txid):
                    queue[:] = self.settled_or_refused(machine, txid)
                case PrepareSettlement(txid):
                    owner = self.owners.pop(txid, None)
                    if owner is not None and owner is not conn:
                        self.world.close_end(owner, Role.SERVER)
                    queue[:0] = self.settlement(machine)
                case FundSettlement():
                    queue[:0] = self.fund_settlement(machine, effect)
                case PaymentReceived():  # the application answers: its ack goes out
                    queue[:0] = machine.payment_answered(effect)
                case Send(message):
                    self.world.checks.server_sends(self.store, machine, message)
                    if conn is not None and not conn.server_done:
                        conn.to_client.append(encode_message(message))
                case Disconnect():
                    if conn is not None:
                        self.hang_up(conn)
                    return

    def locked_offset(self, record: ChannelRecord | None) -> int | None:
        """As the service's: a re-anchored channel's last offset, from its generations."""
        if record is None or not record.generation:
            return None
        last = self.store.generations(Role.SERVER, record.channel_id)[-1]
        return record.contract.value + last.payout - last.value

    def promote(self, record: ChannelRecord) -> None:
        """Through the live connection holding the channel (its machine moves with the store
        and tells the client, REANCHOR_LOCKED), else in the store alone."""
        promoted = self.promote_stored(record.channel_id,
                                       WATCH_POLICY.fees.rate(self.chain.fee_rate))
        owner = self.owners.get(record.channel_id)
        live = owner.server.record if owner is not None else None
        if promoted is not None and owner is not None and live is not None and (
                live.pending is not None and live.pending.complete):
            self.run(owner, owner.server, owner.server.reanchor_confirmed(promoted))

    def quote(self, conn: Connection, renew: bool) -> None:
        """The server's own wish on a live connection: a payout, and a renewal if `renew`."""
        if not (self.up and self.node_up) or conn.server_done:
            return
        try:
            effects = conn.server.quote_reanchor(self.chain.fee_rate, PAYOUT, self.now(),
                                                 time_window=24 * 3600 if renew else 0)
        except LocalProtocolError:
            return  # not open: nothing to quote
        self.run(conn, conn.server, effects)

    def crashed(self) -> None:
        super().crashed()
        for conn in list(self.world.connections):
            self.world.close_end(conn, Role.SERVER, crashed=True)
        self.owners.clear()


class ClientProcess(Process):
    role = Role.CLIENT

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.conn: Connection | None = None
        self.unresumable: set[str] = set()
        self.acked: dict[str, int] = {}  # contract txid → lowest change the server acked
        self.offered: Connection | None = None  # an unasked payout awaits our autopilot
        self.defer_funding = False  # the wallet answers FundReanchor later (as the service,
        self.funding: tuple[Connection, FundReanchor] | None = None  # beside the reader)
        self.lagging: ReanchorLocked | None = None  # the server's lock our node lagged

    def resumable(self) -> ChannelRecord | None:
        for record in self.store.channels(Role.CLIENT, (ChannelStatus.OPEN,)):
            if record.change > 0 and record.channel_id not in self.unresumable:
                return record
        return None

    def open(self, version: int, time_window: int, value: int, autopilot: bool = False
             ) -> Connection | None:
        """As PaymentClient.open: resume a stored open channel, else open a new one. With
        `autopilot` (a `renew_before`), the server's unasked payouts are offered to it."""
        if not self.up or (self.conn is not None and not self.conn.client_done):
            return None
        policy = ClientPolicy(value, time_window, reanchoring=True,
                              renew_before=3600 if autopilot else 0)
        self.offered = self.lagging = None
        stored = self.resumable()
        if stored is not None:
            machine = glue.resumed_client(policy, stored, self.now())
        else:
            machine = glue.new_client(policy, self.world.fresh_key(), self.now(), version, PEER)
        conn = self.world.connect(machine)
        self.conn = conn
        self.run(conn, machine.start())
        return conn

    def receive(self, conn: Connection, frame: bytes) -> None:
        self.run(conn, conn.client.receive(decode_message(frame)))

    def pay(self, amount: int) -> None:
        conn = self.conn
        if conn is None or conn.client_done or not glue.client_can_pay(conn.client):
            return
        try:
            effects = conn.client.pay(amount)
        except LocalProtocolError:
            return  # the application is told no; nothing changed
        self.run(conn, effects)

    def reanchor(self, top_up: int, time_window: int) -> None:
        """The application asks for a top-up and/or a renewal."""
        conn = self.conn
        if conn is None or conn.client_done:
            return
        try:
            effects = conn.client.reanchor(top_up, time_window, self.now())
        except LocalProtocolError:
            return  # not negotiated, not open, or one in flight: the application is told no
        self.run(conn, effects)

    def close(self) -> None:
        conn = self.conn
        if conn is None or conn.client_done:
            return
        try:
            effects = conn.client.close()
        except LocalProtocolError:
            return  # not open yet: the application is told no
        self.run(conn, effects)

    def handshake_failed(self, conn: Connection) -> None:
        """As the service's client: a new channel whose CHANNEL_OPEN never came, with its
        contract nowhere on the network, is kept as FAILED and its coins released."""
        record = conn.client.record
        if (conn.client.resumed or record is None or glue.client_opened(conn.client)
                or not (self.up and self.node_up)):
            return
        funding = Transaction.parse(record.contract_tx).inputs[0].prevout
        chain = self.chain
        if chain.spender(funding) or chain.mempool_spender(funding):
            return
        stored = self.store.get(Role.CLIENT, record.channel_id)
        if stored is not None and stored.status is ChannelStatus.OPEN:
            self.tick()
            for effect in conn.client.abandon():
                assert isinstance(effect, StoreChannel)
                self.store.put(effect.record)

    def settle_stored(self, txid: str) -> None:
        raise AssertionError("the client's watcher never asks to settle")

    def promote(self, record: ChannelRecord) -> None:
        """Only with no live connection (which promotes on REANCHOR_LOCKED), as the service's
        client manager: the stored channel, if it holds a complete re-anchor and is open."""
        conn = self.conn
        live = conn.client.record if conn is not None and not conn.client_done else None
        if conn is not None and live is not None and live.channel_id == record.channel_id:
            lock, self.lagging = self.lagging, None  # as Channel.promote_lagging
            if lock is not None and self.sees_confirmed(lock.record):
                self.run(conn, [lock])
            else:
                self.lagging = lock
            return
        self.promote_stored(record.channel_id, 0)

    def answer_offer(self, propose: bool, top_up: int, time_window: int) -> None:
        """Our autopilot answers the server's unasked payout: its own proposal, or the
        payout signed alone."""
        conn, self.offered = self.offered, None
        if conn is None or conn is not self.conn or conn.client_done:
            return
        try:
            effects = (conn.client.reanchor(top_up, time_window, self.now()) if propose
                       else conn.client.accept_offer())
        except LocalProtocolError:
            return  # one in flight meanwhile: the application is told no
        self.run(conn, effects)

    def run(self, conn: Connection, effects: list[Effect]) -> None:
        """Carry out effects in order, as the service's Channel._run does."""
        queue = list(effects)
        machine = conn.client
        for effect in self.in_order(queue, conn):
            match effect:
                case FundContract(script, value):
                    if not self.node_up:  # the wallet cannot fund: give up, nothing stored
                        self.world.close_end(conn, Role.CLIENT)
                        return
                    queue[:0] = machine.contract_funded(self.world.funding_tx(script, value))
                case FundReanchor() if self.defer_funding:
                    self.funding = (conn, effect)
                case FundReanchor():
                    queue[:0] = self.funded(machine, effect)
                case Send(message):
                    self.world.checks.client_sends(self.store, machine.record, message)
                    if not conn.client_done:
                        conn.to_server.append(encode_message(message))
                case ReanchorLocked(record) if self.sees_confirmed(record):
                    effects = machine.reanchor_confirmed(reanchor.promoted(record))
                    assert machine.record is not None  # stored, then the machine's effects
                    queue[:0] = [StoreChannel(machine.record), *effects]
                case ReanchorLocked():  # our node lags: the watcher moves it (promote)
                    self.lagging = effect
                case ReanchorOffered():
                    self.offered = conn
                case ResumeRefused(txid):
                    self.unresumable.add(txid)
                case ChannelOpened(record, resumed) if not resumed and self.node_up:
                    self.broadcast(Transaction.parse(record.contract_tx))  # best effort
                case PaymentAcknowledged(record) if not conn.tampered and not conn.stranger:
                    self.world.checks.acknowledged(record)
                case Disconnect():
                    self.world.close_end(conn, Role.CLIENT)
                    return

    def funded(self, machine: ClientChannel, effect: FundReanchor) -> list[Effect]:
        """The wallet's answer: a coin of 300,000 sat and change."""
        draft, rate = effect.draft, effect.fee_rate
        coin = TxIn(self.world.fresh_outpoint(), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
        self.chain.coins[coin.prevout] = TxOut(300_000, PAYOUT)
        assert machine.record is not None
        change = (machine.record.value + 300_000 - sum(o.value for o in draft.outputs)
                  - -(-rate * (draft.vsize + 250) // 1000))
        return machine.reanchor_funded(Transaction(
            draft.version, (*draft.inputs, coin), (*draft.outputs, TxOut(change, PAYOUT)), 0),
            (self.chain.coins[coin.prevout],))  # v4 signs over what it spends

    def answer_funding(self, fail: bool) -> None:
        """The wallet answers a FundReanchor it was handed earlier (meanwhile messages went
        on): funded, or failed (no coins)."""
        held, self.funding = self.funding, None
        if held is None or not self.up:
            return
        conn, effect = held
        machine = conn.client
        self.run(conn, machine.reanchor_unfunded("no coins") if fail
                 else self.funded(machine, effect))

    def sees_confirmed(self, record: ChannelRecord) -> bool:
        """As the service's `reanchor_locked`: our own node shows the server's R confirmed,
        a top-up R forget_depth deep (`reanchor.promotion_depth`; else the channel stays on
        its contract, signing on both)."""
        pending = record.pending
        if not self.node_up or pending is None:
            return False
        found = self.chain.confirmed().get(bytes.fromhex(pending.txid)[::-1])
        return found is not None and self.chain.depth(found[1]) >= reanchor.promotion_depth(
            Transaction.parse(pending.tx), 1, WATCH_POLICY.forget_depth)

    def stored(self, record: ChannelRecord) -> None:
        self.world.checks.client_stored(record)

    def crashed(self) -> None:
        super().crashed()
        if self.conn is not None:
            self.world.close_end(self.conn, Role.CLIENT, crashed=True)
        self.conn = None
        self.funding = self.offered = self.lagging = None  # the process's memory is gone


class World:
    """Both processes, their connections and the chain."""

    def __init__(self) -> None:
        self.chain = Chain()
        self._counter = 0
        self.checks = Checks(self)
        self.server = ServerProcess(self)
        self.client = ClientProcess(self)
        self.connections: list[Connection] = []
        self.contract_txs: dict[bytes, Transaction] = {}

    def fresh(self) -> bytes:
        self._counter += 1
        return sha256(b"model" + self._counter.to_bytes(8, "big"))

    def fresh_key(self) -> PrivateKey:
        return PrivateKey(self.fresh())

    def fresh_outpoint(self) -> OutPoint:
        return OutPoint(self.fresh(), 1)

    def funding_tx(self, script: bytes, value: int) -> Transaction:
        """A wallet's contract: one segwit coin in, the channel output 0 and change out."""
        coin = TxIn(self.fresh_outpoint(), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
        return Transaction(2, (coin,), (TxOut(value, script), TxOut(50_000, PAYOUT)), 0)

    def register(self, record: ChannelRecord) -> None:
        """A contract exists now: the chain checks spends of it, the model can double-spend
        its funding coin (a re-anchor's next contract: a top-up coin of R)."""
        contracts = [(record.contract, record.contract_tx)]
        if record.pending is not None:
            contracts.append((record.pending.contract, record.pending.tx))
        for contract, tx in contracts:
            self.chain.contracts.setdefault(contract.outpoint.txid, contract)
            self.contract_txs.setdefault(contract.outpoint.txid, Transaction.parse(tx))

    def connect(self, client: ClientChannel, stranger: bool = False) -> Connection:
        server = glue.new_server(SERVER_POLICY, self.fresh_key(), self.chain.tip.time)
        conn = Connection(client, server, stranger)
        if not self.server.up:
            conn.server_done = True  # connection refused
        self.connections.append(conn)
        return conn

    def close_end(self, conn: Connection, role: Role, crashed: bool = False) -> None:
        """One end hangs up (frames it already sent still arrive, unless it crashed before
        they left); frames towards it are lost."""
        if role is Role.SERVER:
            if not conn.server_done:
                conn.server.connection_lost()
                self.server.hang_up(conn)
            conn.to_server.clear()
            if crashed:
                conn.to_client.clear()
        else:
            if not conn.client_done:
                conn.client.connection_lost()
                conn.client_done = True
                if not (crashed or conn.stranger):
                    self.client.handshake_failed(conn)
            conn.to_client.clear()
            if crashed:
                conn.to_server.clear()
        self.prune()

    def prune(self) -> None:
        self.connections = [c for c in self.connections if not c.over]

    def deliver(self, conn: Connection, to_server: bool, duplicate: bool) -> None:
        """The next frame one way (or, with none left and the sender gone, the EOF)."""
        queue = conn.to_server if to_server else conn.to_client
        sender_done = conn.client_done if to_server else conn.server_done
        if not queue:
            if sender_done:  # the receiver reads EOF and hangs up too
                self.close_end(conn, Role.SERVER if to_server else Role.CLIENT)
            return
        frame = queue.pop(0)
        if duplicate:
            conn.tampered = True
            queue.insert(0, frame)
        if to_server and not conn.server_done:
            self.server.receive(conn, frame)
        elif not to_server and not conn.client_done:
            if conn.stranger:
                self.stranger_receives(conn, frame)
            else:
                self.client.receive(conn, frame)
        self.prune()

    # -- a stranger who knows only a contract txid (public once on chain) ---------------

    # -- a hostile client completing a key-path settlement alone -----------------------

    def client_completes_alone(self, conn: Connection, frame: bytes) -> None:
        """The client takes the server's key-path proposal (`frame`) off the wire, signs it
        with its own nonce, never sends that, aggregates whatever the server's message holds,
        and hangs up; any valid settlement it got is the model's to check against later
        acknowledgements (it resumes and pays on as other rules let it)."""
        proposal, record = decode_message(frame), conn.client.record
        secnonce, nonce = glue.client_close_session(conn.client)
        conn.to_client.remove(frame)
        kind = record.contract.kind if record is not None else None
        if record is not None and secnonce is not None and isinstance(kind, TaprootChannel):
            tx = Transaction.parse(proposal.musig_settlement)
            try:
                session = kind._session(tx, [nonce, proposal.musig_nonce])
                psigs = [musig2.sign(secnonce, record.key.secret, session)]
                if proposal.musig_partial_signature:
                    psigs.append(proposal.musig_partial_signature)
                signature = musig2.partial_sig_agg(psigs, session)
            except MusigError:
                signature = b""
            if signature:
                self.checks.client_holds(record, kind.unlock(tx, [signature], Branch.KEY_PATH))
        self.close_end(conn, Role.CLIENT)

    def stranger_connects(self, victim: ChannelRecord) -> Connection:
        """A resume naming `victim`'s contract, signed (when asked to) with another key."""
        key = self.fresh_key()
        fake = replace(victim, key=key, signature=victim.contract.sign_payment(key, victim.change))
        machine = glue.resumed_client(ClientPolicy(victim.value), fake, self.chain.tip.time)
        conn = self.connect(machine, stranger=True)
        self.stranger_runs(conn, machine.start())
        return conn

    def stranger_receives(self, conn: Connection, frame: bytes) -> None:
        self.stranger_runs(conn, conn.client.receive(decode_message(frame)))

    def stranger_sends_close(self, conn: Connection) -> None:
        if not conn.client_done:
            conn.to_server.append(encode_message(messages.close()))

    def stranger_runs(self, conn: Connection, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send) and not conn.client_done:
                conn.to_server.append(encode_message(effect.message))
            elif isinstance(effect, Disconnect):
                self.close_end(conn, Role.CLIENT)
                return

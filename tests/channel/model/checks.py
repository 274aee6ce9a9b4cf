"""The money invariants the model checks: at the moment something is sent or broadcast, and
after every step."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import reanchor
from bitcoind_paychan.channel.contract import DUST
from bitcoind_paychan.channel.effects import Purpose
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.channel.watch import WatchPolicy, client_share, is_refund
from bitcoind_paychan.errors import ProtocolError
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.wire import pb
from regtest.chainrules import spend_problem
from tests.channel.model import glue

if TYPE_CHECKING:
    from tests.channel.model.chain import Block
    from tests.channel.model.world import World

T = pb.TwoWayChannelMessage
ANY_TIME = 2**32  # a median-time-past after every lock time: checks signatures only
PAYOUT = b"\x00\x14" + bytes(20)
WATCH_POLICY = WatchPolicy()


class Violation(AssertionError):
    """A money invariant does not hold."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise Violation(message)


def payment_verifies(record: ChannelRecord) -> bool:
    try:
        record.contract.check_payment(record.change, record.signature)
    except ProtocolError:
        return False
    return True


def settlement_valid(record: ChannelRecord) -> bool:
    """The server can settle `record` (a settlement its key completes is valid)."""
    contract = record.contract
    draft = contract.settlement_draft(record.change, record.paid, PAYOUT)
    settlement = contract.sign_settlement(draft, record.signature, record.key)
    return spend_problem(contract, settlement, ANY_TIME) is None


def refund_valid(record: ChannelRecord) -> bool:
    """The client can refund `record` once the expiry has passed."""
    refund = record.contract.refund(record.key, 1000, record.refund_tx)
    return (refund.locktime == record.contract.expiry
            and spend_problem(record.contract, refund, record.contract.expiry + 1) is None)


def with_next_contracts(records: dict[str, ChannelRecord]) -> dict[str, ChannelRecord]:
    """`records` by contract txid, plus each pending re-anchor's next contract as the record
    would be once promoted (the server's complete R; the client's, unless refused: the
    server may complete it)."""
    found = dict(records)
    for record in records.values():
        pending = record.pending
        if pending is not None and pending.binding and (
                pending.complete or record.role is Role.CLIENT):
            found.setdefault(pending.txid, reanchor.promoted(
                replace(record, pending=replace(pending, complete=True))))
    return found


class Checks:
    def __init__(self, world: World) -> None:
        self.world = world
        self.server_paid: dict[str, int] = {}  # highest share each server record has shown
        self.client_change: dict[str, int] = {}  # lowest change each client record has shown
        self.stranger_close_honoured = False
        self.stranger_displaced_owner = False
        self.store_refusals: list[str] = []  # writes a store refused (the adapter gave up)
        self.forgotten: set[str] = set()  # channels forgotten once their closing tx was buried
        # transactions a reorg undid from a block forget_depth deep (the depth both sides
        # take as final: a top-up R is promoted there)
        self.undone_final: set[str] = set()
        # every (change, signature) the client's store has held, per channel: a resume may
        # re-send the last one after the watcher discarded or forgot the channel meanwhile
        self.client_committed: dict[str, set[tuple[int, bytes]]] = {}
        self.settlements: dict[str, bytes] = {}  # the one settlement decided per channel
        # the most a settlement the client completed alone pays it, per channel (none ever
        # should: the server's partial signature never leaves it before the settlement is
        # stored, and after that no payment is acknowledged)
        self.client_completed: dict[str, int] = {}

    # -- at the moment of acting -----------------------------------------------------------

    def server_sends(self, store: ChannelStore, machine: ServerChannel, message: T) -> None:
        """Nothing is acknowledged before it is stored; a settlement sent is the stored one."""
        record = machine.record
        if message.type in (T.PAYMENT_ACK, T.CHANNEL_OPEN):
            assert record is not None
            stored = store.get(Role.SERVER, record.channel_id)
            require(stored is not None and (stored.contract_txid != record.contract_txid
                                            or stored.change <= record.change),
                    f"server acknowledges change {record.change} before storing it")
            settled = (stored.settlement_tx if stored is not None and stored.status in (
                ChannelStatus.CLOSING, ChannelStatus.SETTLED) else b"")
            alone = self.client_completed.get(record.contract_txid)
            require(alone is None or alone <= record.change,
                    f"server acknowledges change {record.change} on {record.contract_txid} "
                    f"while the client holds a settlement paying it {alone} it completed alone")
            if settled and not is_refund(Transaction.parse(settled)):
                require(client_share(record.contract, Transaction.parse(settled))
                        <= record.change, f"server acknowledges change {record.change} on "
                        f"{record.contract_txid} after a settlement paying more was decided")
        if message.type == T.CLOSE and message.HasField("settlement"):
            assert record is not None
            stored = store.get(Role.SERVER, record.channel_id)
            require(stored is not None and stored.status is ChannelStatus.CLOSING
                    and stored.settlement_tx == message.settlement.tx,
                    "server sends a settlement it has not stored")
            self.settlement_checked(record, Transaction.parse(message.settlement.tx))

    def reanchor_released(self, store: ChannelStore, record: ChannelRecord,
                          tx: Transaction) -> None:
        """The server lets R out (broadcast, then REANCHOR_ACK; its watcher's broadcast
        again) only once it is stored, valid, and paying it no more than its stored paid
        total (issue 23, rules 1 and 2)."""
        stored = store.get(Role.SERVER, record.channel_id)
        pending = stored.pending if stored is not None else None
        require(pending is not None and pending.complete and pending.tx == tx.serialize(),
                "server releases a re-anchor it has not stored")
        assert stored is not None and pending is not None
        problem = spend_problem(stored.contract, tx, ANY_TIME,
                                spent=self.world.chain.spent_outputs(tx))
        require(problem is None, f"server signs an invalid re-anchor: {problem}")
        require(pending.payout <= stored.paid, f"re-anchor pays out {pending.payout}, more "
                f"than the {stored.paid} sat paid")

    def client_holds(self, record: ChannelRecord, spend: Transaction) -> None:
        """A hostile client completed `spend` of `record`'s contract from what it got, without
        sending its own partial signature: if that is a valid spend, remember what it pays."""
        if spend_problem(record.contract, spend, ANY_TIME) is None:
            txid, share = record.contract_txid, client_share(record.contract, spend)
            self.client_completed[txid] = max(share, self.client_completed.get(txid, 0))

    def client_stored(self, record: ChannelRecord) -> None:
        """The client's store committed `record`'s payment (and its pair on the next
        contract, while a re-anchor is pending)."""
        self.client_committed.setdefault(record.contract_txid, set()).add(
            (record.change, record.signature))
        if record.pending is not None:
            self.client_committed.setdefault(record.pending.txid, set()).add(
                (record.pending.change, record.pending.signature))

    def client_sends(self, store: ChannelStore, record: ChannelRecord | None,
                     message: T) -> None:
        """A payment is sent only once stored, and is one the client's checks allow.

        While the channel is stored, what is sent is the stored payment. A resume re-sends
        the payment its machine loaded; if the watcher discarded or forgot the channel while
        the resume was in flight (its funding double-spent, or its closing tx, forget_depth
        deep), that payment was committed before and spends an output the chain will not
        give back: it must be one the store held."""
        if message.type == T.REANCHOR_SIGNED:
            return self.client_signs_reanchor(store, record, message)
        if message.type == T.UPDATE_PAYMENT:
            change, signature = (message.update_payment.client_change_value,
                                 message.update_payment.signature)
            if message.update_payment.next_signature and record is not None:
                held = store.get(Role.CLIENT, record.channel_id)
                pair = message.update_payment.next_signature
                if held is None and record.pending is not None:
                    # forgotten while a resume was in flight: the pair it re-sends is one
                    # its store committed before (nothing new is signed)
                    require(record.contract_txid in self.forgotten and any(
                        signature == pair for _, signature in
                        self.client_committed.get(record.pending.txid, ())),
                        "client sends a payment on the next contract it has not stored")
                else:
                    require(held is not None and held.pending is not None
                            and held.pending.signature == pair,
                            "client sends a payment on the next contract it has not stored")
        elif message.type == T.PROVIDE_CONTRACT:
            body = message.provide_contract.initial_payment
            change, signature = body.client_change_value, body.signature
        else:
            return
        assert record is not None
        txid = record.contract_txid
        stored = store.get(Role.CLIENT, record.channel_id)
        if stored is not None and stored.contract_txid != txid:
            # promoted (its watcher, REANCHOR_LOCKED) while this payment was signed on C:
            # it was stored as the pair it belongs to before
            require((change, signature) in self.client_committed.get(txid, ()),
                    "client sends a payment it has not stored")
        elif stored is None:
            # discarded or forgotten while a resume was in flight: it re-sends its last
            # payment, one its store committed before (nothing new is signed)
            require(txid in self.forgotten
                    and ((change, signature) in self.client_committed.get(txid, ())
                         or any(e.change_after == change
                                for e in store.payments(Role.CLIENT, txid))),
                    "client sends a payment it has not stored")
        else:
            require(stored.change == change and stored.signature == signature,
                    "client sends a payment it has not stored")
        require(change == 0 or DUST <= change <= record.value,
                f"client signs a payment leaving {change} sat (dust or above the value)")
        require(payment_verifies(record), "client sends a payment that does not verify")

    def client_signs_reanchor(self, store: ChannelStore, record: ChannelRecord | None,
                              message: T) -> None:
        """The client sends R only once it is stored (the server can complete it from then
        on), and never pays out more than the server has stored as paid (rule 2)."""
        assert record is not None
        body = message.reanchor_signed
        held = store.get(Role.CLIENT, record.channel_id)
        require(held is not None and held.pending is not None and held.pending.tx == body.tx,
                "client sends a re-anchor it has not stored")
        server = self.world.server.store.get(Role.SERVER, record.channel_id)
        if server is None or held is None or held.pending is None:
            return
        left = [generation for generation in self.world.server.store.generations(
            Role.SERVER, record.channel_id) if generation.reanchor_txid == held.pending.txid]
        if left:  # a re-send (a resume) of an R the server promoted: its payout as checked
            require(body.payout == left[0].payout, f"client re-sends R with a payout of "
                    f"{body.payout}, not the {left[0].payout} the server promoted")
        else:
            require(body.payout <= server.paid, f"client signs a payout of {body.payout}, "
                    f"more than the {server.paid} sat the server holds")

    def storing(self, store: ChannelStore, record: ChannelRecord) -> None:
        """One settlement per channel: the server decides (stores CLOSING with a settlement)
        only on an open channel, and never a second one for a channel (a retry or a fee bump
        replaces the stored one through the watcher)."""
        if record.role is not Role.SERVER or record.status is not ChannelStatus.CLOSING:
            return
        txid = record.channel_id
        stored = store.get(Role.SERVER, txid)
        require(stored is not None and stored.status is ChannelStatus.OPEN,
                f"server stores a settlement of {txid}, which is not open")
        require(txid not in self.settlements or self.settlements[txid] == record.settlement_tx,
                f"a second settlement decided for {txid}")
        self.settlements[txid] = record.settlement_tx or b""

    def settlement_checked(self, record: ChannelRecord, settlement: Transaction) -> None:
        problem = spend_problem(record.contract, settlement, ANY_TIME)
        require(problem is None, f"server signs an invalid settlement: {problem}")
        require(client_share(record.contract, settlement) == record.change,
                "server's settlement does not pay the client its change")

    def broadcast(self, role: Role, record: ChannelRecord | None, tx: Transaction,
                  purpose: str, store: ChannelStore | None = None) -> None:
        if record is None or purpose is Purpose.CONTRACT or not tx.inputs:
            return
        if purpose is Purpose.REANCHOR:
            require(role is Role.SERVER and store is not None, "R broadcast by the client")
            assert store is not None
            return self.reanchor_released(store, record, tx)
        if tx.inputs[0].prevout != record.contract.outpoint:
            return
        if role is Role.SERVER and not is_refund(tx):
            self.settlement_checked(record, tx)
        if role is Role.CLIENT and is_refund(tx):
            require(tx.locktime == record.contract.expiry and spend_problem(
                record.contract, tx, ANY_TIME) is None, "client broadcasts a bad refund")

    def acknowledged(self, record: ChannelRecord) -> None:
        """The client was told its payment arrived: the server must have stored it."""
        stored = self.world.server.store.get(Role.SERVER, record.channel_id)
        if stored is not None and stored.contract_txid == record.contract_txid:
            require(stored.change <= record.change,
                    f"acknowledged change {record.change} is not in the server's store "
                    f"(it has {stored.change})")

    def forgetting(self, role: Role, record: ChannelRecord) -> None:
        """A channel is forgotten only once its closing tx is forget_depth deep."""
        chain, contract = self.world.chain, record.contract
        spent = chain.spender(contract.outpoint)
        if spent is None:  # never confirmed: a coin funding it went elsewhere
            funding = self.world.contract_txs[contract.outpoint.txid]
            spent = next(filter(None, (chain.spender(i.prevout) for i in funding.inputs)), None)
        depth = chain.depth(spent[1]) if spent else 0
        require(depth >= WATCH_POLICY.forget_depth,
                f"{role} forgets {record.channel_id} while its closing tx is {depth} deep")
        self.forgotten.update({record.channel_id, record.contract_txid})

    # -- after every step ------------------------------------------------------------------

    def after_step(self) -> None:
        world = self.world
        servers = {r.contract_txid: r for r in world.server.store.channels(Role.SERVER)}
        clients = {r.contract_txid: r for r in world.client.store.channels(Role.CLIENT)}
        live = [c.server.record for c in world.connections if c.server.record is not None]
        for record in [*servers.values(), *live]:
            require(payment_verifies(record),
                    f"server holds an unverified payment on {record.contract_txid}")
        for record in [*servers.values(), *clients.values()]:
            self.pending_covered(record)
        for txid, record in servers.items():
            if record.status is ChannelStatus.FAILED:  # its settlement cannot confirm: a reorg
                self.settlements.pop(txid, None)  # that confirms the contract reopens it
            require(record.paid >= self.server_paid.get(txid, 0),
                    f"server's share of {txid} fell from {self.server_paid.get(txid)} to "
                    f"{record.paid}")
            self.server_paid[txid] = record.paid
        for txid, record in clients.items():
            require(record.change <= self.client_change.get(txid, record.value),
                    f"client's stored change of {txid} rose to {record.change}")
            self.client_change[txid] = record.change
        self.funded_contracts_recoverable(servers, clients)
        self.outcomes_match_chain(servers, clients)
        if glue.RESUME_PROOF:
            require(not self.stranger_displaced_owner,
                    "a stranger's resume displaced the channel's owner")
            require(not self.stranger_close_honoured, "a stranger's CLOSE was honoured")

    def pending_covered(self, record: ChannelRecord) -> None:
        """Rule 1 of issue 23: while a re-anchor binds payments, the latest stored payment is
        valid on both contracts (whichever ends up on chain, it is covered), carried by the
        re-anchor's offset, and R pays out no more than was paid."""
        pending = record.pending
        if pending is None or not pending.binding or (
                record.role is Role.SERVER and not pending.complete):
            return
        txid = record.contract_txid
        require(pending.change == record.change + pending.offset(record.contract),
                f"{record.role}'s payment on {txid}'s next contract is not its latest")
        try:
            pending.contract.check_payment(pending.change, pending.signature)
        except ProtocolError:
            raise Violation(f"{record.role}'s payment on {txid}'s next contract does not "
                            "verify") from None
        require(pending.payout <= record.paid, f"{txid}'s re-anchor pays out more than paid")

    def reorged(self, gone: list[Block]) -> None:
        """A reorg took the blocks `gone` (oldest first) off the chain."""
        for i, block in enumerate(gone):
            if len(gone) - i >= WATCH_POLICY.forget_depth:
                self.undone_final.update(tx.txid_hex for tx in block.txs)

    def funded_contracts_recoverable(self, servers: dict[str, ChannelRecord],
                                     clients: dict[str, ChannelRecord]) -> None:
        """Rule 1 of issue 23 on chain: whichever of C and C' the chain holds, the server can
        settle it with the latest payment it holds on it (its C' payment: the carried one
        while R is not promoted), or the client can refund it."""
        # R of a channel promoted on either side, published: its money is on the next
        # contract (checked in turn); only a reorg deeper than the promotion can undo it,
        # the risk payments on a contract at min_confirmations take (design, 5)
        world = self.world
        left = [generation for process in (world.server, world.client)
                for r in process.store.channels(process.role) if r.generation
                for generation in process.store.generations(process.role, r.channel_id)]
        moved_on = {generation.reanchor_txid for generation in left}
        # a reorg as deep as forget_depth undid the R both promoted at that depth (a top-up
        # R, whose coin may then be spent elsewhere): what forgetting at that depth presumes
        beyond_final = {generation.contract_txid for generation in left
                        if generation.reanchor_txid in self.undone_final}
        servers, clients = with_next_contracts(servers), with_next_contracts(clients)
        chain = self.world.chain
        published = {tx.txid for tx in chain.chain_txs() + chain.mempool}
        for raw_txid, contract in chain.contracts.items():
            if raw_txid not in published or chain.spender(contract.outpoint):
                continue
            spender = chain.mempool_spender(contract.outpoint)
            if spender is not None and spender.txid_hex in moved_on:
                continue
            txid = contract.txid
            server, client = servers.get(txid), clients.get(txid)
            if server is None and client is None and txid in self.forgotten:
                continue  # a reorg as deep as forget_depth undid a closing tx both buried
            if txid in beyond_final:
                continue
            if client is not None:
                require(refund_valid(client), f"client's refund of {txid} is invalid")
            require((server is not None and settlement_valid(server)) or client is not None,
                    f"funded contract {txid}: neither a settlement nor a refund is possible")

    def outcomes_match_chain(self, servers: dict[str, ChannelRecord],
                             clients: dict[str, ChannelRecord]) -> None:
        """Once a side's watcher has seen the chain as it is, a settled or refunded record
        says what the chain did."""
        chain = self.world.chain
        for process, records in ((self.world.server, servers), (self.world.client, clients)):
            if not process.synced():
                continue
            for txid, record in records.items():
                if record.status not in (ChannelStatus.SETTLED, ChannelStatus.REFUNDED):
                    continue
                spent = chain.spender(record.contract.outpoint)
                require(spent is not None, f"{record.role} says {txid} is {record.status} "
                        "but the chain has no closing tx")
                assert spent is not None
                closing = spent[0]
                require(record.settlement_tx == closing.serialize(),
                        f"{record.role}'s stored closing tx of {txid} is not the chain's")
                require((record.status is ChannelStatus.REFUNDED) == is_refund(closing),
                        f"{record.role} says {txid} is {record.status}; the chain disagrees")
                if record.status is ChannelStatus.SETTLED:
                    share = client_share(record.contract, closing)
                    if record.role is Role.SERVER:
                        require(share == record.change, f"settlement of {txid} pays the "
                                f"client {share}, the server's store says {record.change}")
                    else:
                        require(share >= record.change, f"settlement of {txid} pays the "
                                f"client {share}, below its stored change {record.change}")

"""Drive a client and a server state machine against each other in memory (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.script import p2wpkh_script
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel import reanchor
from bitcoind_paychan.channel.client import ClientChannel
from bitcoind_paychan.channel.effects import (
    CheckContract,
    CheckReanchor,
    Effect,
    FundContract,
    FundReanchor,
    LoadChannel,
    PaymentReceived,
    PrepareReanchor,
    PrepareSettlement,
    ReanchorLocked,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.wire import decode_message, encode_message, pb

PAYOUT = b"\x00\x14" + bytes(20)
FEE_RATE = 2000
WALLET_COIN = 400_000  # what funding_tx's and reanchor_funding's wallet coin holds


def funding_tx(effect: FundContract, segwit: bool = True) -> Transaction:
    """A wallet-like contract tx: one segwit input, output 0 as asked, change."""
    txin = TxIn(OutPoint(PrivateKey.generate().pub.data[1:], 1), b"", 0xFFFFFFFD,
                (bytes(71), bytes(33)) if segwit else ())
    if not segwit:
        txin = TxIn(txin.prevout, bytes(106), 0xFFFFFFFD)
    return Transaction(2, (txin,), (TxOut(effect.value, effect.script_pubkey),
                                    TxOut(50_000, PAYOUT)), 0)


def reanchor_funding(effect: FundReanchor, contract_value: int
                     ) -> tuple[Transaction, tuple[TxOut, ...]]:
    """A wallet-like funding of R: one signed segwit coin of WALLET_COIN sat and change back,
    the fee at the asked rate on a generous size (C:0 spent at `contract_value`); and the
    output that coin spends."""
    key = PrivateKey.generate()
    coin = TxIn(OutPoint(key.pub.data[1:], 0), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
    fee = -(-effect.fee_rate * (effect.draft.vsize + 250) // 1000)
    change = contract_value + WALLET_COIN - sum(o.value for o in effect.draft.outputs) - fee
    funded = Transaction(effect.draft.version, (*effect.draft.inputs, coin),
                         (*effect.draft.outputs, TxOut(change, PAYOUT)), 0)
    return funded, (TxOut(WALLET_COIN, p2wpkh_script(hash160(key.pub.data))),)


def reanchor_fee(tx: Transaction, server: ServerChannel) -> int:
    """R's fee as a node counts it: every wallet input is one coin of WALLET_COIN sat (as
    reanchor_funding's)."""
    assert server.record is not None
    spent = server.record.contract.value + WALLET_COIN * (len(tx.inputs) - 1)
    return spent - sum(output.value for output in tx.outputs)


@dataclass
class Pump:
    client: ClientChannel
    server: ServerChannel
    client_store: dict[str, ChannelRecord] = field(default_factory=dict)
    server_store: dict[str, ChannelRecord] = field(default_factory=dict)
    client_log: list[Effect] = field(default_factory=list)
    server_log: list[Effect] = field(default_factory=list)
    segwit_funding: bool = True
    ack_info: bytes = b""  # what the server's application attaches to each ack
    reanchor_refusal: str | None = None  # the server's node's answer to CheckReanchor
    hold: set[type] = field(default_factory=set)  # effects not carried out (kept in `held`)
    held: list[Effect] = field(default_factory=list)
    drop: set[int] = field(default_factory=set)  # message types lost on the way (in `held`)
    client_sees_r: bool = True  # the client's node shows R confirmed once the server locks

    def run(self, client_effects: list[Effect], side: str = "client") -> None:
        """Carry out effects (the client's, or the server's) until both sides are quiet."""
        self.drain([(side, e) for e in client_effects])

    def drain(self, queue: list[tuple[str, Effect]]) -> None:
        """Carry out each side's effects, and what they lead to, until both are quiet."""
        while queue:
            side, effect = queue.pop(0)
            (self.client_log if side == "client" else self.server_log).append(effect)
            follow = self._carry_out(side, effect)
            if isinstance(effect, PaymentReceived):  # its ack, before what followed
                queue[:0] = follow
            else:
                queue.extend(follow)

    def _carry_out(self, side: str, effect: Effect) -> list[tuple[str, Effect]]:
        store = self.client_store if side == "client" else self.server_store
        if type(effect) in self.hold or (isinstance(effect, Send)
                                         and effect.message.type in self.drop):
            self.held.append(effect)
            return []
        if isinstance(effect, StoreChannel | StorePayment):
            store[effect.record.contract_txid] = effect.record
        elif isinstance(effect, Send):
            wire = decode_message(encode_message(effect.message))  # through the real codec
            if side == "client":
                return [("server", e) for e in self.server.receive(wire)]
            return [("client", e) for e in self.client.receive(wire)]
        elif isinstance(effect, FundContract):
            tx = funding_tx(effect, self.segwit_funding)
            return [("client", e) for e in self.client.contract_funded(tx)]
        elif isinstance(effect, CheckContract):
            return [("server", e) for e in self.server.contract_checked(None)]
        elif isinstance(effect, LoadChannel):
            return [("server", e) for e in
                    self.server.channel_loaded(self.server_store.get(effect.contract_txid))]
        elif isinstance(effect, PaymentReceived):
            return [("server", e) for e in self.server.payment_answered(effect, self.ack_info)]
        elif isinstance(effect, PrepareSettlement):
            return [("server", e) for e in self.server.settle(FEE_RATE, PAYOUT)]
        elif isinstance(effect, PrepareReanchor):
            script = effect.payout_script or PAYOUT
            return [("server", e) for e in
                    self.server.quote_reanchor(FEE_RATE, script, self.server.now)]
        elif isinstance(effect, FundReanchor):
            value = self.client.record.contract.value  # type: ignore[union-attr]
            return [("client", e) for e in
                    self.client.reanchor_funded(*reanchor_funding(effect, value))]
        elif isinstance(effect, ReanchorLocked) and self.client_sees_r:
            promoted = reanchor.promoted(effect.record)  # stored, then the machine follows
            self.client_store[promoted.contract_txid] = promoted
            return [("client", e) for e in self.client.reanchor_confirmed(promoted)]
        elif isinstance(effect, CheckReanchor):
            return [("server", e) for e in self.server.reanchor_checked(
                self.reanchor_refusal, reanchor_fee(effect.tx, self.server),
                FEE_RATE if effect.resent else None)]
        return []

    def sent(self, side: str) -> list[pb.TwoWayChannelMessage]:
        log = self.client_log if side == "client" else self.server_log
        return [e.message for e in log if isinstance(e, Send)]

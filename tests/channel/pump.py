"""Drive a client and a server state machine against each other in memory (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.client import ClientChannel
from bitcoind_paychan.channel.effects import (
    CheckContract,
    Effect,
    FundContract,
    LoadChannel,
    PaymentReceived,
    PrepareSettlement,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.wire import decode_message, encode_message, pb

PAYOUT = b"\x00\x14" + bytes(20)
FEE_RATE = 2000


def funding_tx(effect: FundContract, segwit: bool = True) -> Transaction:
    """A wallet-like contract tx: one segwit input, output 0 as asked, change."""
    txin = TxIn(OutPoint(PrivateKey.generate().pub.data[1:], 1), b"", 0xFFFFFFFD,
                (bytes(71), bytes(33)) if segwit else ())
    if not segwit:
        txin = TxIn(txin.prevout, bytes(106), 0xFFFFFFFD)
    return Transaction(2, (txin,), (TxOut(effect.value, effect.script_pubkey),
                                    TxOut(50_000, PAYOUT)), 0)


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

    def run(self, client_effects: list[Effect]) -> None:
        """Carry out effects until both sides are quiet."""
        self.drain([("client", e) for e in client_effects])

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
        return []

    def sent(self, side: str) -> list[pb.TwoWayChannelMessage]:
        log = self.client_log if side == "client" else self.server_log
        return [e.message for e in log if isinstance(e, Send)]

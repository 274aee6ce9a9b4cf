"""Version 4's cooperative close: a MuSig2 session in the CLOSE exchange (the client's nonce;
the server's nonce and partial signature with the unsigned settlement; the client's partial
signature; the signed key-path settlement). Whatever goes wrong in it gets a clear ERROR, and
the server settles through the payment leaf instead; nothing half-done is stored."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bitcoind_paychan.bitcoin import musig2
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.sighash import SIGHASH_DEFAULT
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy, ClientState
from bitcoind_paychan.channel.contract import Branch
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelClosed,
    Disconnect,
    Effect,
    PeerError,
    PrepareSettlement,
    Send,
    StoreChannel,
)
from bitcoind_paychan.channel.kinds.v4_taproot import TaprootChannel
from bitcoind_paychan.channel.records import ChannelStatus
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy, ServerState
from bitcoind_paychan.errors import ErrorCode
from bitcoind_paychan.wire import decode_message, encode_message, pb
from regtest.chainrules import spend_problem
from tests.channel.pump import FEE_RATE, PAYOUT, Pump

T = pb.TwoWayChannelMessage
NOW, VALUE = 1_700_000_000, 500_000


def opened() -> Pump:
    client = ClientChannel(ClientPolicy(VALUE), PrivateKey.generate(), NOW, 4)
    server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW)
    pump = Pump(client, server)
    pump.run(client.start())
    pump.run(client.pay(20_000))
    assert client.state is ClientState.OPEN and server.state is ServerState.OPEN
    return pump


def wire(message: T) -> T:
    return decode_message(encode_message(message))


def only_send(effects: list[Effect]) -> T:
    (send,) = effects
    assert isinstance(send, Send)
    return wire(send.message)


def proposal(pump: Pump) -> tuple[T, T]:
    """The client's CLOSE (its nonce) and the server's answer (the key-path proposal)."""
    close = only_send(pump.client.close())
    assert len(close.musig_nonce) == 66 and not close.HasField("settlement")
    assert isinstance(pump.server.receive(close)[0], PrepareSettlement)
    answer = only_send(pump.server.settle(FEE_RATE, PAYOUT))
    assert pump.server.state is ServerState.COSIGNING
    assert not answer.HasField("settlement") and len(answer.musig_partial_signature) == 32
    return close, answer


def assert_valid(pump: Pump, tx: Transaction, branch: Branch) -> None:
    contract = pump.server.record.contract  # type: ignore[union-attr]
    assert contract.kind.unlocking(tx)[1] is branch
    assert spend_problem(contract, tx, NOW) is None  # our own sighash and key code agree


def test_the_cooperative_close_is_one_signature_by_the_aggregate_key() -> None:
    pump = opened()
    pump.run(pump.client.close())
    (server_record,) = pump.server_store.values()
    (client_record,) = pump.client_store.values()
    assert server_record.status is client_record.status is ChannelStatus.CLOSING
    assert server_record.settlement_tx == client_record.settlement_tx
    settlement = Transaction.parse(server_record.settlement_tx or b"")
    (signature,) = settlement.inputs[0].witness
    assert len(signature) == 64  # SIGHASH_DEFAULT
    assert_valid(pump, settlement, Branch.KEY_PATH)
    contract = server_record.contract
    assert settlement.outputs[0].value == client_record.change == VALUE - 21_000
    fee = VALUE - sum(o.value for o in settlement.outputs)
    assert fee == -(-FEE_RATE * settlement.vsize // 1000)  # from the server's share, exact
    assert contract.kind.sighash(settlement, SIGHASH_DEFAULT, Branch.KEY_PATH)
    assert [m.type for m in pump.sent("server")][-2:] == [T.CLOSE, T.CLOSE]
    assert not [e for e in pump.server_log + pump.client_log if isinstance(e, PeerError)]


def fell_back(pump: Pump, effects: list[Effect], why: str) -> Transaction:
    """The server's answer: ERROR naming `why`, then the settlement through the payment leaf
    (stored, broadcast, sent)."""
    error = wire(effects[0].message) if isinstance(effects[0], Send) else None
    assert error is not None and error.type == T.ERROR
    assert error.error.code == int(ErrorCode.BAD_TRANSACTION)
    assert why in error.error.explanation and "payment leaf" in error.error.explanation
    assert [type(e) for e in effects] == [Send, PeerError, StoreChannel, Broadcast, Send,
                                          ChannelClosed, Disconnect]
    stored = effects[2]
    assert isinstance(stored, StoreChannel) and stored.record.status is ChannelStatus.CLOSING
    settlement = Transaction.parse(stored.record.settlement_tx or b"")
    assert_valid(pump, settlement, Branch.COOPERATIVE)
    assert pump.server.state is ServerState.CLOSED
    return settlement


@pytest.mark.parametrize(("signature", "why"), [
    (bytes(32), "does not verify"),
    (b"\xff" * 32, "does not verify"),  # not below the curve order
    (b"\x01" * 31, "does not verify"),
    (b"", "without the client's partial signature"),
])
def test_a_bad_partial_signature_falls_back_to_the_payment_leaf(signature: bytes,
                                                                why: str) -> None:
    pump = opened()
    proposal(pump)
    bad = messages.close(musig_partial_signature=signature)
    settlement = fell_back(pump, pump.server.receive(wire(bad)), why)
    assert settlement.outputs[0].value == VALUE - 21_000


def test_a_partial_signature_for_another_nonce_falls_back() -> None:
    """The client's key, sound MuSig2 arithmetic, but a session with another nonce than the
    one the server answered."""
    pump = opened()
    _, answer = proposal(pump)
    contract = pump.server.record.contract  # type: ignore[union-attr]
    kind = contract.kind
    assert isinstance(kind, TaprootChannel)
    secnonce, nonce = kind.close_nonce(pump.client.key)
    session = kind._session(Transaction.parse(answer.musig_settlement),
                            [nonce, answer.musig_nonce])
    signature = musig2.sign(secnonce, pump.client.key.secret, session)
    bad = messages.close(musig_partial_signature=signature)
    fell_back(pump, pump.server.receive(wire(bad)), "does not verify")


def test_a_replayed_nonce_falls_back() -> None:
    pump = opened()
    close, _ = proposal(pump)
    fell_back(pump, pump.server.receive(close), "a second MuSig2 nonce")


def test_an_unusable_client_nonce_falls_back_at_once() -> None:
    pump = opened()
    close = only_send(pump.client.close())
    close.musig_nonce = b"\x02" + bytes(65)  # not a point
    pump.server.receive(wire(close))
    fell_back(pump, pump.server.settle(FEE_RATE, PAYOUT), "nonce is unusable")


def test_a_lost_connection_mid_session_stores_nothing_and_a_new_session_closes() -> None:
    pump = opened()
    first_close, _ = proposal(pump)
    pump.server.connection_lost()
    (record,) = pump.server_store.values()
    assert record.status is ChannelStatus.OPEN  # nothing decided: a new session may start
    client = ClientChannel.resuming(pump.client.record,  # type: ignore[arg-type]
                                    ClientPolicy(VALUE), NOW)
    # The new connection's machine has a key of its own: the channel's is the record's.
    again = Pump(client, ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW),
                 pump.client_store, pump.server_store)
    again.run(client.start())
    assert client.state is ClientState.OPEN
    second_close = only_send(client.close())
    assert second_close.musig_nonce != first_close.musig_nonce  # fresh, never stored
    again.run([Send(second_close)])
    (closed,) = pump.server_store.values()
    settlement = Transaction.parse(closed.settlement_tx or b"")
    assert closed.status is ChannelStatus.CLOSING and len(settlement.inputs[0].witness) == 1
    assert_valid(again, settlement, Branch.KEY_PATH)


def test_the_client_refuses_a_proposal_it_did_not_ask_for_or_cannot_check() -> None:
    pump = opened()
    _, answer = proposal(pump)
    tampered = wire(answer)
    tampered.musig_partial_signature = bytes(31) + b"\x01"
    effects = pump.client.receive(tampered)
    assert isinstance(effects[0], Send)
    assert "cannot be signed" in effects[0].message.error.explanation
    assert pump.client.state is ClientState.CLOSED
    assert all(r.status is ChannelStatus.OPEN for r in pump.client_store.values())

    pump = opened()
    _, answer = proposal(pump)
    assert only_send(pump.client.receive(answer)).musig_partial_signature  # signed once
    effects = pump.client.receive(answer)  # the same proposal again: its nonce is spent
    assert isinstance(effects[0], Send)
    assert "no MuSig2 session" in effects[0].message.error.explanation


def test_a_proposal_that_underpays_the_client_is_refused() -> None:
    pump = opened()
    _, answer = proposal(pump)
    tx = Transaction.parse(answer.musig_settlement)
    short = replace(tx, outputs=(replace(tx.outputs[0], value=tx.outputs[0].value - 1),
                                 tx.outputs[1]))
    answer.musig_settlement = short.serialize()
    effects = pump.client.receive(wire(answer))
    assert isinstance(effects[0], Send)
    assert "does not pay our change" in effects[0].message.error.explanation

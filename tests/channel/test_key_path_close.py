"""Version 4's cooperative close: a MuSig2 session in the CLOSE exchange (the client's nonce;
the server's nonce with the unsigned settlement; the client's partial signature; the signed
key-path settlement, stored by the server before it leaves). The server's partial signature
never leaves the server, so the client can never complete a settlement alone. Whatever goes
wrong gets a clear ERROR, and the server settles through the payment leaf instead; nothing
half-done is stored."""

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
    assert not answer.HasField("settlement") and len(answer.musig_nonce) == 66
    assert not answer.HasField("musig_partial_signature")  # the server signs last, alone
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
    tampered.musig_nonce = b"\x02" + bytes(65)  # not a point
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


def server_partial_signature(pump: Pump, close: T, answer: T) -> bytes:
    """The server's partial signature of the proposal, as BIP327 DeterministicSign makes it
    (the nonce it yields is the one the server sent)."""
    record = pump.server.record
    assert record is not None
    kind = record.contract.kind
    assert isinstance(kind, TaprootChannel)
    keys, tweaks, xonly = kind._session_keys
    tx = Transaction.parse(answer.musig_settlement)
    nonce, signature = musig2.deterministic_sign(
        record.key.secret, musig2.nonce_agg([close.musig_nonce]), keys, tweaks, xonly,
        kind._close_digest(tx))
    assert nonce == answer.musig_nonce
    return signature


def test_the_server_partial_signature_never_leaves_the_server() -> None:
    """Not in its proposal, not in anything it sends after: the settlement goes out signed,
    and only once it is stored."""
    pump = opened()
    close, answer = proposal(pump)
    secret = server_partial_signature(pump, close, answer)
    pump.run(pump.client.receive(answer))
    sent = [answer, *pump.sent("server")]
    assert all(secret not in m.SerializeToString() for m in sent)
    stored = [i for i, e in enumerate(pump.server_log) if isinstance(e, StoreChannel)]
    settled = [i for i, e in enumerate(pump.server_log)
               if isinstance(e, Send) and e.message.HasField("settlement")]
    assert stored and settled and stored[-1] < settled[0]
    (record,) = pump.server_store.values()
    assert record.status is ChannelStatus.CLOSING
    assert_valid(pump, Transaction.parse(record.settlement_tx or b""), Branch.KEY_PATH)


def test_a_client_that_aggregates_alone_and_resumes_cannot_undo_later_payments() -> None:
    """The review's attack: the client takes the proposal, never sends its partial signature,
    hangs up, resumes and pays on. What it holds completes no spend of the contract, so the
    payments the server acknowledges after are safe."""
    pump = opened()
    close, answer = proposal(pump)
    record = pump.server.record
    assert record is not None and pump.client._secnonce is not None
    kind = record.contract.kind
    assert isinstance(kind, TaprootChannel)
    tx = Transaction.parse(answer.musig_settlement)
    session = kind._session(tx, [close.musig_nonce, answer.musig_nonce])
    mine = musig2.sign(pump.client._secnonce, pump.client.key.secret, session)
    alone = kind.unlock(tx, [musig2.partial_sig_agg([mine], session)], Branch.KEY_PATH)
    assert spend_problem(record.contract, alone, NOW) is not None  # not a valid spend
    pump.server.connection_lost()
    client = ClientChannel.resuming(pump.client.record,  # type: ignore[arg-type]
                                    ClientPolicy(VALUE), NOW)
    again = Pump(client, ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW),
                 pump.client_store, pump.server_store)
    again.run(client.start())
    again.run(client.pay(400_000))
    (stored,) = pump.server_store.values()
    assert stored.status is ChannelStatus.OPEN and stored.change == VALUE - 421_000
    assert [m.type for m in again.sent("server")].count(T.PAYMENT_ACK) == 2  # resume, payment
    # The server's nonce (public) was all the client got from it, never its partial signature.
    secret = server_partial_signature(pump, close, answer)
    assert all(secret not in m.SerializeToString() for m in [answer, *pump.sent("server")])


def hostile(honest: Transaction, change: int, how: str) -> Transaction:
    """The honest proposal, altered as a hostile server might."""
    first, share = honest.outputs
    txin = honest.inputs[0]
    if how == "lock time":
        return Transaction(honest.version, (replace(txin, sequence=0xFFFFFFFE),),
                           honest.outputs, 1)
    if how == "version":
        return replace(honest, version=2)
    if how == "sequence":
        return replace(honest, inputs=(replace(txin, sequence=0),))
    if how == "extra input":
        other = replace(txin, prevout=replace(txin.prevout, index=1))
        return replace(honest, inputs=(txin, other))
    if how == "extra output":
        return replace(honest, outputs=(first, replace(share, value=share.value - 1000),
                                        replace(share, value=1000)))
    assert how == "more change"  # more than we are owed is not the draft either
    return replace(honest, outputs=(replace(first, value=change + 1),
                                    replace(share, value=share.value - 1)))


@pytest.mark.parametrize(("how", "why"), [
    ("lock time", "lock time 1, not 0"),
    ("version", "version 2, not 1"),
    ("sequence", "inputs other than the contract alone with a FINAL sequence"),
    ("extra input", "inputs other than the contract alone"),
    ("extra output", "3 outputs"),
    ("more change", "outputs other than exactly our change"),
])
def test_the_client_signs_only_its_contracts_settlement_draft(how: str, why: str) -> None:
    pump = opened()
    _, answer = proposal(pump)
    change = pump.client.record.change  # type: ignore[union-attr]
    odd = hostile(Transaction.parse(answer.musig_settlement), change, how)
    effects = pump.client.receive(wire(messages.close(musig_nonce=answer.musig_nonce,
                                                      musig_settlement=odd.serialize())))
    sends = [wire(e.message) for e in effects if isinstance(e, Send)]
    assert [m.type for m in sends] == [T.ERROR] and why in sends[0].error.explanation
    assert not any(m.HasField("musig_partial_signature") for m in sends)
    assert pump.client.state is ClientState.CLOSED
    assert all(r.status is ChannelStatus.OPEN for r in pump.client_store.values())

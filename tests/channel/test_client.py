"""The client state machine, driven against the server state machine in memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy, ClientState
from bitcoind_paychan.channel.contract import DUST
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelOpened,
    CheckContract,
    Effect,
    FundContract,
    PaymentAcknowledged,
    PaymentReceived,
    ResumeRefused,
    Send,
    StoreChannel,
    StorePayment,
    VersionRefused,
)
from bitcoind_paychan.channel.records import ChannelStatus
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy, ServerState
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError
from bitcoind_paychan.wire import error_code, pb
from tests.channel.pump import PAYOUT, Pump

T = pb.TwoWayChannelMessage
NOW = 1_700_000_000
VALUE = 1_000_000


def make_pump(version: int = 3, value: int = VALUE, **server_policy: Any) -> Pump:
    client = ClientChannel(ClientPolicy(value), PrivateKey.generate(), NOW, version)
    server = ServerChannel(ServerPolicy(**server_policy), PrivateKey.generate(), NOW)
    return Pump(client, server)


def opened(version: int) -> Pump:
    pump = make_pump(version)
    pump.run(pump.client.start())
    assert pump.client.state is ClientState.OPEN
    return pump


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_open_pay_close(version: int) -> None:
    pump = opened(version)
    refund = [T.RETURN_REFUND] if version == 1 else []
    assert [m.type for m in pump.sent("server")] == [T.SERVER_VERSION, T.INITIATE, *refund,
                                                      T.CHANNEL_OPEN]
    assert pump.server.state is ServerState.OPEN
    record = pump.client.record
    assert record is not None and record.change == VALUE - 1000
    if version == 1:
        assert record.refund_tx  # stored fully signed before the contract was sent
    else:
        assert record.refund_tx is None  # none stored: signed when it is needed
    assert pump.client_store[record.contract_txid].change == VALUE - 1000
    for _ in range(10):
        pump.run(pump.client.pay(5_000, b"tick"))
    assert pump.server.record is not None
    assert pump.server.record.change == VALUE - 1000 - 50_000
    assert pump.server_store[record.contract_txid].change == VALUE - 51_000
    received = [e for e in pump.server_log if isinstance(e, PaymentReceived)]
    assert [e.amount for e in received] == [1000] + [5000] * 10
    assert {e.info for e in received[1:]} == {b"tick"}
    acks = [e for e in pump.client_log if isinstance(e, PaymentAcknowledged)]
    assert len(acks) == 10
    pump.run(pump.client.close())
    assert pump.client.state is ClientState.CLOSED
    (closed,) = [e for e in pump.client_log if isinstance(e, ChannelClosed)]
    settlement = closed.settlement
    assert settlement.outputs[0].value == VALUE - 51_000
    assert settlement.outputs[1].script_pubkey == PAYOUT
    fee = VALUE - sum(o.value for o in settlement.outputs)
    # Sized with worst-case signatures: never under the rate, at most a few bytes over it.
    assert 2 * settlement.vsize <= fee <= 2 * (settlement.vsize + 6)
    assert pump.client_store[record.contract_txid].status is ChannelStatus.CLOSING
    assert pump.server_store[record.contract_txid].settlement_tx == settlement.serialize()


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_exhausting_the_channel_settles(version: int) -> None:
    pump = opened(version)
    record = pump.client.record
    assert record is not None
    pump.run(pump.client.pay(record.change - DUST + 1))  # leaves dust: paid to the server
    server_record = pump.server_store[record.contract_txid]
    assert server_record.change == 0
    closed = [e for e in pump.client_log if isinstance(e, ChannelClosed)]
    assert len(closed) == 1
    assert [o.script_pubkey for o in closed[0].settlement.outputs] == [PAYOUT]


def test_resume_resends_the_last_payment_and_continues() -> None:
    pump = opened(3)
    pump.run(pump.client.pay(10_000))
    record = pump.client.record
    assert record is not None
    # The client signs and stores a payment, but the connection drops before it arrives.
    lost = pump.client.pay(20_000)
    assert isinstance(lost[-1], Send)
    stored = pump.client_store[record.contract_txid] = lost[0].record  # type: ignore[union-attr]
    client = ClientChannel.resuming(stored, ClientPolicy(VALUE), NOW + 60)
    server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW + 60)
    resumed = Pump(client, server, pump.client_store, pump.server_store)
    resumed.run(client.start())
    assert [m.type for m in resumed.sent("server")] == [T.SERVER_VERSION, T.CHANNEL_OPEN,
                                                         T.PAYMENT_ACK]
    assert resumed.server_store[record.contract_txid].change == VALUE - 31_000
    assert any(isinstance(e, ChannelOpened) and e.resumed for e in resumed.client_log)
    resumed.run(client.pay(1_000))
    assert resumed.server_store[record.contract_txid].change == VALUE - 32_000
    resumed.run(client.pay(0 + 1_000))
    resumed.run(client.close())
    assert client.state is ClientState.CLOSED


def test_resume_of_an_already_acknowledged_payment_is_not_counted_twice() -> None:
    pump = opened(2)
    pump.run(pump.client.pay(10_000))
    stored = pump.client.record
    assert stored is not None
    client = ClientChannel.resuming(stored, ClientPolicy(VALUE), NOW)
    resumed = Pump(client, ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW),
                   pump.client_store, pump.server_store)
    resumed.run(client.start())
    assert not [e for e in resumed.server_log if isinstance(e, PaymentReceived)]
    assert resumed.server_store[stored.contract_txid].change == stored.change


def test_a_server_that_no_longer_has_the_channel_refuses_the_resume() -> None:
    pump = opened(3)
    stored = pump.client.record
    assert stored is not None
    client = ClientChannel.resuming(stored, ClientPolicy(VALUE), NOW)
    other = Pump(client, ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW))
    other.run(client.start())  # this server never heard of the channel: it sends INITIATE
    assert ResumeRefused(stored.contract_txid) in other.client_log
    assert client.state is ClientState.CLOSED
    assert not any(isinstance(e, FundContract) for e in other.client_log)  # no new money


def test_server_refusing_our_version_is_reported_for_fallback() -> None:
    pump = make_pump(3)
    pump.server.policy = ServerPolicy(versions=(1, 2))
    pump.run(pump.client.start())
    refused = [e for e in pump.client_log if isinstance(e, VersionRefused)]
    assert refused and refused[0].version == 3


@pytest.mark.parametrize(
    ("server_policy", "client_policy", "code", "expected"),
    [
        ({"min_channel_size": 2 * VALUE}, ClientPolicy(VALUE), ErrorCode.CHANNEL_VALUE_TOO_LARGE,
         VALUE),
        ({"min_payment": 50_000}, ClientPolicy(VALUE, max_min_payment=10_000),
         ErrorCode.MIN_PAYMENT_TOO_LARGE, 10_000),
        ({"min_time_window": 3 * 24 * 3600}, ClientPolicy(VALUE, time_window=24 * 3600),
         ErrorCode.TIME_WINDOW_UNACCEPTABLE, None),
    ],
)
def test_client_refuses_unacceptable_terms(
    server_policy: dict[str, Any], client_policy: ClientPolicy, code: ErrorCode,
    expected: int | None,
) -> None:
    client = ClientChannel(client_policy, PrivateKey.generate(), NOW, 2)
    pump = Pump(client, ServerChannel(ServerPolicy(**server_policy), PrivateKey.generate(), NOW))
    pump.run(client.start())
    (error,) = [m for m in pump.sent("client") if m.type == T.ERROR]
    assert error_code(error.error) is code
    if expected is not None:
        assert error.error.expected_value == expected
    assert client.state is ClientState.CLOSED


def test_client_refuses_a_bad_server_key() -> None:
    client = ClientChannel(ClientPolicy(VALUE), PrivateKey.generate(), NOW, 2)
    client.start()
    client.receive(_server_version(2))
    bad = T(type=T.INITIATE)
    bad.initiate.multisig_key = b"\x04" + bytes(64)
    bad.initiate.min_accepted_channel_size, bad.initiate.min_payment = 1000, 1000
    bad.initiate.expire_time_secs = NOW + 3600
    effects = client.receive(bad)
    assert isinstance(effects[0], Send)
    assert error_code(effects[0].message.error) is ErrorCode.BAD_TRANSACTION


def _server_version(major: int) -> T:
    msg = T(type=T.SERVER_VERSION)
    msg.server_version.major = major
    return msg


def test_pay_checks() -> None:
    pump = opened(3)
    with pytest.raises(LocalProtocolError, match="cannot pay"):
        pump.client.pay(VALUE)
    with pytest.raises(LocalProtocolError, match="positive"):
        pump.client.pay(0)
    assert pump.client.window == ClientPolicy().payment_window  # the server takes more
    for _ in range(pump.client.window):
        assert pump.client.can_pay
        pump.client.pay(1000)  # in flight
    assert not pump.client.can_pay
    with pytest.raises(LocalProtocolError, match="16 payments already await their acks"):
        pump.client.pay(1000)


def test_a_server_that_names_no_window_gets_one_payment_at_a_time() -> None:
    """bitcoinj's SERVER_VERSION has no payment_window: stop and wait, as before."""
    client = make_pump(3).client
    client.start()
    client.receive(_server_version(3))
    assert client.window == 1


def test_pipelined_payments_are_stored_before_sent_and_acknowledged_in_order() -> None:
    pump = opened(3)
    record = pump.client.record
    assert record is not None
    batches = [pump.client.pay(amount, bytes([amount // 1000])) for amount in (1000, 2000, 3000)]
    for effects in batches:  # each: its record stored, then sent
        assert [type(e) for e in effects] == [StorePayment, Send]
    assert pump.client.state is ClientState.WAITING_FOR_ACK
    for effects in batches:  # the server receives them in order
        pump.run(effects)
    acks = [e for e in pump.client_log if isinstance(e, PaymentAcknowledged)]
    assert [(a.amount, a.info) for a in acks] == [(1000, b""), (2000, b""), (3000, b"")]
    assert state_of(pump.client) is ClientState.OPEN
    assert pump.server_store[record.contract_txid].change == VALUE - 7_000
    received = [e.amount for e in pump.server_log if isinstance(e, PaymentReceived)]
    assert received == [1000, 1000, 2000, 3000]


def test_close_with_several_payments_in_flight_waits_for_the_last_ack() -> None:
    pump = opened(3)
    in_flight = [pump.client.pay(1_000), pump.client.pay(1_000)]
    assert pump.client.close() == []
    pump.run(in_flight[0])
    assert state_of(pump.client) is ClientState.CLOSE_AFTER_ACK  # one still in flight
    pump.run(in_flight[1])
    (closed,) = [e for e in pump.client_log if isinstance(e, ChannelClosed)]
    assert closed.settlement.outputs[0].value == VALUE - 3_000


def test_client_rejects_a_settlement_that_shortchanges_it() -> None:
    pump = opened(3)
    record = pump.client.record
    assert record is not None
    pump.client.close()
    bogus = Transaction.parse(record.contract_tx)  # does not spend the contract
    close = T(type=T.CLOSE)
    close.settlement.tx = bogus.serialize()
    effects = pump.client.receive(close)
    assert isinstance(effects[0], Send)
    assert error_code(effects[0].message.error) is ErrorCode.BAD_TRANSACTION


def test_close_while_a_payment_is_in_flight_waits_for_its_ack_then_closes() -> None:
    """Seen: close() while a payment was in flight sent CLOSE at once and had no (CLOSING,
    PAYMENT_ACK) row: the honest server's ack drew an ERROR and its settlement was ignored."""
    pump = opened(3)
    in_flight = pump.client.pay(5_000)
    assert pump.client.close() == []  # CLOSE waits for the ack
    assert pump.client.state is ClientState.CLOSE_AFTER_ACK
    assert pump.client.close() == []  # idempotent
    pump.run(in_flight)
    acks = [e for e in pump.client_log if isinstance(e, PaymentAcknowledged)]
    assert [a.amount for a in acks] == [5_000]
    assert [m.type for m in pump.sent("client")][-2:] == [T.UPDATE_PAYMENT, T.CLOSE]
    assert not [m for m in pump.sent("client") if m.type == T.ERROR]
    (closed,) = [e for e in pump.client_log if isinstance(e, ChannelClosed)]
    assert closed.settlement.outputs[0].value == VALUE - 6_000
    assert state_of(pump.client) is ClientState.CLOSED
    assert pump.client.close() == []  # closing a closed channel does nothing


def state_of(machine: ClientChannel) -> ClientState:
    return machine.state  # read afresh (mypy narrows attributes across calls)


def test_an_ack_arriving_while_closing_is_honoured() -> None:
    client = opened(2).client
    record = client.record
    assert record is not None
    client.pay(record.change)  # uses the channel up: the server will settle
    client.receive(messages.payment_ack())
    assert client.state is ClientState.CLOSING
    assert client.receive(messages.payment_ack(b"again")) == [
        PaymentAcknowledged(client.record, 0, b"again")]  # type: ignore[arg-type]
    assert client.state is ClientState.CLOSING


def test_every_input_outside_the_table_is_a_local_error() -> None:
    client = make_pump(3).client
    calls: list[Callable[[], object]] = [
        lambda: client.pay(1), client.close,
        lambda: client.contract_funded(Transaction(2, (), (), 0))]
    for call in calls:
        with pytest.raises(LocalProtocolError, match="while not started"):
            call()
    client.start()
    with pytest.raises(LocalProtocolError, match="cannot start while waiting for SERVER_VERSION"):
        client.start()


def test_a_hang_up_before_server_version_is_a_version_refusal_only_for_a_new_channel() -> None:
    client = make_pump(3).client
    client.start()
    (refused,) = client.connection_lost()
    assert isinstance(refused, VersionRefused) and refused.lost and refused.version == 3
    pump = opened(3)
    resuming = ClientChannel.resuming(pump.client.record, ClientPolicy(VALUE),  # type: ignore
                                      NOW)
    resuming.start()
    assert resuming.connection_lost() == []  # a resume names its version: no fallback


class RefusingPump(Pump):
    """The server's node refuses the contract: the server never says CHANNEL_OPEN."""

    def _carry_out(self, side: str, effect: Effect) -> list[tuple[str, Effect]]:
        if isinstance(effect, CheckContract):
            return [("server", e) for e in self.server.contract_checked("txn-mempool-conflict")]
        return super()._carry_out(side, effect)


def test_a_channel_the_server_never_opened_is_abandoned_as_failed() -> None:
    pump = make_pump(3)
    refused = RefusingPump(pump.client, pump.server)
    refused.run(pump.client.start())
    stored = refused.client_store[pump.client.record.contract_txid]  # type: ignore[union-attr]
    assert pump.client.state is ClientState.CLOSED and stored.status is ChannelStatus.OPEN
    (store,) = pump.client.abandon()
    assert store == StoreChannel(replace(stored, status=ChannelStatus.FAILED))
    assert pump.client.record == store.record
    with pytest.raises(LocalProtocolError, match="cannot abandon while open"):
        opened(3).client.abandon()
    closed = opened(3).client
    closed.connection_lost()
    with pytest.raises(LocalProtocolError, match="only a new channel the server never opened"):
        closed.abandon()


def test_the_table_names_only_states_and_events_it_knows() -> None:
    from bitcoind_paychan.channel.client import TABLE as CLIENT_TABLE
    from bitcoind_paychan.channel.machine import Input
    from bitcoind_paychan.channel.server import TABLE as SERVER_TABLE

    for table, states in ((CLIENT_TABLE, ClientState), (SERVER_TABLE, ServerState)):
        for (state, event), nexts in table.items():
            assert state in states and nexts <= set(states)
            assert isinstance(event, Input) or event in T.MessageType.values()


def test_a_resume_after_several_unacknowledged_payments_sends_their_total() -> None:
    pump = opened(3)
    record = pump.client.record
    assert record is not None
    lost = [pump.client.pay(1_000), pump.client.pay(2_000), pump.client.pay(3_000)]
    stored = lost[-1][0].record  # type: ignore[union-attr]  # each stored before it was sent
    client = ClientChannel.resuming(stored, ClientPolicy(VALUE), NOW + 60)
    resumed = Pump(client, ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW + 60),
                   pump.client_store, pump.server_store)
    resumed.run(client.start())
    assert resumed.server_store[record.contract_txid].change == VALUE - 7_000
    assert client.state is ClientState.OPEN

"""The server state machine: what it answers to each bad message, and the order of its effects."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import coincurve
import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey, split_sig_hashtype
from bitcoind_paychan.bitcoin.sighash import SIGHASH_ALL, SIGHASH_ANYONECANPAY, SIGHASH_SINGLE
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy, ClientState
from bitcoind_paychan.channel.contract import (
    DUST,
    FINAL,
    Branch,
    Contract,
    output_script,
)
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelClosed,
    ChannelOpened,
    CheckContract,
    ClaimChannel,
    Disconnect,
    Effect,
    FundContract,
    LoadChannel,
    PaymentReceived,
    PeerError,
    PrepareSettlement,
    Purpose,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.kinds.v1_multisig import BareMultisig
from bitcoind_paychan.channel.machine import resume_digest
from bitcoind_paychan.channel.messages import DEFAULT_TIME_WINDOW
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import (
    SETTLEMENT_MARGIN,
    ServerChannel,
    ServerPolicy,
    ServerState,
)
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, PolicyError
from bitcoind_paychan.wire import decode_message, encode_message, pb
from tests.channel.pump import FEE_RATE, PAYOUT, Pump, funding_tx
from tests.channel.test_contract import high_s

T = pb.TwoWayChannelMessage
NOW = 1_700_000_000
VALUE = 1_000_000
MIN_PAYMENT = 1_000
VERSIONS = [1, 2, 3]


def wire(message: T) -> T:
    """`message` as the server would get it: through the real codec."""
    return decode_message(encode_message(message))


def types(effects: list[Effect]) -> list[type]:
    return [type(e) for e in effects]


def sent(effects: list[Effect]) -> list[T]:
    return [e.message for e in effects if isinstance(e, Send)]


def assert_refused(server: ServerChannel, effects: list[Effect], code: ErrorCode,
                   expected_value: int | None = None) -> None:
    """Exactly ERROR(code) sent, reported locally, and the connection dropped; nothing else."""
    assert types(effects) == [Send, PeerError, Disconnect], effects
    send, peer, disconnect = effects
    assert isinstance(send, Send) and isinstance(peer, PeerError)
    assert isinstance(disconnect, Disconnect)
    assert send.message.type == T.ERROR
    assert send.message.error.code == int(code)
    assert send.message.error.explanation
    if expected_value is None:
        assert not send.message.error.HasField("expected_value")
    else:
        assert send.message.error.expected_value == expected_value
    encode_message(send.message)  # a valid frame
    assert peer.code is code and peer.remote is False
    assert disconnect.code is code
    assert server.state is ServerState.CLOSED
    # Once closed, nothing more happens whatever arrives.
    assert server.receive(wire(messages.client_version(2, DEFAULT_TIME_WINDOW, None))) == []


def state_of(server: ServerChannel) -> ServerState:
    """The state, read afresh (keeps mypy from narrowing it across calls)."""
    return server.state


def apply(store: dict[str, ChannelRecord], effects: list[Effect]) -> None:
    for effect in effects:
        if isinstance(effect, StoreChannel | StorePayment):
            store[effect.record.contract_txid] = effect.record


# -- a hand-driven client ----------------------------------------------------------------------


@dataclass
class Session:
    """A server driven by hand up to the point where it waits for the refund or contract."""

    server: ServerChannel
    version: int
    client: PrivateKey
    server_pub: bytes
    expiry: int

    def script(self) -> bytes:
        return output_script(self.version, self.client.pub.data, self.server_pub, self.expiry)

    def contract_tx(self, value: int = VALUE, script: bytes | None = None,
                    segwit: bool = True) -> Transaction:
        return funding_tx(FundContract(script or self.script(), value), segwit)

    def contract(self, tx: Transaction) -> Contract:
        return Contract(self.version, self.client.pub.data, self.server_pub, self.expiry,
                        OutPoint(tx.txid, 0), tx.outputs[0].value)

    def refund(self, tx: Transaction) -> Transaction:
        return self.contract(tx).refund_tx(BareMultisig.presigned_refund_fee)

    def provide_refund(self, refund: Transaction, key: bytes | None = None) -> list[Effect]:
        client_pub = self.client.pub.data if key is None else key
        return self.server.receive(wire(messages.provide_refund(client_pub, refund.serialize())))

    def provide_contract(
        self, tx: Transaction | bytes, change: int | None = None, signature: bytes | None = None,
        client_key: bytes | None = None, omit_client_key: bool = False,
    ) -> list[Effect]:
        """PROVIDE_CONTRACT (after a good PROVIDE_REFUND for v1 if none was sent yet); by
        default with a valid initial payment of the minimum."""
        raw = tx if isinstance(tx, bytes) else tx.serialize()
        if change is None:
            assert isinstance(tx, Transaction)
            change = tx.outputs[0].value - MIN_PAYMENT
        if signature is None:
            assert isinstance(tx, Transaction)
            signature = self.contract(tx).sign_payment(self.client, change)
        if self.version == 1 and self.server.state is ServerState.WAITING_FOR_REFUND:
            assert isinstance(tx, Transaction)
            returned = self.provide_refund(self.refund(tx))
            assert [m.type for m in sent(returned)] == [T.RETURN_REFUND]
        key: bytes | None = None
        if self.version >= 2 and not omit_client_key:
            key = self.client.pub.data if client_key is None else client_key
        effects = self.server.receive(wire(messages.provide_contract(raw, change, signature,
                                                                     key)))
        if types(effects) == [CheckContract]:  # the node would take it
            return self.server.contract_checked(None)
        return effects


def start(version: int, policy: ServerPolicy | None = None,
          window: int = DEFAULT_TIME_WINDOW) -> Session:
    server = ServerChannel(policy or ServerPolicy(min_payment=MIN_PAYMENT),
                           PrivateKey.generate(), NOW)
    effects = server.receive(wire(messages.client_version(version, window, None)))
    assert [m.type for m in sent(effects)] == [T.SERVER_VERSION, T.INITIATE]
    assert len(effects) == 2
    assert sent(effects)[0].server_version.major == version
    initiate = sent(effects)[1].initiate
    expected = (ServerState.WAITING_FOR_REFUND if version == 1
                else ServerState.WAITING_FOR_CONTRACT)
    assert server.state is expected
    return Session(server, version, PrivateKey.generate(), initiate.multisig_key,
                   initiate.expire_time_secs)


def opened(version: int) -> Pump:
    client = ClientChannel(ClientPolicy(VALUE), PrivateKey.generate(), NOW, version)
    server = ServerChannel(ServerPolicy(min_payment=MIN_PAYMENT), PrivateKey.generate(), NOW)
    pump = Pump(client, server)
    pump.run(client.start())
    assert client.state is ClientState.OPEN and server.state is ServerState.OPEN
    return pump


# -- the handshake -----------------------------------------------------------------------------


@pytest.mark.parametrize("major", [0, 5, 99, -1])
def test_unknown_major_version(major: int) -> None:
    server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW)
    effects = server.receive(wire(messages.client_version(major, DEFAULT_TIME_WINDOW, None)))
    assert_refused(server, effects, ErrorCode.NO_ACCEPTABLE_VERSION)


def test_major_version_the_policy_does_not_offer() -> None:
    server = ServerChannel(ServerPolicy(versions=(1, 2)), PrivateKey.generate(), NOW)
    effects = server.receive(wire(messages.client_version(3, DEFAULT_TIME_WINDOW, None)))
    assert_refused(server, effects, ErrorCode.NO_ACCEPTABLE_VERSION)


@pytest.mark.parametrize("version", VERSIONS)
def test_initiate_carries_the_terms(version: int) -> None:
    policy = ServerPolicy(min_channel_size=123_456, min_payment=2_000)
    key = PrivateKey.generate()
    server = ServerChannel(policy, key, NOW)
    effects = server.receive(wire(messages.client_version(version, DEFAULT_TIME_WINDOW, None)))
    version_msg, initiate = sent(effects)
    assert (version_msg.server_version.major, version_msg.server_version.minor) == (version, 0)
    body = initiate.initiate
    assert body.multisig_key == key.pub.data and len(body.multisig_key) == 33
    assert body.min_accepted_channel_size == 123_456
    assert body.min_payment == 2_000
    assert body.expire_time_secs == NOW + DEFAULT_TIME_WINDOW


@pytest.mark.parametrize(("window", "expected"), [
    (0, 4 * 3600),
    (60, 4 * 3600),
    (4 * 3600 - 1, 4 * 3600),
    (4 * 3600, 4 * 3600),
    (DEFAULT_TIME_WINDOW, DEFAULT_TIME_WINDOW),
    (7 * 24 * 3600, 7 * 24 * 3600),
    (7 * 24 * 3600 + 1, 7 * 24 * 3600),
    (2**64 - 1, 7 * 24 * 3600),
])
def test_time_window_is_clamped(window: int, expected: int) -> None:
    assert start(2, ServerPolicy(), window).expiry == NOW + expected


def test_time_window_clamp_follows_the_policy() -> None:
    policy = ServerPolicy(min_time_window=3 * 3600, max_time_window=5 * 3600)
    assert start(3, policy, 3600).expiry == NOW + 3 * 3600
    assert start(3, policy, 4 * 3600).expiry == NOW + 4 * 3600
    assert start(3, policy, 10 * 3600).expiry == NOW + 5 * 3600


def _unexpected_messages() -> dict[str, tuple[int | None, list[T]]]:
    """name -> (version to start with, or None for a fresh server; messages, last one bad)."""
    key = PrivateKey.generate().pub.data
    payment = messages.update_payment(VALUE - 2000, b"\x30\x00\x83")
    contract = messages.provide_contract(b"\x01\x00\x00\x00", VALUE - 1000, b"\x30\x00\x83",
                                         key)
    hello = messages.client_version(2, DEFAULT_TIME_WINDOW, None)
    return {
        "UPDATE_PAYMENT first": (None, [payment]),
        "PROVIDE_CONTRACT first": (None, [contract]),
        "PROVIDE_REFUND first": (None, [messages.provide_refund(key, b"\x00")]),
        "CLOSE first": (None, [messages.close()]),
        "PAYMENT_ACK first": (None, [messages.payment_ack()]),
        "UPDATE_PAYMENT before contract v2": (2, [payment]),
        "UPDATE_PAYMENT before contract v3": (3, [payment]),
        "UPDATE_PAYMENT before refund v1": (1, [payment]),
        "second CLIENT_VERSION v1": (1, [hello]),
        "second CLIENT_VERSION v3": (3, [hello]),
        "PROVIDE_CONTRACT before refund v1": (1, [contract]),
        "PROVIDE_REFUND in v2": (2, [messages.provide_refund(key, b"\x00")]),
        "CLOSE before contract": (3, [messages.close()]),
        "CHANNEL_OPEN from client": (3, [messages.channel_open()]),
        "SERVER_VERSION from client": (2, [messages.server_version(2)]),
        "INITIATE from client": (2, [messages.initiate(key, 1, NOW, 1)]),
        "RETURN_REFUND from client": (1, [messages.return_refund(b"\x30")]),
    }


@pytest.mark.parametrize("case", list(_unexpected_messages()))
def test_message_out_of_order_is_a_syntax_error(case: str) -> None:
    version, bad = _unexpected_messages()[case]
    if version is None:
        server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW)
    else:
        server = start(version).server
    *before, last = bad
    for message in before:
        server.receive(wire(message))
    assert_refused(server, server.receive(wire(last)), ErrorCode.SYNTAX_ERROR)


@pytest.mark.parametrize("version", VERSIONS)
def test_second_contract_on_an_open_channel_is_a_syntax_error(version: int) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    again = messages.provide_contract(record.contract_tx, record.change, record.signature,
                                      record.contract.client_pub)
    assert_refused(pump.server, pump.server.receive(wire(again)), ErrorCode.SYNTAX_ERROR)
    again_hello = messages.client_version(version, DEFAULT_TIME_WINDOW, None)
    pump = opened(version)
    assert_refused(pump.server, pump.server.receive(wire(again_hello)), ErrorCode.SYNTAX_ERROR)


def test_previous_contract_hash_of_wrong_length_is_a_syntax_error() -> None:
    server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW)
    hello = messages.client_version(2, DEFAULT_TIME_WINDOW, None)
    hello.client_version.previous_channel_contract_hash = bytes(31)
    assert_refused(server, server.receive(wire(hello)), ErrorCode.SYNTAX_ERROR)


@pytest.mark.parametrize("state", ["fresh", "waiting", "open"])
@pytest.mark.parametrize("code", [ErrorCode.TIMEOUT, ErrorCode.OTHER,
                                  ErrorCode.CHANNEL_VALUE_TOO_LARGE])
def test_error_from_the_client(state: str, code: ErrorCode) -> None:
    if state == "fresh":
        server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW)
    elif state == "waiting":
        server = start(3).server
    else:
        server = opened(2).server
    effects = server.receive(wire(messages.error(code, "bye")))
    assert types(effects) == [PeerError, Disconnect]
    peer, disconnect = effects
    assert isinstance(peer, PeerError) and isinstance(disconnect, Disconnect)
    assert peer.code is code and peer.remote is True and peer.explanation == "bye"
    assert disconnect.code is None  # we did not refuse anything: nothing is sent back
    assert server.state is ServerState.CLOSED
    assert server.receive(wire(messages.close())) == []


# -- PROVIDE_REFUND (version 1) ----------------------------------------------------------------


def test_v1_good_refund_is_signed_none_anyonecanpay() -> None:
    session = start(1)
    tx = session.contract_tx()
    refund = session.refund(tx)
    effects = session.provide_refund(refund)
    assert types(effects) == [Send]
    (answer,) = sent(effects)
    assert answer.type == T.RETURN_REFUND
    session.contract(tx).check_server_refund_signature(refund, answer.return_refund.signature)
    assert session.server.state is ServerState.WAITING_FOR_CONTRACT


def _bad_refunds(session: Session, tx: Transaction) -> dict[str, Transaction]:
    good = session.refund(tx)
    txin = good.inputs[0]
    other = TxIn(OutPoint(bytes(32), 0), b"", txin.sequence)
    return {
        "2 inputs": dataclasses.replace(good, inputs=(txin, other)),
        "2 outputs": dataclasses.replace(good, outputs=good.outputs * 2),
        "spends output 1": good.with_input(0, dataclasses.replace(
            txin, prevout=OutPoint(txin.prevout.txid, 1))),
        "final sequence": good.with_input(0, dataclasses.replace(txin, sequence=FINAL)),
        "lock time before expiry": dataclasses.replace(good, locktime=session.expiry - 1),
        "lock time 0": dataclasses.replace(good, locktime=0),
    }


@pytest.mark.parametrize("case", ["2 inputs", "2 outputs", "spends output 1", "final sequence",
                                  "lock time before expiry", "lock time 0"])
def test_v1_bad_refund_is_refused(case: str) -> None:
    session = start(1)
    refund = _bad_refunds(session, session.contract_tx())[case]
    assert_refused(session.server, session.provide_refund(refund), ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("raw", [b"", b"\x01\x00\x00\x00", bytes(10)])
def test_v1_malformed_refund_is_refused(raw: bytes) -> None:
    session = start(1)
    effects = session.server.receive(wire(messages.provide_refund(session.client.pub.data, raw)))
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("key", [
    b"\x04" + bytes(64),  # uncompressed form (and not a point)
    b"\x05" + bytes(32),
    b"\x02" + b"\xff" * 32,  # x beyond the field
    b"",
])
def test_v1_non_canonical_multisig_key_is_refused(key: bytes) -> None:
    session = start(1)
    effects = session.provide_refund(session.refund(session.contract_tx()), key=key)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


def test_v1_uncompressed_client_key_is_refused() -> None:
    session = start(1)
    uncompressed = coincurve.PrivateKey(session.client.secret).public_key.format(compressed=False)
    effects = session.provide_refund(session.refund(session.contract_tx()), key=uncompressed)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


def test_v1_contract_other_than_the_refunded_one_is_refused() -> None:
    session = start(1)
    signed_for = session.contract_tx()
    assert types(session.provide_refund(session.refund(signed_for))) == [Send]
    other = session.contract_tx()  # same script and value, another txid
    assert other.txid != signed_for.txid
    effects = session.provide_contract(other)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)
    assert session.server.record is None


# -- PROVIDE_CONTRACT --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_good_contract_opens_in_order(version: int) -> None:
    session = start(version)
    tx = session.contract_tx()
    effects = session.provide_contract(tx)
    assert types(effects) == [StoreChannel, Broadcast, ClaimChannel, PaymentReceived, Send,
                              ChannelOpened]
    store, broadcast, claim, received, send, opened_ = effects
    assert isinstance(store, StoreChannel) and isinstance(broadcast, Broadcast)
    assert isinstance(claim, ClaimChannel) and isinstance(received, PaymentReceived)
    assert isinstance(send, Send) and isinstance(opened_, ChannelOpened)
    # Store before broadcast before telling the client the channel is open.
    assert effects.index(store) < effects.index(broadcast) < effects.index(send)
    assert send.message.type == T.CHANNEL_OPEN
    record = store.record
    assert record.role is Role.SERVER and record.status is ChannelStatus.OPEN
    assert record.contract_txid == tx.txid_hex
    assert record.contract_tx == tx.serialize()
    assert record.change == VALUE - MIN_PAYMENT and record.payments == 1
    assert record.contract.expiry == session.expiry
    assert record.contract.client_pub == session.client.pub.data
    assert broadcast.tx == tx and broadcast.purpose is Purpose.CONTRACT
    assert broadcast.contract_txid == claim.contract_txid == tx.txid_hex
    assert received.amount == MIN_PAYMENT
    assert opened_.resumed is False
    assert session.server.state is ServerState.OPEN
    assert session.server.record == record


def checked(session: Session, tx: Transaction) -> list[Effect]:
    """PROVIDE_CONTRACT up to the node check: the only effect is CheckContract."""
    change = tx.outputs[0].value - MIN_PAYMENT
    signature = session.contract(tx).sign_payment(session.client, change)
    key = session.client.pub.data if session.version >= 2 else None
    if session.version == 1:
        session.provide_refund(session.refund(tx))
    return session.server.receive(wire(messages.provide_contract(tx.serialize(), change,
                                                                 signature, key)))


@pytest.mark.parametrize("version", VERSIONS)
def test_nothing_is_stored_before_the_node_would_take_the_contract(version: int) -> None:
    session = start(version)
    tx = session.contract_tx()
    effects = checked(session, tx)
    assert types(effects) == [CheckContract]
    assert isinstance(effects[0], CheckContract) and effects[0].tx == tx
    assert session.server.state is ServerState.CHECKING_CONTRACT
    assert types(session.server.contract_checked(None))[:2] == [StoreChannel, Broadcast]
    assert state_of(session.server) is ServerState.OPEN


@pytest.mark.parametrize("version", VERSIONS)
def test_a_contract_the_node_refuses_leaves_nothing_and_is_a_bad_transaction(
        version: int) -> None:
    session = start(version)
    checked(session, session.contract_tx())
    effects = session.server.contract_checked("missing-inputs")
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)
    assert not [e for e in effects if isinstance(e, StoreChannel | Broadcast | ChannelOpened)]
    assert "missing-inputs" in sent(effects)[0].error.explanation
    assert session.server.record is None


def test_an_unreachable_node_is_a_retryable_error_and_nothing_is_stored() -> None:
    session = start(3)
    checked(session, session.contract_tx())
    effects = session.server.contract_checked("bitcoind does not answer", retryable=True)
    assert_refused(session.server, effects, ErrorCode.OTHER)
    assert not [e for e in effects if isinstance(e, StoreChannel | Broadcast | ChannelOpened)]
    explanation = sent(effects)[0].error.explanation
    assert "unavailable" in explanation and "retry later" in explanation


def test_contract_checked_is_refused_unless_the_node_was_asked() -> None:
    session = start(2)
    with pytest.raises(LocalProtocolError, match="cannot contract checked while"):
        session.server.contract_checked(None)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("raw", [b"", b"\x02\x00\x00\x00", bytes(10), b"\xff" * 40])
def test_malformed_contract_tx(version: int, raw: bytes) -> None:
    session = start(version)
    if version == 1:
        session.provide_refund(session.refund(session.contract_tx()))
    effects = session.provide_contract(raw, VALUE - MIN_PAYMENT, b"\x30\x00\x83")
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("version", VERSIONS)
def test_contract_tx_with_trailing_bytes(version: int) -> None:
    session = start(version)
    tx = session.contract_tx()
    if version == 1:
        session.provide_refund(session.refund(tx))
    signature = session.contract(tx).sign_payment(session.client, VALUE - MIN_PAYMENT)
    effects = session.provide_contract(tx.serialize() + b"\x00", VALUE - MIN_PAYMENT, signature)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


def _wrong_scripts(session: Session) -> dict[str, bytes]:
    client, server, expiry = session.client.pub.data, session.server_pub, session.expiry
    v = session.version
    other = PrivateKey.generate().pub.data
    cases = {
        "wrong server key": output_script(v, client, other, expiry),
        "wrong client key": output_script(v, other, server, expiry),
        "keys swapped": output_script(v, server, client, expiry),
        "P2PKH": b"\x76\xa9\x14" + bytes(20) + b"\x88\xac",
    }
    if v != 1:
        cases["expiry + 1"] = output_script(v, client, server, expiry + 1)
        cases["expiry - 1"] = output_script(v, client, server, expiry - 1)
    for w in VERSIONS:
        if w != v:
            cases[f"version {w} script"] = output_script(w, client, server, expiry)
    return cases


WRONG_SCRIPT_CASES = [(v, c) for v in VERSIONS for c in _wrong_scripts(start(v))]


@pytest.mark.parametrize(("version", "case"), WRONG_SCRIPT_CASES)
def test_contract_output_0_not_the_channel_script(version: int, case: str) -> None:
    session = start(version)
    tx = session.contract_tx(script=_wrong_scripts(session)[case])
    effects = session.provide_contract(tx)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)
    assert session.server.record is None


@pytest.mark.parametrize("version", [2, 3])
def test_client_key_differs_from_the_script(version: int) -> None:
    session = start(version)
    tx = session.contract_tx()
    effects = session.provide_contract(tx, client_key=PrivateKey.generate().pub.data)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("version", VERSIONS)
def test_channel_value_below_the_minimum(version: int) -> None:
    minimum = 2 * VALUE
    session = start(version, ServerPolicy(min_channel_size=minimum))
    effects = session.provide_contract(session.contract_tx(VALUE))
    assert_refused(session.server, effects, ErrorCode.CHANNEL_VALUE_TOO_LARGE, minimum)


@pytest.mark.parametrize("version", VERSIONS)
def test_channel_value_at_the_minimum_is_accepted(version: int) -> None:
    session = start(version, ServerPolicy(min_channel_size=VALUE))
    effects = session.provide_contract(session.contract_tx(VALUE))
    assert StoreChannel in types(effects)
    assert session.server.state is ServerState.OPEN


@pytest.mark.parametrize("version", VERSIONS)
def test_non_segwit_funding(version: int) -> None:
    pump = Pump(ClientChannel(ClientPolicy(VALUE), PrivateKey.generate(), NOW, version),
                ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW), segwit_funding=False)
    pump.run(pump.client.start())
    if version == 3:
        assert pump.server.state is ServerState.CLOSED
        errors = [e for e in pump.server_log if isinstance(e, PeerError)]
        assert [(e.code, e.remote) for e in errors] == [(ErrorCode.BAD_TRANSACTION, False)]
        assert not [e for e in pump.server_log if isinstance(e, StoreChannel | Broadcast)]
        assert pump.server_store == {}
    else:
        assert pump.server.state is ServerState.OPEN
        assert len(pump.server_store) == 1


def test_v3_wrapped_or_mixed_segwit_funding_is_refused() -> None:
    for make in (
        lambda txin: (dataclasses.replace(txin, script_sig=b"\x16" + bytes(22)),),  # P2SH-P2WPKH
        lambda txin: (txin, dataclasses.replace(txin, witness=(), script_sig=bytes(106))),
    ):
        session = start(3)
        tx = session.contract_tx()
        tx = dataclasses.replace(tx, inputs=make(tx.inputs[0]))
        assert_refused(session.server, session.provide_contract(tx), ErrorCode.BAD_TRANSACTION)


def test_v2_policy_may_require_segwit_too() -> None:
    session = start(2, ServerPolicy(require_segwit_funding=True))
    effects = session.provide_contract(session.contract_tx(segwit=False))
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("paid", [1, MIN_PAYMENT - 1])
def test_initial_payment_below_the_minimum(version: int, paid: int) -> None:
    session = start(version)
    effects = session.provide_contract(session.contract_tx(), change=VALUE - paid)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("version", VERSIONS)
def test_initial_payment_of_nothing(version: int) -> None:
    session = start(version)
    effects = session.provide_contract(session.contract_tx(), change=VALUE)
    assert_refused(session.server, effects, ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("version", VERSIONS)
def test_initial_payment_with_a_bad_signature(version: int) -> None:
    session = start(version)
    tx = session.contract_tx()
    change = VALUE - MIN_PAYMENT
    wrong = session.contract(tx).sign_payment(PrivateKey.generate(), change)
    assert_refused(session.server, session.provide_contract(tx, change, wrong),
                   ErrorCode.BAD_TRANSACTION)


@pytest.mark.parametrize("version", [2, 3])
def test_contract_without_client_key(version: int) -> None:
    session = start(version)
    effects = session.provide_contract(session.contract_tx(), omit_client_key=True)
    assert_refused(session.server, effects, ErrorCode.SYNTAX_ERROR)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("key", [
    b"\x04" + bytes(64),
    b"\x05" + bytes(32),
    b"\x02" + b"\xff" * 32,
    b"\x02" + bytes(31),
    b"",
])
def test_non_canonical_client_key(version: int, key: bytes) -> None:
    session = start(version)
    assert_refused(session.server, session.provide_contract(session.contract_tx(),
                                                            client_key=key),
                   ErrorCode.BAD_TRANSACTION)


# -- UPDATE_PAYMENT ----------------------------------------------------------------------------


def _bad_updates(pump: Pump) -> dict[str, tuple[int, bytes]]:
    record = pump.server.record
    assert record is not None
    contract, key = record.contract, pump.client.key
    change = record.change - 10_000
    good = contract.sign_payment(key, change)
    der, hashtype = split_sig_hashtype(good)

    def signed(tx_change: int, hashtype: int) -> bytes:
        tx = contract.payment_tx(tx_change)
        return key.sign(contract.sighash(tx, hashtype)) + bytes((hashtype,))

    return {
        "tampered signature": (change, der[:-1] + bytes((der[-1] ^ 1, hashtype))),
        "garbage signature": (change, b"\x30\x06\x02\x01\x01\x02\x01\x01\x83"),
        "empty signature": (change, b""),
        "signature for another change": (change, contract.sign_payment(key, change - 1)),
        "wrong key": (change, contract.sign_payment(PrivateKey.generate(), change)),
        "server's key": (change, contract.sign_payment(record.key, change)),
        "SIGHASH_ALL": (change, signed(change, SIGHASH_ALL)),
        "SINGLE without ANYONECANPAY": (change, signed(change, SIGHASH_SINGLE)),
        "SINGLE|ANYONECANPAY with change 0": (0, signed(0, SIGHASH_SINGLE | SIGHASH_ANYONECANPAY)),
        "high S": (change, high_s(good)),
        "dust change": (DUST - 1, contract.sign_payment(key, DUST - 1)),
        "change of 1": (1, contract.sign_payment(key, 1)),
        "increasing change": (record.change + 1000, contract.sign_payment(key,
                                                                          record.change + 1000)),
        "change above value": (VALUE + 1, contract.sign_payment(key, VALUE + 1)),
        "same change, other bad signature": (record.change, high_s(record.signature)),
    }


BAD_UPDATE_CASES = list(_bad_updates(opened(3)))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", BAD_UPDATE_CASES)
def test_bad_payment_is_refused_and_nothing_changes(version: int, case: str) -> None:
    pump = opened(version)
    pump.run(pump.client.pay(20_000))  # one accepted update, so the record is not the initial
    before = pump.server.record
    stored = dict(pump.server_store)
    change, signature = _bad_updates(pump)[case]
    effects = pump.server.receive(wire(messages.update_payment(change, signature)))
    apply(pump.server_store, effects)
    assert_refused(pump.server, effects, ErrorCode.BAD_TRANSACTION)
    assert pump.server.record is before
    assert pump.server_store == stored


def _bad_schnorr_updates(pump: Pump) -> dict[str, tuple[int, bytes]]:
    """Version 4's payments are BIP340 signatures on the payment leaf: what else a hostile
    client may send."""
    record = pump.server.record
    assert record is not None
    contract, key = record.contract, pump.client.key
    change = record.change - 10_000
    good = contract.sign_payment(key, change)
    tx, hashtype = contract.payment_tx(change), good[64]
    all_acp = SIGHASH_ALL | SIGHASH_ANYONECANPAY

    def schnorr(digest: bytes, byte: int | None = hashtype) -> bytes:
        return key.sign_schnorr(digest) + (bytes((byte,)) if byte is not None else b"")

    return {
        "tampered Schnorr signature": (change, good[:10] + bytes((good[10] ^ 1,)) + good[11:]),
        "Schnorr signature without its hashtype": (change, good[:64]),
        "explicit SIGHASH_DEFAULT byte": (change, good[:64] + b"\x00"),
        "wrong hash type (ALL|ANYONECANPAY)": (change, schnorr(
            contract.sighash(tx, all_acp), all_acp)),
        "wrong leaf (the refund leaf's message)": (change, schnorr(
            contract.sighash(tx, hashtype, Branch.REFUND))),
        "key path's message": (change, schnorr(contract.sighash(tx, hashtype, Branch.KEY_PATH))),
        "ECDSA signature": (change, key.sign(contract.payment_sighash(change)) + b"\x83"),
        "server's Schnorr signature": (change, contract.sign_payment(record.key, change)),
    }


@pytest.mark.parametrize("case", list(_bad_schnorr_updates(opened(4))))
def test_a_bad_schnorr_payment_is_refused_and_nothing_is_stored(case: str) -> None:
    pump = opened(4)
    pump.run(pump.client.pay(20_000))
    before, stored = pump.server.record, dict(pump.server_store)
    change, signature = _bad_schnorr_updates(pump)[case]
    effects = pump.server.receive(wire(messages.update_payment(change, signature)))
    apply(pump.server_store, effects)
    assert_refused(pump.server, effects, ErrorCode.BAD_TRANSACTION)
    assert pump.server.record is before and pump.server_store == stored


def answered(server: ServerChannel, effects: list[Effect], info: bytes = b"") -> list[Effect]:
    """`effects` with each PaymentReceived answered in place, as the adapters do."""
    return [out for e in effects for out in (
        [e, *server.payment_answered(e, info)] if isinstance(e, PaymentReceived) else [e])]


@pytest.mark.parametrize("version", VERSIONS)
def test_good_payment_is_stored_before_it_is_acknowledged(version: int) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    change = record.change - 5_000
    signature = record.contract.sign_payment(pump.client.key, change)
    effects = pump.server.receive(wire(messages.update_payment(change, signature, b"order 7")))
    assert types(effects) == [StorePayment, PaymentReceived]  # the ack awaits the answer
    store, received = effects
    assert isinstance(store, StorePayment) and isinstance(received, PaymentReceived)
    (ack,) = pump.server.payment_answered(received, b"thanks")  # the application's info
    assert isinstance(ack, Send) and ack.message.type == T.PAYMENT_ACK
    assert ack.message.payment_ack.info == b"thanks"
    assert pump.server.payment_answered(received, b"again") == []  # one ack per payment
    assert store.record.change == change and store.record.signature == signature
    assert store.record.payments == record.payments + 1
    assert (store.amount, store.info) == (5_000, b"order 7")
    assert (received.amount, received.info) == (5_000, b"order 7")
    assert pump.server.record == store.record
    assert pump.server.state is ServerState.OPEN


@pytest.mark.parametrize("version", VERSIONS)
def test_increments_below_the_minimum_payment_are_accepted(version: int) -> None:
    """min_payment bounds the initial payment only (bitcoinj's meaning): a bitcoinj client
    may pay in 100-sat steps after it."""
    pump = opened(version)
    for _ in range(3):
        pump.run(pump.client.pay(100))
    assert pump.server_store[pump.client.record.contract_txid].change == (  # type: ignore
        VALUE - MIN_PAYMENT - 300)
    assert not [e for e in pump.server_log if isinstance(e, PeerError)]


@pytest.mark.parametrize("version", VERSIONS)
def test_an_increment_below_the_optional_min_increment_is_refused(version: int) -> None:
    pump = opened(version)
    pump.server.policy = ServerPolicy(min_payment=MIN_PAYMENT, min_increment=500)
    record = pump.server.record
    assert record is not None
    change = record.change - 499
    effects = pump.server.receive(wire(messages.update_payment(
        change, record.contract.sign_payment(pump.client.key, change))))
    assert_refused(pump.server, effects, ErrorCode.BAD_TRANSACTION)
    assert "minimum increment 500" in sent(effects)[0].error.explanation


@pytest.mark.parametrize("version", VERSIONS)
def test_payment_of_exactly_the_minimum(version: int) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    change = record.change - MIN_PAYMENT
    effects = pump.server.receive(wire(messages.update_payment(
        change, record.contract.sign_payment(pump.client.key, change))))
    assert StorePayment in types(effects)


@pytest.mark.parametrize("version", VERSIONS)
def test_resent_payment_is_acknowledged_but_not_counted(version: int) -> None:
    pump = opened(version)
    pump.run(pump.client.pay(7_000))
    record = pump.server.record
    assert record is not None
    effects = pump.server.receive(wire(messages.update_payment(record.change, record.signature)))
    assert types(effects) == [Send]
    assert sent(effects)[0].type == T.PAYMENT_ACK
    assert pump.server.record is record
    assert pump.server.state is ServerState.OPEN


@pytest.mark.parametrize("version", VERSIONS)
def test_exhausting_payment_asks_for_settlement(version: int) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    effects = pump.server.receive(wire(messages.update_payment(
        0, record.contract.sign_payment(pump.client.key, 0))))
    effects = answered(pump.server, effects)
    assert types(effects) == [StorePayment, PaymentReceived, Send, PrepareSettlement]
    assert pump.server.state is ServerState.SETTLING
    assert isinstance(effects[0], StorePayment) and effects[0].amount == record.change
    settled = pump.server.settle(FEE_RATE, PAYOUT)
    assert types(settled) == [StoreChannel, Broadcast, Send, ChannelClosed, Disconnect]
    store, broadcast, send = settled[0], settled[1], settled[2]
    assert isinstance(store, StoreChannel) and isinstance(broadcast, Broadcast)
    assert isinstance(send, Send)
    assert store.record.status is ChannelStatus.CLOSING
    assert store.record.settlement_tx == broadcast.tx.serialize() == send.message.settlement.tx
    assert broadcast.purpose is Purpose.SETTLEMENT
    assert [o.script_pubkey for o in broadcast.tx.outputs] == [PAYOUT]
    assert state_of(pump.server) is ServerState.CLOSED


def test_close_asks_for_settlement_then_settles() -> None:
    pump = opened(3)
    record = pump.server.record
    assert record is not None
    effects = pump.server.receive(wire(messages.close()))
    assert effects == [PrepareSettlement(record.contract_txid)]
    assert pump.server.state is ServerState.SETTLING
    settled = pump.server.settle(FEE_RATE, PAYOUT)
    assert isinstance(settled[0], StoreChannel) and isinstance(settled[1], Broadcast)
    tx = settled[1].tx
    assert tx.outputs[0].value == record.change
    assert tx.outputs[0].script_pubkey == record.contract.change_script


def test_settle_without_a_channel_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        start(3).server.settle(FEE_RATE, PAYOUT)


# -- resuming ----------------------------------------------------------------------------------


def _resume(pump: Pump, version: int) -> tuple[ServerChannel, list[Effect]]:
    record = pump.server.record
    assert record is not None
    server = ServerChannel(ServerPolicy(min_payment=MIN_PAYMENT), PrivateKey.generate(), NOW + 60)
    effects = server.receive(wire(messages.client_version(version, DEFAULT_TIME_WINDOW,
                                                          record.contract_txid)))
    return server, effects


def _proof(server: ServerChannel, key: PrivateKey, txid: str) -> bytes:
    return key.sign(resume_digest(server.challenge, txid)) if server.challenge else b""


@pytest.mark.parametrize("version", VERSIONS)
def test_resume_a_stored_open_channel(version: int) -> None:
    pump = opened(version)
    pump.run(pump.client.pay(3_000))
    record = pump.server_store[pump.client.record.contract_txid]  # type: ignore[union-attr]
    server, effects = _resume(pump, version)
    assert effects == [LoadChannel(record.contract_txid)]
    assert server.state is ServerState.LOADING_CHANNEL
    loaded = server.channel_loaded(record)
    # No ClaimChannel yet: the connection has not proved it holds the client's key.
    assert types(loaded) == [Send, Send]
    hello, open_ = sent(loaded)
    assert hello.type == T.SERVER_VERSION and hello.server_version.major == version
    assert hello.server_version.HasField("resume_challenge") == (version >= 3)
    assert open_.type == T.CHANNEL_OPEN
    assert state_of(server) is ServerState.RESUMED and server.record == record
    # The first payment proves it, then payments continue on the stored record.
    change = record.change - 2_000
    paid = server.receive(wire(messages.update_payment(
        change, record.contract.sign_payment(pump.client.key, change),
        resume_proof=_proof(server, pump.client.key, record.contract_txid))))
    paid = answered(server, paid)
    assert types(paid) == [ClaimChannel, ChannelOpened, StorePayment, PaymentReceived, Send]
    claim, opened_ = paid[:2]
    assert claim == ClaimChannel(record.contract_txid)
    assert isinstance(opened_, ChannelOpened) and opened_.resumed
    assert state_of(server) is ServerState.OPEN


@pytest.mark.parametrize("version", VERSIONS)
def test_a_resume_repeating_the_last_payment_proves_the_key(version: int) -> None:
    pump = opened(version)
    record = pump.server_store[pump.client.record.contract_txid]  # type: ignore[union-attr]
    server, _ = _resume(pump, version)
    server.channel_loaded(record)
    repeat = server.receive(wire(messages.update_payment(
        record.change, record.signature,
        resume_proof=_proof(server, pump.client.key, record.contract_txid))))
    assert types(repeat) == [ClaimChannel, ChannelOpened, Send]
    assert sent(repeat)[0].type == T.PAYMENT_ACK


@pytest.mark.parametrize("version", VERSIONS)
def test_a_stranger_resuming_with_the_public_txid_cannot_close_nor_claim(version: int) -> None:
    pump = opened(version)
    record = pump.server_store[pump.client.record.contract_txid]  # type: ignore[union-attr]
    stranger = PrivateKey.generate()
    attempts = {
        "close": messages.close(),
        "own signature": messages.update_payment(
            record.change - 1_000, record.contract.sign_payment(stranger, record.change - 1_000)),
    }
    if version >= 3:  # the victim's last signature is not enough without the challenge
        attempts["replayed payment, no proof"] = messages.update_payment(record.change,
                                                                         record.signature)
        attempts["proof by another key"] = messages.update_payment(
            record.change, record.signature, resume_proof=stranger.sign(bytes(32)))
    for name, attempt in attempts.items():
        server, _ = _resume(pump, version)
        server.channel_loaded(record)
        effects = server.receive(wire(attempt))
        assert not [e for e in effects if isinstance(e, ClaimChannel | PrepareSettlement
                                                     | StorePayment)], name
        assert server.state is ServerState.CLOSED, name
        assert sent(effects)[0].type == T.ERROR, name


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("which", ["unknown", "closing", "settled", "refunded", "other version"])
def test_resume_of_nothing_to_resume_starts_afresh(version: int, which: str) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    loaded_record: ChannelRecord | None
    if which == "unknown":
        loaded_record = None
    elif which == "other version":
        loaded_record = record
    else:
        loaded_record = dataclasses.replace(record, status=ChannelStatus(which))
    asked = version % 3 + 1 if which == "other version" else version
    server, effects = _resume(pump, asked)
    assert types(effects) == [LoadChannel]
    loaded = server.channel_loaded(loaded_record)
    assert [m.type for m in sent(loaded)] == [T.SERVER_VERSION, T.INITIATE]
    assert types(loaded) == [Send, Send]
    assert sent(loaded)[0].server_version.major == asked
    assert sent(loaded)[1].initiate.multisig_key == server.key.pub.data
    assert server.record is None
    expected = (ServerState.WAITING_FOR_REFUND if asked == 1
                else ServerState.WAITING_FOR_CONTRACT)
    assert server.state is expected


def test_message_while_loading_is_a_syntax_error() -> None:
    pump = opened(2)
    server, _ = _resume(pump, 2)
    assert_refused(server, server.receive(wire(messages.close())), ErrorCode.SYNTAX_ERROR)


def test_channel_loaded_when_not_loading_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        start(2).server.channel_loaded(None)


def test_a_resume_inside_the_policy_settle_margin_settles_and_outside_it_resumes() -> None:
    pump = opened(3)
    record = pump.server_store[pump.client.record.contract_txid]  # type: ignore[union-attr]
    wide = ServerPolicy(min_payment=MIN_PAYMENT, settle_margin=3 * 3600)
    for policy, state in ((wide, ServerState.SETTLING),
                          (ServerPolicy(min_payment=MIN_PAYMENT), ServerState.RESUMED)):
        server = ServerChannel(policy, PrivateKey.generate(),
                               record.contract.expiry - 3 * 3600 + 60)
        server.receive(wire(messages.client_version(3, DEFAULT_TIME_WINDOW,
                                                    record.contract_txid)))
        server.channel_loaded(record)
        assert state_of(server) is state


def test_the_settle_margin_is_at_least_two_hours_and_below_the_least_window() -> None:
    with pytest.raises(PolicyError, match=r"settle_margin.*≥ 7200"):
        ServerPolicy(settle_margin=SETTLEMENT_MARGIN - 1)
    with pytest.raises(PolicyError, match=r"min_time_window.*more than 14400 s"):
        ServerPolicy(settle_margin=4 * 3600)


@pytest.mark.parametrize("version", VERSIONS)
def test_resume_close_to_the_expiry_settles_instead(version: int) -> None:
    pump = opened(version)
    pump.run(pump.client.pay(10_000))
    record = pump.server_store[pump.client.record.contract_txid]  # type: ignore[union-attr]
    late = record.contract.expiry - SETTLEMENT_MARGIN
    server = ServerChannel(ServerPolicy(min_payment=MIN_PAYMENT), PrivateKey.generate(), late)
    server.receive(wire(messages.client_version(version, DEFAULT_TIME_WINDOW,
                                                record.contract_txid)))
    loaded = server.channel_loaded(record)
    # No ClaimChannel: the settlement claims the settling duty, then takes the lease itself
    # (a resume that finds the duty taken fences nobody).
    assert types(loaded) == [Send, PrepareSettlement]
    assert T.CHANNEL_OPEN not in [m.type for m in sent(loaded)]
    assert state_of(server) is ServerState.SETTLING
    closing = server.settle(FEE_RATE, PAYOUT)
    assert [m.type for m in sent(closing)] == [T.CLOSE]


@pytest.mark.parametrize("version", VERSIONS)
def test_initial_payment_of_everything_settles_at_once(version: int) -> None:
    session = start(version)
    tx = session.contract_tx()
    effects = session.provide_contract(tx, change=0)
    assert types(effects)[-1] is PrepareSettlement
    assert T.CHANNEL_OPEN in [m.type for m in sent(effects)]
    assert state_of(session.server) is ServerState.SETTLING


# -- pipelined payments ------------------------------------------------------------------------


def _updates(pump: Pump, amounts: list[int], bad: tuple[int, ...] = ()) -> list[T]:
    """UPDATE_PAYMENTs paying `amounts` in turn; those at the indexes `bad` signed by a
    stranger's key (valid in every other way)."""
    record = pump.server.record
    assert record is not None
    updates, change = [], record.change
    for index, amount in enumerate(amounts):
        change -= amount
        key = PrivateKey.generate() if index in bad else pump.client.key
        updates.append(wire(messages.update_payment(
            change, record.contract.sign_payment(key, change), b"%d" % index)))
    return updates


@pytest.mark.parametrize("version", VERSIONS)
def test_pipelined_payments_are_each_checked_and_stored_and_acknowledged_in_order(
        version: int) -> None:
    pump = opened(version)
    before = pump.server.record
    assert before is not None
    updates = _updates(pump, [1_000, 2_000, 3_000, 4_000])
    effects, taken = pump.server.receive_pipelined(updates)
    effects = answered(pump.server, effects)
    assert taken == 4
    assert types(effects) == [StorePayment, PaymentReceived, Send] * 4
    stores = [e for e in effects if isinstance(e, StorePayment)]
    assert [(s.amount, s.info, s.record.payments) for s in stores] == [
        (1_000, b"0", before.payments + 1), (2_000, b"1", before.payments + 2),
        (3_000, b"2", before.payments + 3), (4_000, b"3", before.payments + 4)]
    assert pump.server.record == stores[-1].record
    assert pump.server.record.change == before.change - 10_000
    assert pump.server.state is ServerState.OPEN


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("bad", [(0,), (1,), (3,), (1, 3)],
                         ids=["first", "second", "last", "second and last"])
def test_a_pipelined_batch_is_accepted_up_to_its_first_bad_signature(
        version: int, bad: tuple[int, ...]) -> None:
    """Every signature of a pipelined batch is verified: a bad one is never acknowledged,
    even when a later payment of the same batch is signed correctly."""
    pump = opened(version)
    before = pump.server.record
    assert before is not None
    updates = _updates(pump, [1_000, 1_000, 1_000, 1_000], bad=bad)
    effects, taken = pump.server.receive_pipelined(updates)
    effects = answered(pump.server, effects)
    good = bad[0]  # accepted before the first bad one, each verified
    assert taken == good + 1
    assert types(effects)[:3 * good] == [StorePayment, PaymentReceived, Send] * good
    assert_refused(pump.server, effects[3 * good:], ErrorCode.BAD_TRANSACTION)
    assert pump.server.record is not None
    assert pump.server.record.change == before.change - 1_000 * good


def test_pipelined_payments_are_answered_in_order() -> None:
    pump = opened(3)
    effects, _ = pump.server.receive_pipelined(_updates(pump, [1_000, 2_000]))
    first, second = (e for e in effects if isinstance(e, PaymentReceived))
    with pytest.raises(LocalProtocolError, match="answered before payment"):
        pump.server.payment_answered(second)
    assert types(pump.server.payment_answered(first) + pump.server.payment_answered(second)) == [
        Send, Send]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_pipelined_batch_stops_at_the_payment_that_exhausts_the_channel(version: int) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    updates = _updates(pump, [1_000, record.change - 1_000, 0])
    effects, taken = pump.server.receive_pipelined(updates)
    effects = answered(pump.server, effects)
    assert taken == 2  # the third waits, and is refused once its turn comes (SETTLING)
    assert types(effects) == [StorePayment, PaymentReceived, Send] * 2 + [PrepareSettlement]
    assert pump.server.state is ServerState.SETTLING


@pytest.mark.parametrize("version", VERSIONS)
def test_a_pipelined_batch_with_a_refused_payment_is_handled_one_by_one(version: int) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    updates = _updates(pump, [1_000, 1_000])
    updates.insert(1, wire(messages.update_payment(  # a second payment raising the change
        record.change + 1, record.contract.sign_payment(pump.client.key, record.change + 1))))
    effects, taken = pump.server.receive_pipelined(updates)
    effects = answered(pump.server, effects)
    assert taken == 2 and types(effects)[:3] == [StorePayment, PaymentReceived, Send]
    assert_refused(pump.server, effects[3:], ErrorCode.BAD_TRANSACTION)


# -- a settlement decided elsewhere ------------------------------------------------------------


def _settling(pump: Pump) -> ChannelRecord:
    """The pump's server channel as another connection stored it when it settled it."""
    other = ServerChannel.resumed_from(ServerPolicy(min_payment=MIN_PAYMENT),
                                       pump.server_store[pump.client.record.contract_txid],  # type: ignore[union-attr]
                                       NOW)
    stored = other.settle(FEE_RATE, PAYOUT)[0]
    assert isinstance(stored, StoreChannel) and stored.record.status is ChannelStatus.CLOSING
    return stored.record


@pytest.mark.parametrize("version", VERSIONS)
def test_a_resume_of_a_settling_channel_is_answered_with_its_settlement(version: int) -> None:
    """Not a fresh INITIATE: the client gets the one settlement (CLOSE), checks and stores it."""
    pump = opened(version)
    pump.run(pump.client.pay(10_000))
    closing = _settling(pump)
    client = ClientChannel.resuming(pump.client_store[closing.contract_txid],
                                    ClientPolicy(VALUE), NOW + 60)
    server = ServerChannel(ServerPolicy(min_payment=MIN_PAYMENT), PrivateKey.generate(), NOW + 60)
    resumed = Pump(client, server, server_store={closing.contract_txid: closing})
    resumed.run(client.start())
    loaded: list[Effect] = [e for e in resumed.server_log if not isinstance(e, LoadChannel)]
    assert [m.type for m in sent(loaded)] == [T.SERVER_VERSION, T.CLOSE]
    assert sent(loaded)[1].settlement.tx == closing.settlement_tx
    assert not [e for e in loaded if isinstance(e, ClaimChannel | StorePayment
                                                | PrepareSettlement)]
    assert state_of(server) is ServerState.CLOSED
    assert client.state is ClientState.CLOSED
    assert resumed.client_store[closing.contract_txid].settlement_tx == closing.settlement_tx


@pytest.mark.parametrize("version", VERSIONS)
def test_a_closing_channel_holding_a_refund_is_not_resumed_nor_answered_with_it(
        version: int) -> None:
    pump = opened(version)
    record = pump.server.record
    assert record is not None
    refund = Transaction(2, (TxIn(record.contract.outpoint, sequence=0),),
                         (), record.contract.expiry)
    refunding = dataclasses.replace(record, status=ChannelStatus.CLOSING,
                                    settlement_tx=refund.serialize())
    server, _ = _resume(pump, version)
    assert [m.type for m in sent(server.channel_loaded(refunding))] == [T.SERVER_VERSION,
                                                                         T.INITIATE]


@pytest.mark.parametrize("state", ["resumed", "open", "settling"])
def test_a_settlement_decided_meanwhile_is_sent_and_nothing_more_taken(state: str) -> None:
    """The service found the stored channel CLOSING after this connection loaded it (its
    lease's re-read, or a refused settling duty): the machine answers with that settlement."""
    pump = opened(3)
    record = pump.server_store[pump.client.record.contract_txid]  # type: ignore[union-attr]
    server = pump.server
    if state == "resumed":
        server, _ = _resume(pump, 3)
        server.channel_loaded(record)
    elif state == "settling":
        server.receive(wire(messages.close()))
    closing = _settling(pump)
    effects = server.settlement_decided(closing)
    assert types(effects) == [Send, Disconnect]
    assert sent(effects)[0].type == T.CLOSE
    assert sent(effects)[0].settlement.tx == closing.settlement_tx
    assert state_of(server) is ServerState.CLOSED and server.record == closing
    later = server.receive(wire(messages.update_payment(
        record.change - 1_000, record.contract.sign_payment(pump.client.key,
                                                            record.change - 1_000))))
    assert not [e for e in later if isinstance(e, StorePayment | Send)]  # closed: nothing


def test_a_settlement_decided_before_a_channel_is_loaded_is_a_local_error() -> None:
    pump = opened(3)
    closing = _settling(pump)
    server, _ = _resume(pump, 3)
    with pytest.raises(LocalProtocolError):
        server.settlement_decided(closing)


def test_a_settlement_decided_after_its_batch_closed_the_machine_is_still_sent() -> None:
    """A batch [good payment, bad signature] closed the machine; the good payment's write then
    met a settlement decided elsewhere, so the batch's effects (its ERROR among them) were
    dropped: the client gets the settlement, not an exception escaping the connection."""
    pump = opened(3)
    pump.server.receive_pipelined(_updates(pump, [1_000, 1_000], bad=(1,)))
    assert pump.server.state is ServerState.CLOSED
    closing = _settling(pump)
    effects = pump.server.settlement_decided(closing)
    assert types(effects) == [Send, Disconnect]
    assert sent(effects)[0].type == T.CLOSE
    assert sent(effects)[0].settlement.tx == closing.settlement_tx

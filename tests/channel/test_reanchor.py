"""Re-anchoring a live channel (issue 23, docs/design/reanchoring.md), machine level: the
exchange in order (nothing signed before the quote is checked; the client stores R before it
sends it; the server stores R before it broadcasts or sends it back), payments signed on both
contracts while R is pending, promotion, and every hostile or broken step: bad signatures, a
payout above what was acknowledged, a node refusing R (a top-up input spent elsewhere),
payments the old contract cannot cover, crashes and resumes at each step."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.sighash import SIGHASH_ANYONECANPAY, SIGHASH_DEFAULT
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut, serialize_outputs
from bitcoind_paychan.channel import messages, reanchor
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy, ClientState
from bitcoind_paychan.channel.contract import DUST
from bitcoind_paychan.channel.effects import (
    Broadcast,
    CheckReanchor,
    Effect,
    FundReanchor,
    PaymentReceived,
    PeerError,
    PrepareReanchor,
    Purpose,
    ReanchorEnded,
    ReanchorLocked,
    ReanchorOffered,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.fees import reanchor_fees, reanchor_rate_ceiling
from bitcoind_paychan.channel.reanchor_server import QUOTE_FRESH, QUOTES_KEPT
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy, ServerState
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError
from bitcoind_paychan.store import codec
from bitcoind_paychan.wire import decode_message, encode_message, pb
from regtest.chainrules import spend_problem
from tests.channel.pump import (
    FEE_RATE,
    PAYOUT,
    WALLET_COIN,
    Pump,
    reanchor_fee,
    reanchor_funding,
)

T = pb.TwoWayChannelMessage
NOW, VALUE, DAY = 1_700_000_000, 500_000, 24 * 3600
VERSIONS = (3, 4)  # the kinds with `capabilities.reanchoring`


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> int:
    """Each test taking `version` runs on every kind that re-anchors."""
    return int(request.param)


CLIENT, SERVER = ClientPolicy(VALUE, reanchoring=True), ServerPolicy(reanchoring=True)


def opened(version: int = 3, paid: int = 20_000, policy: ClientPolicy = CLIENT) -> Pump:
    client = ClientChannel(policy, PrivateKey.generate(), NOW, version)
    server = ServerChannel(SERVER, PrivateKey.generate(), NOW)
    pump = Pump(client, server)
    pump.run(client.start())
    assert client.reanchoring and server.reanchoring
    pump.run(client.pay(paid))
    assert client.state is ClientState.OPEN and server.state is ServerState.OPEN
    return pump


def wire(message: T) -> T:
    return decode_message(encode_message(message))


def sends(effects: list[Effect]) -> list[T]:
    return [wire(e.message) for e in effects if isinstance(e, Send)]


def rec(machine: ClientChannel | ServerChannel) -> ChannelRecord:
    assert machine.record is not None
    return machine.record


def renewed(pump: Pump, top_up: int = 0, window: int = 2 * DAY) -> Transaction:
    """Run a whole re-anchor; return R as the server completed it."""
    pump.run(pump.client.reanchor(top_up, window, NOW))
    pending = rec(pump.server).pending
    assert pending is not None and pending.complete
    return Transaction.parse(pending.tx)


def types(log: list[Effect]) -> list[str]:
    return [type(e).__name__ if not isinstance(e, Send) else
            T.MessageType.Name(e.message.type) for e in log]


# -- negotiation -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_bitcoinj_versions_never_negotiate_it_and_refuse_its_messages(version: int) -> None:
    client = ClientChannel(CLIENT, PrivateKey.generate(), NOW, version)
    server = ServerChannel(SERVER, PrivateKey.generate(), NOW)
    pump = Pump(client, server)
    pump.run(client.start())
    hello = pump.sent("client")[0].client_version
    assert not hello.HasField("reanchoring")
    assert not pump.sent("server")[0].server_version.HasField("reanchoring")
    with pytest.raises(LocalProtocolError, match="did not offer re-anchoring"):
        client.reanchor(0, DAY, NOW)
    with pytest.raises(LocalProtocolError, match="not negotiated"):
        server.quote_reanchor(FEE_RATE, PAYOUT, NOW)  # the application's wish: refused
    assert server.state.value == "open"
    effects = server.receive(wire(messages.reanchor_propose(0, DAY)))
    assert isinstance(effects[1], PeerError) and effects[1].code is ErrorCode.SYNTAX_ERROR
    assert server.state is ServerState.CLOSED


def test_version_4_negotiates_it_with_r_signed_over_every_input() -> None:
    """v4's cooperative close signs ALL|ANYONECANPAY, which on R would let a client add an
    input to a complete R and move C' to another txid. Its re-anchors are signed with
    SIGHASH_DEFAULT (every input and output): the kind says so, and both negotiate it."""
    client = ClientChannel(CLIENT, PrivateKey.generate(), NOW, 4)
    server = ServerChannel(SERVER, PrivateKey.generate(), NOW)
    pump = Pump(client, server)
    pump.run(client.start())
    assert client.state is ClientState.OPEN and client.reanchoring and server.reanchoring
    kind = rec(client).contract.kind
    assert kind.reanchor_hashtype == SIGHASH_DEFAULT and kind.reanchor_needs_spent
    assert kind.final_hashtype & SIGHASH_ANYONECANPAY  # the close's, never R's


def test_a_server_offers_it_only_to_a_client_that_asked() -> None:
    server = ServerChannel(SERVER, PrivateKey.generate(), NOW)
    (version, _) = sends(server.receive(wire(messages.client_version(3, DAY, None))))
    assert not version.server_version.reanchoring and not server.reanchoring


@pytest.mark.parametrize("version", VERSIONS)
def test_off_by_default_until_the_service_carries_it_out(version: int) -> None:
    client = ClientChannel(ClientPolicy(VALUE), PrivateKey.generate(), NOW, version)
    server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW)
    (hello,) = sends(client.start())
    assert not hello.client_version.reanchoring
    asked = wire(messages.client_version(version, DAY, None, reanchoring=True))
    assert not sends(server.receive(asked))[0].server_version.reanchoring


def test_the_codec_keeps_a_re_anchor_whole(version: int) -> None:
    """A record with a re-anchor in flight encodes and decodes to itself (the engines' own
    tests: tests/store/test_contract_reanchor.py)."""
    pump = opened(version)
    renewed(pump, top_up=300_000)
    for record in (rec(pump.server), rec(pump.client)):
        again = codec.decode(codec.encode(record), "test")
        assert (again.pending, again.generation, again.channel_id) == (
            record.pending, record.generation, record.channel_id)


# -- the happy paths -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_a_renewal_with_payout_runs_in_order_and_adds_up(version: int) -> None:
    pump = opened(version)
    before = rec(pump.server)
    r = renewed(pump)
    # the client stored R (and C', and the carried payment) right before it sent it; the
    # server stored it before its broadcast and its ACK
    client_types, server_types = types(pump.client_log), types(pump.server_log)
    at = client_types.index("REANCHOR_SIGNED")
    stored = pump.client_log[at - 1]
    assert isinstance(stored, StoreChannel) and stored.record.pending is not None
    sent = pump.client_log[at]
    assert isinstance(sent, Send) and sent.message.reanchor_signed.tx == stored.record.pending.tx
    assert client_types[at + 1:].count("StoreChannel") == 1  # R complete, after the ACK
    tail = server_types[server_types.index("CheckReanchor"):]
    assert tail[:5] == ["CheckReanchor", "StoreChannel", "Broadcast", "REANCHOR_ACK",
                        "ReanchorSigned"]
    broadcast = next(e for e in pump.server_log if isinstance(e, Broadcast)
                     and e.purpose is Purpose.REANCHOR)
    assert broadcast.tx == r
    # R spends C by our own sighash and key code; C' holds the rest; the payout is the
    # acknowledged total less the server's fee part; every sat is accounted for
    assert spend_problem(before.contract, r, NOW) is None
    pending = rec(pump.server).pending
    assert pending is not None
    client_fee, server_fee = reanchor.fees(before.contract, r, pending_terms(pump))
    assert pending.payout == before.paid
    assert r.outputs[1] == TxOut(before.paid - server_fee, PAYOUT)
    assert r.outputs[0].value == VALUE - before.paid - client_fee
    assert sum(o.value for o in r.outputs) + client_fee + server_fee == VALUE
    assert pending.contract.expiry == NOW + 2 * DAY and pending.change == before.change - client_fee
    # the client holds the same, complete
    client_pending = rec(pump.client).pending
    assert client_pending is not None and client_pending.complete
    assert client_pending.tx == pending.tx and client_pending.signature == pending.signature


def pending_terms(pump: Pump) -> reanchor.Terms:
    pending = rec(pump.server).pending
    assert pending is not None
    return reanchor.Terms(pending.contract.expiry, pending.payout, PAYOUT, pending.fee_rate)


@pytest.mark.parametrize("version", VERSIONS)
def test_top_up_payout_and_renewal_together(version: int) -> None:
    pump = opened(version)
    before = rec(pump.server)
    r = renewed(pump, top_up=300_000)
    fund = next(e for e in pump.client_log if isinstance(e, FundReanchor))
    assert fund.fee_rate == FEE_RATE and len(r.inputs) == 2 and len(r.outputs) == 3
    pending = rec(pump.client).pending
    assert pending is not None
    assert pending.contract.value == VALUE + 300_000 - before.paid
    assert pending.change == before.change + 300_000  # the wallet paid the client's fees
    _, server_fee = reanchor_fees(0, reanchor.payout_vbytes(PAYOUT), FEE_RATE, False)
    assert r.outputs[1].value == before.paid - server_fee
    total_fee = VALUE + WALLET_COIN - sum(o.value for o in r.outputs)
    assert total_fee > server_fee  # the client's wallet paid the rest
    # v4 signs R over the wallet coin's output too; both sides stored what they signed over
    server_pending = rec(pump.server).pending
    assert server_pending is not None and server_pending.spent == pending.spent
    assert [o.value for o in pending.spent] == ([WALLET_COIN] if version == 4 else [])
    assert spend_problem(before.contract, r, NOW, spent=pending.spent) is None


def test_a_top_up_alone_keeps_the_expiry_and_the_server_pays_only_its_output(version: int) -> None:
    """A top-up without a renewal is no pure payout (the wallet adds inputs): the client's
    draft and the server's check price it alike (found on real nodes: the draft had priced
    it as a pure payout, and the server refused the payout output)."""
    pump = opened(version)
    before = rec(pump.server)
    r = renewed(pump, top_up=300_000, window=0)
    pending = rec(pump.server).pending
    assert pending is not None and pending.contract.expiry == before.contract.expiry
    _, server_fee = reanchor_fees(0, reanchor.payout_vbytes(PAYOUT), FEE_RATE, False)
    assert r.outputs[1].value == before.paid - server_fee
    assert pending.contract.value == VALUE + 300_000 - before.paid


def test_a_pure_payout_is_paid_by_the_server_alone(version: int) -> None:
    pump = opened(version)
    before = rec(pump.server)
    pump.run(pump.server.quote_reanchor(FEE_RATE, PAYOUT, NOW), "server")  # its own wish
    r = Transaction.parse(rec(pump.server).pending.tx)  # type: ignore[union-attr]
    assert r.outputs[0].value == VALUE - before.paid  # the client pays nothing
    assert rec(pump.client).pending.change == before.change  # type: ignore[union-attr]
    assert rec(pump.client).pending.contract.expiry == before.contract.expiry  # type: ignore[union-attr]
    assert r.outputs[1].value < before.paid  # the fee came from the payout


# -- payments while the re-anchor is pending, and promotion -----------------------------------


def test_payments_in_flight_are_signed_stored_and_acked_on_both_contracts(version: int) -> None:
    pump = opened(version)
    renewed(pump)
    pump.client_log.clear()
    pump.server_log.clear()
    pump.run(pump.client.pay(5_000))
    (update,) = [m for m in pump.sent("client") if m.type == T.UPDATE_PAYMENT]
    assert update.update_payment.next_signature
    stored = next(e for e in pump.server_log if isinstance(e, StorePayment)).record
    pending = stored.pending
    assert pending is not None
    # the server holds the latest payment on C and on C', both valid
    stored.contract.check_payment(stored.change, stored.signature)
    pending.contract.check_payment(pending.change, pending.signature)
    assert pending.change == stored.change + pending.offset(stored.contract)
    assert "PAYMENT_ACK" in types(pump.server_log)
    assert types(pump.server_log).index("StorePayment") < types(pump.server_log).index(
        "PAYMENT_ACK")
    assert rec(pump.client).pending == pending  # both sides agree


def test_the_stream_never_pauses_during_a_renewal(version: int) -> None:
    """Payments go on between every step of the exchange (the window of 16 in flight)."""
    pump = opened(version)
    pump.hold = {CheckReanchor}
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    for _ in range(5):
        pump.run(pump.client.pay(1_000))  # the server is asking its node about R
    (check,) = pump.held
    assert rec(pump.server).payments == rec(pump.client).payments == 7
    pump.hold = set()
    pump.run(pump.server.reanchor_checked(None))
    pending = rec(pump.server).pending
    assert pending is not None and pending.complete
    pending.contract.check_payment(pending.change, pending.signature)
    assert isinstance(check, CheckReanchor)


def test_a_payment_the_old_contract_cannot_cover_waits_for_promotion(version: int) -> None:
    pump = opened(version)
    renewed(pump, top_up=300_000)
    change = rec(pump.client).change
    with pytest.raises(LocalProtocolError, match="waits for the re-anchor to confirm"):
        pump.client.pay(change)  # C would be exhausted; C' still has 300,000 more
    promote(pump)
    pump.run(pump.client.pay(change + 100_000))  # beyond C's value: C' covers it
    assert rec(pump.server).change == rec(pump.client).change


def promote(pump: Pump) -> None:
    """What the server's watcher does once R has its confirmations: promote the stored
    channel and tell the live connection, which tells the client (REANCHOR_LOCKED)."""
    promoted = reanchor.promoted(rec(pump.server))
    pump.run(pump.server.reanchor_confirmed(promoted), "server")
    assert rec(pump.server) == promoted
    assert rec(pump.client).contract_txid == promoted.contract_txid
    assert pump.client_store[promoted.contract_txid] == rec(pump.client)


def test_promotion_moves_both_sides_to_the_next_contract_and_keeps_the_identity(
        version: int) -> None:
    pump = opened(version)
    first = rec(pump.server).contract_txid
    r = renewed(pump)
    pump.run(pump.client.pay(3_000))
    promote(pump)
    for machine in (pump.client, pump.server):
        record = rec(machine)
        assert record.generation == 1 and record.channel_id == first
        assert record.contract_txid == r.txid_hex and record.pending is None
        record.contract.check_payment(record.change, record.signature)
    pump.run(pump.client.pay(2_000))
    (update,) = [m for m in pump.sent("client")[-1:]]
    assert not update.update_payment.next_signature  # C' alone now
    assert rec(pump.server).change == rec(pump.client).change
    renewed(pump, window=3 * DAY)  # and again, from generation 1
    promote(pump)
    assert rec(pump.server).generation == 2 and rec(pump.server).channel_id == first


# -- hostile clients -------------------------------------------------------------------------


def signed_message(pump: Pump) -> T:
    """The client's REANCHOR_SIGNED, intercepted before the server saw it."""
    pump.hold = {CheckReanchor}
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    (message,) = [m for m in pump.sent("client") if m.type == T.REANCHOR_SIGNED]
    # take the server back to before it (a fresh resumed machine over its store)
    return message


def fresh_server(pump: Pump) -> ServerChannel:
    record = rec(pump.server)
    server = ServerChannel.resumed_from(SERVER, record, NOW)
    server.reanchoring = True
    return server


def mutate(message: T, **changes: object) -> T:
    body = wire(message)
    for name, value in changes.items():
        setattr(body.reanchor_signed, name, value)
    return body


def refused_with(effects: list[Effect], code: ErrorCode, match: str) -> None:
    errors = [e for e in effects if isinstance(e, PeerError)]
    assert errors and errors[0].code is code and match in errors[0].explanation, effects
    assert not [e for e in effects if isinstance(e, StoreChannel | Broadcast | CheckReanchor)]


def test_a_bad_client_signature_on_r_is_refused_and_nothing_stored(version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)
    server = fresh_server(pump)
    forged = PrivateKey.generate()
    tx = Transaction.parse(message.reanchor_signed.tx)
    bad = rec(pump.server).contract.sign_cooperative(forged, tx)
    effects = server.receive(mutate(message, client_signature=bad))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "does not verify")


def test_a_bad_signature_of_the_carried_payment_is_refused(version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)
    server = fresh_server(pump)
    sig = message.reanchor_signed.next_signature
    effects = server.receive(mutate(message, next_signature=sig[:-1] + bytes([sig[-1] ^ 2])))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "hashtype")


def test_a_payout_above_what_was_paid_is_refused(version: int) -> None:
    """A client cannot make the server 'accept' a payout above its paid total (the
    generation offset would then raise the client's change on C')."""
    pump = opened(version)
    message = signed_message(pump)
    server = fresh_server(pump)
    effects = server.receive(mutate(message, payout=rec(pump.server).paid + 1))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "pays out")


@pytest.mark.parametrize(("output", "delta", "why"), [
    (0, 500, "must hold"),  # C' keeps more than the contract less payout and client fee
    (1, -100, "output 1 must pay exactly"),  # the server paid less than its payout
])
def test_r_moving_a_sat_from_where_the_rule_puts_it_is_refused(output: int, delta: int,
                                                                why: str, version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)
    tx = Transaction.parse(message.reanchor_signed.tx)
    outputs = list(tx.outputs)
    outputs[output] = replace(outputs[output], value=outputs[output].value + delta)
    moved = replace(tx, outputs=tuple(outputs))
    effects = fresh_server(pump).receive(mutate(message, tx=moved.serialize()))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, why)


def test_r_not_replaceable_or_with_a_legacy_input_is_refused(version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)
    tx = Transaction.parse(message.reanchor_signed.tx)
    final = replace(tx, inputs=(replace(tx.inputs[0], sequence=0xFFFFFFFF),))
    refused_with(fresh_server(pump).receive(mutate(message, tx=final.serialize())),
                 ErrorCode.BAD_TRANSACTION, "sequence")
    legacy = replace(tx, inputs=(*tx.inputs, replace(tx.inputs[0], script_sig=b"\x00")))
    refused_with(fresh_server(pump).receive(mutate(message, tx=legacy.serialize())),
                 ErrorCode.BAD_TRANSACTION, "native segwit")


def signed_top_up(pump: Pump) -> tuple[T, tuple[TxOut, ...]]:
    """The client's REANCHOR_SIGNED of a top-up, intercepted, and its true spent outputs."""
    pump.hold = {FundReanchor}
    pump.run(pump.client.reanchor(300_000, 2 * DAY, NOW))
    (fund,) = pump.held
    assert isinstance(fund, FundReanchor)
    funded, spent = reanchor_funding(fund, VALUE)
    pump.hold, pump.held = {CheckReanchor}, []
    pump.run(pump.client.reanchor_funded(funded, spent))
    (message,) = [m for m in pump.sent("client") if m.type == T.REANCHOR_SIGNED]
    return message, spent


def extra_coin() -> tuple[TxIn, TxOut]:
    """Another segwit coin a client could slip into R, and the output it spends."""
    key = PrivateKey.generate()
    return (TxIn(OutPoint(key.pub.data[1:], 3), b"", 0xFFFFFFFD, (bytes(71), bytes(33))),
            TxOut(90_000, PAYOUT))


def test_an_input_added_after_the_client_signed_r_is_refused(version: int) -> None:
    """R's signatures commit to every input (v3: BIP143 SIGHASH_ALL; v4: SIGHASH_DEFAULT
    over every spent output): R with one more input than the client signed is refused."""
    pump = opened(version)
    message, spent = signed_top_up(pump)
    tx = Transaction.parse(message.reanchor_signed.tx)
    txin, out = extra_coin()
    grown = replace(tx, inputs=(*tx.inputs, txin)).serialize()
    named = serialize_outputs((*spent, out)) if version == 4 else b""
    effects = fresh_server(pump).receive(mutate(message, tx=grown, spent_outputs=named))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "does not verify")


def test_an_input_added_to_a_complete_r_voids_its_signatures(version: int) -> None:
    """The move ALL|ANYONECANPAY would allow (v4's close hashtype): a client adding a coin
    to the R the server completed, so moving C' to another txid. R's signatures forbid it."""
    pump = opened(version)
    r = renewed(pump, top_up=300_000)
    pending = rec(pump.server).pending
    assert pending is not None
    contract = rec(pump.server).contract
    assert spend_problem(contract, r, NOW, spent=pending.spent) is None
    txin, out = extra_coin()
    grown = replace(r, inputs=(*r.inputs, txin))
    assert grown.txid_hex != r.txid_hex
    spent = (*pending.spent, out) if version == 4 else ()
    assert "does not verify" in str(spend_problem(contract, grown, NOW, spent=spent))


def test_v4_r_signed_with_the_closes_hashtype_is_refused() -> None:
    """The close's ALL|ANYONECANPAY would leave R's other inputs open: refused on R."""
    pump = opened(4)
    message, _ = signed_top_up(pump)
    tx = Transaction.parse(message.reanchor_signed.tx)
    contract = rec(pump.server).contract
    loose = contract.kind.final_hashtype
    signature = contract.kind.scheme.sign(pump.client.key, contract.sighash(tx, loose), loose)
    effects = fresh_server(pump).receive(mutate(message, client_signature=signature))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "hashtype")


def test_spent_outputs_that_do_not_fit_the_kind_are_refused(version: int) -> None:
    pump = opened(version)
    message, spent = signed_top_up(pump)
    wrong = () if version == 4 else spent  # v4 needs them; v3 signs over none
    effects = fresh_server(pump).receive(mutate(message, spent_outputs=serialize_outputs(wrong)))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "spent outputs")


def test_a_lie_about_a_spent_amount_makes_an_r_the_node_refuses() -> None:
    """A v4 client naming another amount for its coin signs over the lie; the server cannot
    know it, but its signature over the lie is void on chain: its node's check (here the
    chain rules) refuses R, and nothing is stored or sent."""
    pump = opened(4)
    message, spent = signed_top_up(pump)
    (coin,) = spent
    lie = (TxOut(coin.value - 50_000, coin.script_pubkey),)
    tx = Transaction.parse(message.reanchor_signed.tx)
    signature = rec(pump.client).contract.sign_cooperative(pump.client.key, tx, lie)
    server = fresh_server(pump)
    effects = server.receive(mutate(message, client_signature=signature,
                                    spent_outputs=serialize_outputs(lie)))
    (check,) = effects
    assert isinstance(check, CheckReanchor)
    contract = rec(server).contract
    assert spend_problem(contract, check.tx, NOW, spent=lie) is None  # as the lie says
    assert "does not verify" in str(spend_problem(contract, check.tx, NOW, spent=spent))
    effects = server.reanchor_checked("mandatory-script-verify-flag-failed")
    assert not [e for e in effects if isinstance(e, StoreChannel | Broadcast)]
    assert rec(server).pending is None


def test_a_carried_change_other_than_the_channels_is_refused(version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)
    effects = fresh_server(pump).receive(mutate(
        message, client_change_value=message.reanchor_signed.client_change_value + 1))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "carries change")


def test_a_payment_without_its_second_signature_is_refused_while_r_is_pending(version: int) -> None:
    pump = opened(version)
    renewed(pump)
    record = rec(pump.server)
    payment = record.contract.sign_payment(pump.client.key, record.change - 1_000)
    effects = pump.server.receive(wire(messages.update_payment(record.change - 1_000, payment)))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "next_signature")
    assert not [e for e in effects if isinstance(e, StorePayment)]


def test_a_payment_with_a_bad_second_signature_is_refused(version: int) -> None:
    pump = opened(version)
    renewed(pump)
    record = rec(pump.server)
    change = record.change - 1_000
    payment = record.contract.sign_payment(pump.client.key, change)
    wrong = record.pending.contract.sign_payment(  # type: ignore[union-attr]
        pump.client.key, change)  # signed for the wrong change on C'
    effects = pump.server.receive(wire(messages.update_payment(change, payment,
                                                               next_signature=wrong)))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "does not verify")
    assert not [e for e in effects if isinstance(e, StorePayment)]


def test_a_payment_exhausting_the_contract_is_refused_while_r_is_pending(version: int) -> None:
    pump = opened(version)
    renewed(pump, top_up=300_000)
    record = rec(pump.server)
    pending = record.pending
    assert pending is not None
    payment = record.contract.sign_payment(pump.client.key, 0)
    second = pending.contract.sign_payment(pump.client.key, pending.offset(record.contract))
    effects = pump.server.receive(wire(messages.update_payment(0, payment,
                                                               next_signature=second)))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "leave change")


def test_a_second_re_anchor_while_one_is_pending_is_refused(version: int) -> None:
    pump = opened(version)
    renewed(pump)
    with pytest.raises(LocalProtocolError, match="in flight"):
        pump.client.reanchor(0, 3 * DAY, NOW)
    pump.server_log.clear()
    pump.run([Send(messages.reanchor_propose(0, 3 * DAY))])  # a hostile client asks anyway
    # refused before the wallet or the node is asked anything (review 5)
    assert not [e for e in pump.server_log if isinstance(e, PrepareReanchor)]
    assert [m.type for m in pump.sent("server")] == [T.REANCHOR_REFUSED]


# -- hostile servers -------------------------------------------------------------------------


def quoted(pump: Pump, asked: bool = True, fee_estimate: int | None = None, **terms: int
           ) -> list[Effect]:
    """The client's answer to a server quote with `terms` changed; `asked`: for a renewal of
    2 days it asked (its PROPOSE lost on the way), with its node's `fee_estimate`."""
    if asked:
        pump.client.reanchor(0, 2 * DAY, NOW, fee_estimate)
    record = rec(pump.server)
    base = dict(expiry=record.contract.expiry, payout=record.paid, payout_script=PAYOUT,
                fee_rate=FEE_RATE) | terms
    return pump.client.receive(wire(messages.reanchor_terms(
        int(base["expiry"]), int(base["payout"]),  # type: ignore[call-overload]
        bytes(base["payout_script"]), int(base["fee_rate"]))))  # type: ignore[call-overload]


@pytest.mark.parametrize(("terms", "why"), [
    ({"payout": 21_001}, "more than the 21000 sat it acknowledged"),
    ({"fee_rate": 200_001}, "above our cap"),
    ({"expiry": NOW + 30 * DAY}, "outside"),
    ({"expiry": NOW + DAY - 61}, "outside"),  # earlier than C's own expiry
])
def test_the_client_declines_terms_signing_away_more_than_agreed(terms: dict[str, int],
                                                                 why: str, version: int) -> None:
    pump = opened(version)
    effects = quoted(pump, True, None, **terms)
    (ended,) = effects
    assert isinstance(ended, ReanchorEnded) and why in ended.reason
    assert rec(pump.client).pending is None


def test_the_client_never_pays_out_what_is_only_in_flight(version: int) -> None:
    """A payment stored and sent but not acknowledged is not the server's yet."""
    pump = opened(version)
    pump.client.pay(10_000)  # never delivered, never acked
    effects = quoted(pump, payout=30_000)
    assert isinstance(effects[0], ReanchorEnded) and "21000 sat it acknowledged" in \
        effects[0].reason


def test_the_server_quotes_only_what_it_acknowledged(version: int) -> None:
    pump = opened(version)
    record = rec(pump.server)
    payment = record.contract.sign_payment(pump.client.key, record.change - 7_000)
    effects = pump.server.receive(wire(messages.update_payment(record.change - 7_000,
                                                               payment)))
    assert any(isinstance(e, StorePayment) for e in effects)  # stored, its ack not yet sent
    (terms,) = sends(pump.server.quote_reanchor(FEE_RATE, PAYOUT, NOW))
    assert terms.reanchor_terms.payout == 21_000  # the initial payment and 20,000


def test_an_ack_for_another_r_is_refused(version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)
    tx = Transaction.parse(message.reanchor_signed.tx)
    other = replace(tx, outputs=(tx.outputs[0], replace(tx.outputs[1], value=1)))
    effects = pump.client.receive(wire(messages.reanchor_ack(other.serialize())))
    assert any(isinstance(e, PeerError) for e in effects)


# -- R refused, the channel settling, crashes -------------------------------------------------


def test_a_node_refusing_r_ends_it_and_payments_go_on_plainly(version: int) -> None:
    """The client spent a top-up input elsewhere before the server's check (or the node
    refuses R for any reason): REFUSED, nothing stored, the coins released."""
    pump = opened(version)
    pump.reanchor_refusal = "bad-txns-inputs-missingorspent"
    pump.run(pump.client.reanchor(300_000, 2 * DAY, NOW))
    assert rec(pump.server).pending is None
    assert not any(isinstance(e, Broadcast) and e.purpose is Purpose.REANCHOR
                   for e in pump.server_log)
    client_pending = rec(pump.client).pending
    assert client_pending is not None and client_pending.refused  # kept until R is dead
    ended = [e for e in pump.client_log if isinstance(e, ReanchorEnded)]
    assert ended and ended[-1].tx is not None and len(ended[-1].tx.inputs) == 2  # to release
    pump.run(pump.client.pay(1_000))
    assert not pump.sent("client")[-1].update_payment.next_signature
    assert rec(pump.server).change == rec(pump.client).change


def test_payments_made_during_a_refused_check_are_kept_on_the_contract(version: int) -> None:
    pump = opened(version)
    pump.hold = {CheckReanchor}
    pump.reanchor_refusal = "min relay fee not met"
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    pump.run(pump.client.pay(4_000))
    pump.hold = set()
    pump.run(pump.server.reanchor_checked("min relay fee not met"))
    record = rec(pump.server)
    assert record.pending is None and record.paid == 25_000
    record.contract.check_payment(record.change, record.signature)


def test_a_re_anchor_meeting_a_settlement_is_refused_and_nothing_stored(version: int) -> None:
    pump = opened(version)
    pump.hold = {CheckReanchor}
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    pump.hold = set()
    pump.server.receive(wire(messages.close()))  # the client's CLOSE crosses it
    assert pump.server.state is ServerState.SETTLING
    effects = pump.server.reanchor_checked(None)
    assert not [e for e in effects if isinstance(e, StoreChannel | Broadcast)]
    assert [m.type for m in sends(effects)] == [T.REANCHOR_REFUSED]
    assert rec(pump.server).pending is None


def test_the_server_refuses_to_re_anchor_a_contract_about_to_expire(version: int) -> None:
    pump = opened(version)
    late = NOW + DAY - ServerPolicy().settle_margin - reanchor.REANCHOR_LEAD
    (answer,) = sends(pump.server.quote_reanchor(FEE_RATE, PAYOUT, late))
    assert answer.type == T.REANCHOR_REFUSED and "too soon" in answer.reanchor_refused.explanation


def resumed(pump: Pump) -> Pump:
    """Both sides restarted from their stores, the client resuming."""
    record = pump.client_store[rec(pump.client).contract_txid]
    client = ClientChannel.resuming(record, CLIENT, NOW)
    server = ServerChannel(SERVER, PrivateKey.generate(), NOW)
    again = Pump(client, server, dict(pump.client_store), dict(pump.server_store))
    again.run(client.start())
    return again


def test_crash_after_the_client_stored_r_before_the_server_saw_it(version: int) -> None:
    pump = opened(version)
    pump.drop = {T.REANCHOR_SIGNED}  # stored by the client, lost on the way
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    assert rec(pump.client).pending is not None
    again = resumed(pump)
    pending = rec(again.server).pending
    assert pending is not None and pending.complete  # re-sent after the proof, taken
    assert rec(again.client).pending.complete  # type: ignore[union-attr]


def test_crash_while_the_server_asked_its_node(version: int) -> None:
    """The server stored payments with the unchecked R, then died: a new connection drops
    that R and takes the client's re-sent one afresh."""
    pump = opened(version)
    pump.hold = {CheckReanchor}
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    pump.run(pump.client.pay(2_000))
    stored = pump.server_store[rec(pump.server).contract_txid]
    assert stored.pending is not None and not stored.pending.complete
    again = resumed(pump)
    pending = rec(again.server).pending
    assert pending is not None and pending.complete
    assert rec(again.server).change == rec(again.client).change


def test_crash_after_the_server_stored_r_before_the_ack(version: int) -> None:
    pump = opened(version)
    pump.drop = {T.REANCHOR_ACK}  # stored and broadcast by the server, lost on the way
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    lost = pump.client_store[rec(pump.client).contract_txid]
    assert lost.pending is not None and not lost.pending.complete
    again = resumed(pump)
    server_types = types(again.server_log)
    assert "REANCHOR_ACK" in server_types
    assert "CheckReanchor" not in server_types and "Broadcast" not in server_types  # idempotent
    assert rec(again.client).pending.complete  # type: ignore[union-attr]


def test_a_resumed_client_sending_another_r_is_refused(version: int) -> None:
    pump = opened(version)
    renewed(pump)
    again = resumed(pump)
    record = rec(again.client)
    assert record.pending is not None
    other = Transaction.parse(record.pending.tx)
    message = messages.reanchor_signed(replace(other, locktime=0, version=2,
                                               outputs=other.outputs[:1]).serialize(),
                                       record.pending.contract.expiry, 0, FEE_RATE,
                                       record.change, record.pending.signature, b"\x30")
    (answer,) = sends(again.server.receive(wire(message)))
    assert answer.type == T.REANCHOR_REFUSED and "in flight" in answer.reanchor_refused.explanation


def test_payments_during_the_exchange_survive_a_resume_on_both_contracts(version: int) -> None:
    pump = opened(version)
    renewed(pump)
    pump.run(pump.client.pay(1_500))
    again = resumed(pump)
    again.run(again.client.pay(2_500))
    server, client = rec(again.server), rec(again.client)
    assert server.change == client.change and server.pending == client.pending
    assert server.pending is not None
    server.pending.contract.check_payment(server.pending.change, server.pending.signature)


def test_carried_change_is_never_dust(version: int) -> None:
    pump = opened(version, paid=VALUE - 1_600)  # 600 sat left: C' would keep less than dust
    effects = quoted(pump, payout=0, expiry=rec(pump.client).contract.expiry + 30)
    assert isinstance(effects[0], ReanchorEnded) and "leave us" in effects[0].reason
    assert rec(pump.client).change < 2 * DUST


def held_ack(pump: Pump, top_up: int = 0) -> Transaction:
    """Run a re-anchor whose REANCHOR_ACK is lost on its way; the R it carried."""
    pump.drop = {T.REANCHOR_ACK}
    pump.run(pump.client.reanchor(top_up, 2 * DAY, NOW))
    (ack,) = [e for e in pump.held if isinstance(e, Send)]
    return Transaction.parse(ack.message.reanchor_ack.tx)


def test_an_ack_without_the_servers_valid_signature_is_refused(version: int) -> None:
    pump = opened(version)
    good = held_ack(pump)
    witness = list(good.inputs[0].witness)
    witness[1] = witness[0]  # the client's own signature where the server's belongs
    forged = good.with_witness(0, tuple(witness))
    effects = pump.client.receive(wire(messages.reanchor_ack(forged.serialize())))
    assert any(isinstance(e, PeerError) and "server's re-anchor" in e.explanation
               for e in effects)
    assert not rec(pump.client).pending.complete  # type: ignore[union-attr]


def test_the_payout_script_is_checked_by_the_adapter_unless_quoted_here(version: int) -> None:
    """A client could route the payout to itself: on the connection that quoted, the
    machine knows the script; a re-sent R (fresh connection) names it for the adapter to
    check it is the server's wallet's."""
    pump = opened(version)
    message = signed_message(pump)
    (held,) = pump.held
    assert isinstance(held, CheckReanchor) and held.payout_script == b""  # quoted here
    tx = Transaction.parse(message.reanchor_signed.tx)
    theirs = b"\x00\x14" + bytes(range(20))
    stolen = replace(tx, outputs=(tx.outputs[0], replace(tx.outputs[1], script_pubkey=theirs)))
    record, pending = rec(pump.server), rec(pump.client).pending
    assert pending is not None
    carried, expiry = pending.change, message.reanchor_signed.expire_time_secs
    moved = reanchor.next_contract(record.contract, stolen, expiry)
    resigned = mutate(message, tx=stolen.serialize(),
                      client_signature=record.contract.sign_cooperative(pump.client.key, stolen),
                      next_signature=moved.sign_payment(pump.client.key, carried))
    (check,) = fresh_server(pump).receive(resigned)
    assert isinstance(check, CheckReanchor) and check.payout_script == theirs


def test_a_payment_signed_on_both_that_crosses_the_lock_counts_on_the_new_contract(
        version: int) -> None:
    pump = opened(version)
    renewed(pump)
    crossing = [e for e in pump.client.pay(3_000) if isinstance(e, Send)]  # not yet delivered
    promote(pump)  # the server locks, the client learns it after having sent the payment
    effects = pump.server.receive(wire(crossing[0].message))
    stored = next(e for e in effects if isinstance(e, StorePayment)).record
    stored.contract.check_payment(stored.change, stored.signature)  # on C'
    assert stored.contract_txid == rec(pump.client).contract_txid
    assert stored.change == rec(pump.client).change  # both sides agree on C'


def test_a_lock_for_another_transaction_is_refused(version: int) -> None:
    pump = opened(version)
    renewed(pump)
    effects = pump.client.receive(wire(messages.reanchor_locked("11" * 32)))
    assert any(isinstance(e, PeerError) for e in effects)
    assert rec(pump.client).generation == 0


def test_a_wallet_that_changes_the_drafts_outputs_or_uses_legacy_coins_is_refused(
        version: int) -> None:
    pump = opened(version)
    pump.hold = {FundReanchor}
    pump.run(pump.client.reanchor(300_000, 2 * DAY, NOW))
    (fund,) = pump.held
    assert isinstance(fund, FundReanchor)
    funded, spent = reanchor_funding(fund, VALUE)
    richer = replace(funded, outputs=(replace(funded.outputs[0], value=1), *funded.outputs[1:]))
    (ended,) = pump.client.reanchor_funded(richer, spent)
    assert isinstance(ended, ReanchorEnded) and "changed the re-anchor" in ended.reason
    assert ended.tx == richer  # its coins to release
    assert rec(pump.client).pending is None  # nothing signed, nothing stored


def test_funding_that_arrives_after_the_channel_closed_signs_nothing_and_releases(
        version: int) -> None:
    pump = opened(version)
    pump.hold = {FundReanchor}
    pump.run(pump.client.reanchor(300_000, 2 * DAY, NOW))
    (fund,) = pump.held
    assert isinstance(fund, FundReanchor)
    pump.hold = set()
    pump.run(pump.client.close())
    assert pump.client.state is ClientState.CLOSED
    effects = pump.client.reanchor_funded(*reanchor_funding(fund, VALUE))
    (ended,) = effects
    assert isinstance(ended, ReanchorEnded) and ended.tx is not None  # its coins to release
    assert rec(pump.client).pending is None


def test_a_refusal_read_while_our_wallet_funds_ends_it_and_the_funding_is_released(
        version: int) -> None:
    """The server's REANCHOR_REFUSED is read while our wallet funds the top-up (the service
    funds beside the reader): the exchange ends there, and the funding, when it comes, is
    not signed but handed back for release; no other re-anchor starts before it came."""
    pump = opened(version)
    pump.client.reanchor(300_000, 0, NOW)
    (fund,) = quoted(pump, False)
    assert isinstance(fund, FundReanchor)
    (ended,) = pump.client.receive(wire(messages.reanchor_refused("busy")))
    assert isinstance(ended, ReanchorEnded) and "busy" in ended.reason
    with pytest.raises(LocalProtocolError, match="in flight"):
        pump.client.reanchor(0, 2 * DAY, NOW)
    assert quoted(pump, False) == []  # nor is a quote taken meanwhile
    funded, spent = reanchor_funding(fund, VALUE)
    (released,) = pump.client.reanchor_funded(funded, spent)
    assert isinstance(released, ReanchorEnded) and released.tx == funded
    assert rec(pump.client).pending is None
    assert [m.type for m in sends(pump.client.reanchor(0, 2 * DAY, NOW))] == [
        T.REANCHOR_PROPOSE]


def test_a_refusal_read_while_the_wallet_fails_ends_it_once(version: int) -> None:
    pump = opened(version)
    pump.client.reanchor(300_000, 0, NOW)
    quoted(pump, False)
    pump.client.receive(wire(messages.reanchor_refused("busy")))
    assert pump.client.reanchor_unfunded("Insufficient funds") == []  # ended already
    assert [m.type for m in sends(pump.client.reanchor(0, 2 * DAY, NOW))] == [
        T.REANCHOR_PROPOSE]


def test_a_refusal_clears_our_proposal_so_a_later_quote_is_not_its_answer(
        version: int) -> None:
    """After REANCHOR_REFUSED, the server's later unasked payout is an unasked payout: not
    swallowed as a crossing quote, nor funded as the refused top-up's answer."""
    pump = opened(version)
    pump.client.reanchor(300_000, 2 * DAY, NOW)
    pump.client.receive(wire(messages.reanchor_refused("not now")))
    effects = quoted(pump, False)  # C's expiry: an unasked payout
    assert [m.type for m in sends(effects)] == [T.REANCHOR_SIGNED]  # no FundReanchor
    pending = rec(pump.client).pending
    assert pending is not None and len(Transaction.parse(pending.tx).inputs) == 1


def test_a_second_quote_keeping_the_expiry_is_our_renewals_capped_answer(
        version: int) -> None:
    """Only the first expiry-keeping quote after our PROPOSE is taken for a crossing one: a
    server that caps the renewal (its max_time_window) answers with the expiry kept, and
    that answer is signed rather than waited past for ever."""
    pump = opened(version)
    pump.client.reanchor(0, 2 * DAY, NOW)
    assert quoted(pump, False) == []  # the crossing quote
    effects = quoted(pump, False)  # the answer: the expiry kept
    assert [m.type for m in sends(effects)] == [T.REANCHOR_SIGNED]


def test_a_refused_r_blocks_another_until_it_is_known_dead(version: int) -> None:
    """A hostile server could still complete a refused R (it holds the client's signature):
    the client keeps it, and signs no other R meanwhile, so it can always find C' to refund."""
    pump = opened(version)
    pump.reanchor_refusal = "min relay fee not met"
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    assert rec(pump.client).pending.refused  # type: ignore[union-attr]
    with pytest.raises(LocalProtocolError, match="refused re-anchor"):
        pump.client.reanchor(0, 2 * DAY, NOW)
    assert quoted(pump, False, payout=0, expiry=NOW + DAY) == []  # an unasked quote: ignored


# -- the hostile review of the first build (/work/notes/review-living.md) ---------------------


def signed_for(pump: Pump, terms: reanchor.Terms, tx: Transaction | None = None) -> T:
    """A hostile client's REANCHOR_SIGNED for `terms` (R drafted by the rule unless `tx`,
    whose wallet inputs each spend a WALLET_COIN output, named when the kind signs over
    them), signed by the client's machine (its record keeps the R)."""
    record = pump.client._stored()
    r = tx if tx is not None else reanchor.draft(record.contract, terms, 0)
    spent = ((TxOut(WALLET_COIN, PAYOUT),) * (len(r.inputs) - 1)
             if record.contract.kind.reanchor_needs_spent else ())
    (signed,) = sends(pump.client._sign_reanchor(record, terms, r, spent))
    return signed


def test_the_servers_expiry_checks_use_the_time_the_r_arrived(version: int) -> None:
    """Review 2: on a connection open for 10 h, R renewing to connection start + the minimum
    window (in the past by then) was taken, checked against the connection's start time."""
    pump = opened(version, paid=200_000)
    server, real_now = pump.server, NOW + 10 * 3600
    stale = reanchor.Terms(NOW + SERVER.min_time_window, 0, PAYOUT, FEE_RATE)
    effects = server.receive(signed_for(pump, stale), now=real_now)
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "outside")
    assert rec(server).pending is None and server.now == real_now


def test_a_renewal_never_shortens_the_contract(version: int) -> None:
    pump = opened(version)
    expiry = rec(pump.server).contract.expiry
    earlier = reanchor.Terms(expiry - 60, 0, PAYOUT, FEE_RATE)  # within the window, < E
    refused_with(pump.server.receive(signed_for(pump, earlier), now=NOW), ErrorCode.BAD_TRANSACTION,
                 "outside")


def test_the_lead_before_cs_deadline_is_checked_when_r_arrives(version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)
    late = NOW + DAY - SERVER.settle_margin - reanchor.REANCHOR_LEAD
    (answer,) = sends(fresh_server(pump).receive(message, now=late))
    assert answer.type == T.REANCHOR_REFUSED and "too soon" in answer.reanchor_refused.explanation


def test_the_client_keeps_its_own_wallet_witnesses_from_the_ack(version: int) -> None:
    """Review 8: only input 0's witness is the server's; the rest of R stays as we signed."""
    pump = opened(version)
    good = held_ack(pump, 300_000)
    theirs = good.with_witness(1, (bytes(72), bytes(33)))  # same txid: witnesses are not in it
    pump.client.receive(wire(messages.reanchor_ack(theirs.serialize())))
    pending = rec(pump.client).pending
    assert pending is not None and pending.complete
    assert Transaction.parse(pending.tx) == good


def test_a_later_refused_re_anchor_does_not_read_payments_on_the_old_offset(version: int) -> None:
    """Review 10: after one promotion, a second re-anchor refused by the node; a payment the
    client signed on both while it was being checked counts on the contract, by its own
    signature (the first promotion's offset was left behind)."""
    pump = opened(version)
    renewed(pump)
    promote(pump)
    pump.hold = {CheckReanchor}
    pump.run(pump.client.reanchor(0, 3 * DAY, NOW))
    crossing = [e for e in pump.client.pay(2_000) if isinstance(e, Send)]
    assert crossing[0].message.update_payment.next_signature  # signed on both
    pump.server.reanchor_checked("min relay fee not met")
    effects = pump.server.receive(wire(crossing[0].message))
    stored = next(e for e in effects if isinstance(e, StorePayment)).record
    stored.contract.check_payment(stored.change, stored.signature)
    assert stored.change == rec(pump.client).change


def pure_payout_at(pump: Pump, rate: int) -> T:
    record = pump.client._stored()
    return signed_for(pump, reanchor.Terms(record.contract.expiry, 90_000, PAYOUT, rate))


def test_a_signed_r_must_state_the_rate_quoted_on_this_connection(version: int) -> None:
    """Review 3 (fee grief): after a quote at the server's estimate, a pure payout at the
    server's cap (the server pays it all) is refused."""
    pump = opened(version, paid=100_000)
    pump.server.receive(wire(messages.reanchor_propose(0, 0)))
    pump.server.quote_reanchor(FEE_RATE, PAYOUT, NOW)
    effects = pump.server.receive(pure_payout_at(pump, SERVER.max_fee_rate))
    refused_with(effects, ErrorCode.BAD_TRANSACTION, "not the rate quoted")


@pytest.mark.parametrize(("rate", "why"), [
    (SERVER.max_fee_rate, "more than the server's rate now"),  # a pure payout: at most it
    (FEE_RATE, None),
])
def test_a_resent_pure_payout_pays_no_more_than_settling_would(rate: int, why: str | None,
                                                               version: int) -> None:
    pump = opened(version, paid=100_000)
    server = fresh_server(pump)  # no quote on this connection: R re-sent after a resume
    (check,) = server.receive(pure_payout_at(pump, rate))
    assert isinstance(check, CheckReanchor) and check.resent
    effects = server.reanchor_checked(None, None, FEE_RATE)
    if why is None:
        assert rec(server).pending.complete  # type: ignore[union-attr]
        return
    (refused,) = sends(effects)
    assert why in refused.reanchor_refused.explanation and rec(server).pending is None


def test_a_resent_renewal_below_the_servers_estimate_is_refused(version: int) -> None:
    pump = opened(version)
    message = signed_message(pump)  # at FEE_RATE
    server = fresh_server(pump)
    server.receive(message)
    (refused,) = sends(server.reanchor_checked(None, None, FEE_RATE + 1))
    assert "below the server's estimate" in refused.reanchor_refused.explanation
    server = fresh_server(pump)
    server.receive(message)
    (refused,) = sends(server.reanchor_checked(None))  # the adapter gave no estimate
    assert "no fee estimate" in refused.reanchor_refused.explanation


def test_a_top_up_r_must_really_pay_its_stated_rate(version: int) -> None:
    """Review 3 (top-up skim): the client states the cap as R's rate (so the server's part,
    taken from its payout, is large) but funds R at 1 sat/vB and keeps the difference: the
    node's count of R's fee refuses it."""
    pump = opened(version, paid=200_000)
    cap = SERVER.max_fee_rate
    pump.server.quote_reanchor(cap, PAYOUT, NOW)  # the server's estimate is at its cap
    record = pump.client._stored()
    terms = reanchor.Terms(record.contract.expiry, record.paid, PAYOUT, cap)
    draft = reanchor.draft(record.contract, terms, 10_000)
    coin = TxIn(OutPoint(PrivateKey.generate().pub.data[1:], 0), b"", 0xFFFFFFFD,
                (bytes(71), bytes(33)))
    shape = Transaction(draft.version, (*draft.inputs, coin), (*draft.outputs, TxOut(0, PAYOUT)),
                        0)
    real_fee = record.contract.sign_settlement(shape, bytes(73), None).vsize  # 1 sat/vB
    change = record.contract.value + WALLET_COIN - sum(o.value for o in draft.outputs) - real_fee
    r = replace(shape, outputs=(*draft.outputs, TxOut(change, PAYOUT)))
    (check,) = pump.server.receive(signed_for(pump, terms, r))
    assert isinstance(check, CheckReanchor) and not check.resent
    (refused,) = sends(pump.server.reanchor_checked(None, reanchor_fee(check.tx, pump.server)))
    assert "less than its stated rate" in refused.reanchor_refused.explanation
    assert rec(pump.server).pending is None


def test_proposals_reuse_the_connections_quote_and_keep_few_quotes(version: int) -> None:
    """Review 5: every PROPOSE asked the wallet for a fresh script (and the node for a rate),
    each kept for the connection's life. Now a fresh quote is answered again as it is, an
    older one's script reused, and a connection keeps QUOTES_KEPT quotes."""
    pump = opened(version)
    server = pump.server
    (prepare,) = server.receive(wire(messages.reanchor_propose(0, 2 * DAY)))
    assert isinstance(prepare, PrepareReanchor) and prepare.payout_script == b""
    (first,) = sends(server.quote_reanchor(FEE_RATE, PAYOUT, NOW))
    for _ in range(50):  # nothing asked of the wallet or the node: the same quote again
        (again,) = sends(server.receive(wire(messages.reanchor_propose(0, 2 * DAY)), NOW + 1))
        terms = again.reanchor_terms
        assert (terms.payout_script, terms.fee_rate) == (PAYOUT, first.reanchor_terms.fee_rate)
    for i in range(1, 10):  # each later than QUOTE_FRESH: the node asked, the script reused
        when = NOW + i * QUOTE_FRESH
        (prepare,) = server.receive(wire(messages.reanchor_propose(0, 2 * DAY)), when)
        assert isinstance(prepare, PrepareReanchor) and prepare.payout_script == PAYOUT
        server.quote_reanchor(FEE_RATE + i, prepare.payout_script, when)
    assert len(server._quoted) == QUOTES_KEPT


def test_a_proposal_while_r_is_being_checked_asks_nothing(version: int) -> None:
    pump = opened(version)
    pump.hold = {CheckReanchor}
    pump.run(pump.client.reanchor(0, 2 * DAY, NOW))
    (refused,) = pump.server.receive(wire(messages.reanchor_propose(0, 3 * DAY)))
    assert isinstance(refused, Send) and refused.message.type == T.REANCHOR_REFUSED


def test_unasked_terms_renewing_at_our_cost_are_declined(version: int) -> None:
    """Review 4: a hostile server's unasked TERMS, a renewal of one second at our fee cap
    and no payout: signed, the fee from our change, again and again. Unasked, only a payout
    the server pays is signed."""
    pump = opened(version)
    record = rec(pump.client)
    effects = quoted(pump, False, expiry=record.contract.expiry + 1, payout=0,
                     fee_rate=CLIENT.max_fee_rate)
    (ended,) = effects
    assert isinstance(ended, ReanchorEnded) and "unasked" in ended.reason
    assert rec(pump.client).pending is None


def test_unasked_terms_of_a_payout_the_server_pays_are_signed(version: int) -> None:
    pump = opened(version)
    before = rec(pump.client)
    effects = quoted(pump, False)  # C's expiry, the acknowledged total, at FEE_RATE
    assert [m.type for m in sends(effects)] == [T.REANCHOR_SIGNED]
    pending = rec(pump.client).pending
    assert pending is not None and pending.change == before.change  # we pay nothing


AUTOPILOT = ClientPolicy(VALUE, reanchoring=True, refill_below=400_000, refill_to=VALUE,
                         max_deposit=2 * VALUE, renew_before=3600)


def test_an_autopilot_client_answers_an_unasked_payout_with_its_own_proposal(
        version: int) -> None:
    """The server's unasked payout reached a client whose autopilot wants a top-up: signing
    the payout alone would leave the top-up for later (and the server, knowing of each new
    generation first, would quote first every time). It is offered to the autopilot, which
    proposes its own; the answer pays the payout too, in one R."""
    pump = opened(version, policy=AUTOPILOT)
    (offered,) = quoted(pump, False)  # C's expiry, the acknowledged total
    assert isinstance(offered, ReanchorOffered) and offered.payout == rec(pump.client).paid
    assert rec(pump.client).pending is None  # nothing signed yet
    (propose,) = sends(pump.client.reanchor(200_000, 0, NOW))
    assert propose.type == T.REANCHOR_PROPOSE and propose.reanchor_propose.top_up == 200_000
    assert pump.client.accept_offer() == []  # the offer was superseded by our proposal
    (fund,) = quoted(pump, False)  # the server's answer: the payout, funded by our top-up
    assert isinstance(fund, FundReanchor) and fund.draft.outputs[1].value > 0


def test_an_autopilot_client_wanting_nothing_signs_the_offered_payout(version: int) -> None:
    pump = opened(version, policy=AUTOPILOT)
    before = rec(pump.client)
    (offered,) = quoted(pump, False)
    assert isinstance(offered, ReanchorOffered)
    assert [m.type for m in sends(pump.client.accept_offer())] == [T.REANCHOR_SIGNED]
    pending = rec(pump.client).pending
    assert pending is not None and pending.payout == before.paid
    assert pending.change == before.change  # the payout costs us nothing


def test_an_offer_is_not_signed_once_the_channel_is_closing(version: int) -> None:
    pump = opened(version, policy=AUTOPILOT)
    (offered,) = quoted(pump, False)
    assert isinstance(offered, ReanchorOffered)
    pump.client.close()
    assert pump.client.accept_offer() == [] and rec(pump.client).pending is None


def test_an_unasked_payout_crossing_our_renewal_waits_for_its_answer(version: int) -> None:
    """Our PROPOSE (a renewal) and the server's unasked payout crossed on the wire: the
    payout alone is not taken for the answer (it would drop the renewal); the answer that
    renews, next, is signed."""
    pump = opened(version)
    pump.client.reanchor(0, 2 * DAY, NOW)
    assert quoted(pump, False) == []  # C's expiry: the crossing quote
    assert rec(pump.client).pending is None
    effects = quoted(pump, False, expiry=NOW + 2 * DAY)
    assert [m.type for m in sends(effects)] == [T.REANCHOR_SIGNED]
    pending = rec(pump.client).pending
    assert pending is not None and pending.contract.expiry == NOW + 2 * DAY


def test_a_crossing_quote_we_would_decline_ends_the_exchange(version: int) -> None:
    pump = opened(version)
    pump.client.reanchor(0, 2 * DAY, NOW)
    (ended,) = quoted(pump, False, payout=rec(pump.client).paid + 1)
    assert isinstance(ended, ReanchorEnded) and "acknowledged" in ended.reason


def test_a_top_up_our_wallet_cannot_fund_ends_and_another_may_be_asked(version: int) -> None:
    """The wallet failed to fund R (no coins): nothing is signed, the exchange ends with
    the wallet's reason, and the next re-anchor is not refused as one in flight."""
    pump = opened(version)
    pump.client.reanchor(300_000, 0, NOW)
    (fund,) = quoted(pump, False)
    assert isinstance(fund, FundReanchor)
    with pytest.raises(LocalProtocolError, match="in flight"):
        pump.client.reanchor(300_000, 0, NOW)
    (ended,) = pump.client.reanchor_unfunded("Insufficient funds")
    assert isinstance(ended, ReanchorEnded) and "Insufficient funds" in ended.reason
    assert ended.tx is None and rec(pump.client).pending is None
    with pytest.raises(LocalProtocolError, match="no re-anchor is being funded"):
        pump.client.reanchor_unfunded("again")
    (propose,) = sends(pump.client.reanchor(300_000, 0, NOW))
    assert propose.type == T.REANCHOR_PROPOSE


@pytest.mark.parametrize(("rate", "signed"), [
    (reanchor_rate_ceiling(FEE_RATE, CLIENT.max_fee_rate), True),
    (reanchor_rate_ceiling(FEE_RATE, CLIENT.max_fee_rate) + 1, False),
])
def test_a_renewal_we_asked_for_pays_at_most_our_estimate_and_its_slack(
        rate: int, signed: bool, version: int) -> None:
    """Review 4: the rate was capped only by `max_fee_rate`; now by our node's estimate plus
    REANCHOR_RATE_SLACK percent and 1 sat/vB."""
    pump = opened(version)
    expiry = NOW + 2 * DAY
    effects = quoted(pump, fee_estimate=FEE_RATE, expiry=expiry, fee_rate=rate)
    if signed:
        assert [m.type for m in sends(effects)] == [T.REANCHOR_SIGNED]
        return
    (ended,) = effects
    assert isinstance(ended, ReanchorEnded) and "above our cap" in ended.reason


def test_the_servers_lock_alone_never_drops_the_contract(version: int) -> None:
    """Review 7: a REANCHOR_LOCKED right after the ACK moved the client to C' on the
    server's word: C's refund data gone, and if R then died, nothing left to refund. Now
    the client stays on C (R pending) until its own node shows R confirmed; it signs on
    both meanwhile, and a server that did promote counts those payments on C'."""
    pump = opened(version)
    renewed(pump)
    pump.client_sees_r = False
    before = rec(pump.client)
    assert before.pending is not None
    effects = pump.client.receive(wire(messages.reanchor_locked(before.pending.txid)))
    assert effects == [ReanchorLocked(before)] and rec(pump.client) == before
    pump.run(pump.server.reanchor_confirmed(reanchor.promoted(rec(pump.server))), "server")
    assert rec(pump.client) == before  # the honest lock: still our node's word to wait for
    pump.run(pump.client.pay(1_000))
    assert pump.sent("client")[-1].update_payment.next_signature
    client, server = rec(pump.client), rec(pump.server)
    assert client.pending is not None and server.generation == 1
    assert server.change == client.pending.change  # the same payment, counted on C'
    pump.run(pump.client.reanchor_confirmed(reanchor.promoted(client)))  # our node confirms
    assert rec(pump.client).contract_txid == server.contract_txid
    pump.run(pump.client.pay(1_000))
    assert rec(pump.server).change == rec(pump.client).change


def test_pipelined_proposals_prepare_one_quote(version: int) -> None:
    """Review 5: PROPOSEs received in one batch each asked the wallet and the node; one
    PrepareReanchor now answers them all, and one the adapter could not answer does not
    block the next."""
    pump = opened(version)
    server = pump.server
    batch = [wire(messages.reanchor_propose(0, 2 * DAY)) for _ in range(20)]
    effects, taken = server.receive_pipelined(batch, NOW)
    assert taken == 20 and [type(e) for e in effects] == [PrepareReanchor]
    (refused,) = sends(server.reanchor_unquoted("the server cannot quote now: no estimate"))
    assert refused.type == T.REANCHOR_REFUSED
    effects, _ = server.receive_pipelined(batch[:1], NOW)
    assert [type(e) for e in effects] == [PrepareReanchor]


def test_a_payment_answered_after_the_promotion_counts_on_the_new_contract(version: int) -> None:
    """A payment signed on both contracts is received, then the channel is promoted (the
    watcher's input), then the payment is answered: the server's acknowledged change is the
    payment's on the new contract. Counted on the old one, the next quote (found by the
    living test) asked a payout larger than paid by the top-up, which the client refused."""
    pump = opened(version)
    renewed(pump, top_up=100_000)
    (update,) = sends(pump.client.pay(2_000))
    effects = pump.server.receive(update)
    (received,) = [e for e in effects if isinstance(e, PaymentReceived)]
    pump.server.reanchor_confirmed(reanchor.promoted(rec(pump.server)))
    sends(pump.server.payment_answered(received))
    paid_on_new = rec(pump.server).contract.value - rec(pump.server).change
    (terms,) = sends(pump.server.quote_reanchor(FEE_RATE, PAYOUT, NOW))
    assert terms.reanchor_terms.payout == paid_on_new == 2_000

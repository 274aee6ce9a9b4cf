"""The channel protocol's HTTP face: offers and their Payment challenge, bodies of frames, the
Payment credential and the receipt."""

from __future__ import annotations

import base64
import json

import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.errors import PaidHttpError
from bitcoind_paychan.transport import decode, encode
from bitcoind_paychan.transport.paidhttp import (
    Credential,
    Offer,
    challenge,
    credential,
    join_frames,
    parse_credential,
    read_credential,
    read_receipt,
    receipt,
    split_frames,
)
from bitcoind_paychan.transport.paidhttp.wire import b64url
from bitcoind_paychan.wire import pb

T = pb.TwoWayChannelMessage
OFFER = Offer(price=100, endpoint="http://h/paychan", min_channel_value=100_000,
              open_payment=1_000, versions=(2, 3))


def payment(change: int) -> bytes:
    message = T(type=T.UPDATE_PAYMENT)
    message.update_payment.client_change_value = change
    message.update_payment.signature = b"\x30" * 8
    return encode([message])[0]


def token(data: object) -> str:
    return "Payment " + b64url(json.dumps(data).encode())


def test_an_offer_reads_back_as_written() -> None:
    assert Offer.from_json(OFFER.to_json()) == OFFER
    metered = Offer(price=2, endpoint="e", min_channel_value=1, open_payment=1, versions=(3,),
                    unit="byte", reserve=5_000)
    assert Offer.from_json(metered.to_json()) == metered
    assert (OFFER.needed, metered.needed) == (100, 5_000)


def test_a_402_that_is_not_an_offer_says_so() -> None:
    with pytest.raises(PaidHttpError, match="not an offer"):
        Offer.from_json('{"price": 100}')


def test_the_challenge_is_a_payment_scheme_carrying_the_offer() -> None:
    value = challenge(OFFER, 'api.example:80')
    assert value.startswith('Payment id="')
    params = dict(part.strip().split("=", 1) for part in value[len("Payment "):].split(","))
    assert params["realm"] == '"api.example:80"'
    assert (params["method"], params["intent"]) == ('"paychan"', '"session"')
    request = params["request"].strip('"')
    assert "=" not in request  # base64url without padding
    decoded = json.loads(base64.urlsafe_b64decode(request + "=" * (-len(request) % 4)))
    assert decoded["price"] == 100 and decoded["endpoint"] == "http://h/paychan"
    assert challenge(OFFER, "h") != challenge(OFFER, "h")  # each has its own id


def test_frames_travel_in_a_body_in_order() -> None:
    frames = encode([messages.payment_ack(), messages.channel_open()])
    assert split_frames(join_frames(frames)) == frames


def test_a_body_cut_inside_a_frame_is_refused() -> None:
    with pytest.raises(PaidHttpError, match="ends inside a frame"):
        split_frames(join_frames([payment(5_000)])[:-2])


def test_a_credential_names_its_session_and_frame() -> None:
    value = credential("s1", payment(5_000))
    assert value.startswith("Payment ") and "=" not in value
    session, frame, message = read_credential(value)
    assert (session, frame) == ("s1", payment(5_000))
    assert message.update_payment.client_change_value == 5_000


@pytest.mark.parametrize(("value", "why"), [
    ("no-scheme", "must be 'Payment <base64url JSON"),
    ("Bearer abc", "must be 'Payment <base64url JSON"),
    ("Payment " + "A" * 5000, "at most 4096"),
    ("Payment %%%", "not valid base64url"),
    ("Payment " + b64url(b"\xff\xfe"), "does not hold base64url JSON"),
    ("Payment " + b64url(b"[1]"), "does not hold a JSON object"),
    (token({"method": "card", "payload": {}}), "expected method 'paychan'"),
    (token({"method": "paychan", "payload": {"session": "s"}}), "a payment .a string., or a seq"),
    (token({"method": "paychan", "payload": {"payment": "AA"}}), "needs a session"),
    (token({"method": "paychan", "payload": {"session": "s", "seq": 0}}), "or a seq"),
    (token({"method": "paychan", "payload": {"session": "s", "seq": True}}), "or a seq"),
    (token({"method": "paychan", "payload": {"session": "s", "seq": 3}}), "carries no payment"),
    (token({"method": "paychan", "payload": {"session": "s", "payment": b64url(b"\xff\xff")}}),
     "does not hold a protocol message"),
    (token({"method": "paychan", "payload": {
        "session": "s", "payment": b64url(encode([messages.payment_ack()])[0])}}),
     "carries a PAYMENT_ACK, not an UPDATE_PAYMENT"),
])
def test_a_credential_that_is_not_one_is_refused(value: str, why: str) -> None:
    with pytest.raises(PaidHttpError, match=why.replace("(", r"\(")):
        read_credential(value)


def test_a_credential_that_spends_credit_names_its_session_and_request_number() -> None:
    value = credential("s1", None, 7)
    assert parse_credential(value) == Credential("s1", seq=7)
    assert parse_credential(credential("s1", payment(5_000))).frame == payment(5_000)


def test_a_receipt_without_a_payment_has_no_ack() -> None:
    found = read_receipt(receipt(b"", 10, 90))
    assert (found.ack, found.charged, found.credit) == (b"", 10, 90)


def test_a_receipt_carries_a_payment_ack_and_the_charge() -> None:
    ack = encode([messages.payment_ack()])[0]
    found = read_receipt(receipt(ack, 120, 380))
    assert decode(found.ack).type == T.PAYMENT_ACK
    assert (found.charged, found.credit) == (120, 380)
    with pytest.raises(PaidHttpError, match="does not carry a PAYMENT_ACK"):
        read_receipt(receipt(payment(1), 1, 0))
    with pytest.raises(PaidHttpError, match="expected ack, charged, credit"):
        read_receipt(b64url(b'{"ack": "AA"}'))
    assert found.frames == () and found.answer == (ack,)  # the ack alone: no frames field
    assert "frames" not in json.loads(base64.urlsafe_b64decode(receipt(ack, 1, 0, [ack])
                                                               + "=="))


def test_a_receipt_carries_what_the_server_sent_with_the_ack_in_order() -> None:
    ack, *others = encode([messages.payment_ack(), messages.reanchor_locked("ab" * 32),
                           messages.reanchor_terms(1, 2, b"s", 3)])
    answer = (others[0], ack, others[1])  # the lock waited in the session; the terms after
    found = read_receipt(receipt(ack, 100, 200, answer))
    assert (found.ack, found.frames, found.answer) == (ack, answer, answer)
    assert (found.charged, found.credit) == (100, 200)
    for frames in ([others[0], others[1]], [ack, others[0], ack]):
        with pytest.raises(PaidHttpError, match="must hold its ack once"):
            read_receipt(receipt(ack, 100, 200, frames))
    body = json.loads(base64.urlsafe_b64decode(receipt(ack, 1, 0, answer) + "=="))
    body["frames"] = body["frames"][:-2]  # cut inside its last frame
    with pytest.raises(PaidHttpError, match="ends inside a frame"):
        read_receipt(b64url(json.dumps(body).encode()))

"""The example's HTTP face of the protocol: offers, frame bodies, payment and ack headers."""

from __future__ import annotations

import base64

import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.transport import decode, encode
from bitcoind_paychan.wire import pb

from paid_http.offer import (
    BadFrames,
    Offer,
    ack_header,
    join_frames,
    payment_header,
    read_ack_header,
    read_payment_header,
    split_frames,
)

T = pb.TwoWayChannelMessage


def payment(change: int) -> bytes:
    message = T(type=T.UPDATE_PAYMENT)
    message.update_payment.client_change_value = change
    message.update_payment.signature = b"\x30" * 8
    return encode([message])[0]


def test_an_offer_reads_back_as_written() -> None:
    offer = Offer(price=100, endpoint="http://h/paychan", min_channel_value=100_000,
                  open_payment=1_000, versions=(2, 3))
    assert Offer.from_json(offer.to_json()) == offer


def test_a_402_that_is_not_an_offer_says_so() -> None:
    with pytest.raises(BadFrames, match="not an offer"):
        Offer.from_json('{"price": 100}')


def test_frames_travel_in_a_body_in_order() -> None:
    frames = encode([messages.payment_ack(), messages.channel_open()])
    assert split_frames(join_frames(frames)) == frames


def test_a_body_cut_inside_a_frame_is_refused() -> None:
    with pytest.raises(BadFrames, match="ends inside a frame"):
        split_frames(join_frames([payment(5_000)])[:-2])


def test_a_payment_header_names_its_session_and_frame() -> None:
    session, frame, message = read_payment_header(payment_header("s1", payment(5_000)))
    assert (session, frame) == ("s1", payment(5_000))
    assert message.update_payment.client_change_value == 5_000


@pytest.mark.parametrize(("header", "why"), [
    ("no-colon", "must be '<session>:"),
    (":" + base64.b64encode(payment(1)).decode(), "must be '<session>:"),
    ("s1:%%%", "not valid base64"),
    ("s1:" + base64.b64encode(b"\xff\xff").decode(), "does not hold a protocol message"),
    ("s1:" + base64.b64encode(encode([messages.payment_ack()])[0]).decode(),
     "carries a PAYMENT_ACK, not an UPDATE_PAYMENT"),
])
def test_a_payment_header_that_is_not_one_is_refused(header: str, why: str) -> None:
    with pytest.raises(BadFrames, match=why.replace("(", r"\(")):
        read_payment_header(header)


def test_an_ack_header_carries_a_payment_ack_only() -> None:
    ack = encode([messages.payment_ack()])[0]
    assert decode(read_ack_header(ack_header(ack))).type == T.PAYMENT_ACK
    with pytest.raises(BadFrames, match="does not carry a PAYMENT_ACK"):
        read_ack_header(ack_header(payment(1)))

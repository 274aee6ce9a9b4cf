"""Message encode/decode and validation."""

from __future__ import annotations

import pytest

from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from bitcoind_paychan.wire import (
    MessageType,
    decode_message,
    encode_message,
    error_code,
    error_message,
    pb,
    type_name,
)


def _syntax_error(payload: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_message(payload)
    assert info.value.code == ErrorCode.SYNTAX_ERROR


def test_roundtrip_update_payment() -> None:
    msg = pb.TwoWayChannelMessage(
        type=MessageType.UPDATE_PAYMENT,
        update_payment=pb.UpdatePayment(client_change_value=5000, signature=b"\x30sig", info=b"i"),
    )
    assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize(
    "kind", [MessageType.CHANNEL_OPEN, MessageType.CLOSE, MessageType.PAYMENT_ACK]
)
def test_types_without_required_body(kind: MessageType.ValueType) -> None:
    msg = pb.TwoWayChannelMessage(type=kind)  # bitcoinj sends PAYMENT_ACK bare when no info
    assert decode_message(encode_message(msg)).type == kind


def test_close_with_settlement() -> None:
    msg = pb.TwoWayChannelMessage(type=MessageType.CLOSE, settlement=pb.Settlement(tx=b"tx"))
    assert decode_message(encode_message(msg)).settlement.tx == b"tx"


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"])
def test_garbage_rejected(garbage: bytes) -> None:
    _syntax_error(garbage, "do not parse")


def test_missing_type_rejected() -> None:
    _syntax_error(b"", "missing required field.*type")
    _syntax_error(b"\x08\x0c", "missing required field.*type")  # unknown type 12


def test_missing_nested_required_field_rejected() -> None:
    payload = b"\x08\x01\x12\x02\x10\x00"  # CLIENT_VERSION without major
    _syntax_error(payload, r"client_version\.major")


@pytest.mark.parametrize(
    "kind",
    [
        MessageType.CLIENT_VERSION,
        MessageType.SERVER_VERSION,
        MessageType.INITIATE,
        MessageType.PROVIDE_REFUND,
        MessageType.RETURN_REFUND,
        MessageType.PROVIDE_CONTRACT,
        MessageType.UPDATE_PAYMENT,
        MessageType.ERROR,
    ],
)
def test_missing_body_rejected(kind: MessageType.ValueType) -> None:
    payload = pb.TwoWayChannelMessage(type=kind).SerializeToString()
    _syntax_error(payload, f"{MessageType.Name(kind)} message without")
    with pytest.raises(LocalProtocolError, match="without"):
        encode_message(pb.TwoWayChannelMessage(type=kind))


def test_other_body_does_not_count() -> None:
    msg = pb.TwoWayChannelMessage(type=MessageType.UPDATE_PAYMENT, payment_ack=pb.PaymentAck())
    _syntax_error(msg.SerializeToString(), "UPDATE_PAYMENT message without its update_payment")


def test_encode_refuses_invalid_and_oversized() -> None:
    with pytest.raises(LocalProtocolError, match="type"):
        encode_message(pb.TwoWayChannelMessage())
    big = pb.TwoWayChannelMessage(
        type=MessageType.PROVIDE_REFUND,
        provide_refund=pb.ProvideRefund(multisig_key=b"k", tx=bytes(40000)),
    )
    with pytest.raises(LocalProtocolError, match="limit"):
        encode_message(big)


def test_error_message() -> None:
    msg = error_message(ErrorCode.MIN_PAYMENT_TOO_LARGE, "too much", expected_value=1000)
    back = decode_message(encode_message(msg))
    assert back.type == MessageType.ERROR and type_name(back) == "ERROR"
    assert error_code(back.error) is ErrorCode.MIN_PAYMENT_TOO_LARGE
    assert error_code(pb.Error()) is ErrorCode.OTHER
    assert (back.error.explanation, back.error.expected_value) == ("too much", 1000)
    plain = error_message(ErrorCode.TIMEOUT, "x" * 100_000)
    assert not plain.error.HasField("expected_value")
    assert len(encode_message(plain)) < 2000



def test_a_bare_ack_is_bytes_serialized_once_and_equal_to_serializing_it() -> None:
    def ack() -> pb.TwoWayChannelMessage:
        return pb.TwoWayChannelMessage(type=MessageType.PAYMENT_ACK)

    assert encode_message(ack()) is encode_message(ack())
    assert encode_message(ack()) == ack().SerializeToString()
    with_info = ack()
    with_info.payment_ack.info = b"receipt"
    assert decode_message(encode_message(with_info)).payment_ack.info == b"receipt"

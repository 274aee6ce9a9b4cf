"""The schema and byte layout match bitcoinj's paymentchannel.proto (PROTOCOL.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from bitcoind_paychan.errors import ErrorCode
from bitcoind_paychan.wire import MessageType, encode_frame, encode_message, pb

REQ, OPT = True, False
NO_DEFAULT = object()
# message -> [(number, name, type, required, default)]
SCHEMA: dict[str, list[tuple[int, str, int, bool, object]]] = {
    "TwoWayChannelMessage": [
        (1, "type", F.TYPE_ENUM, REQ, NO_DEFAULT),
        (2, "client_version", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (3, "server_version", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (4, "initiate", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (5, "provide_refund", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (6, "return_refund", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (7, "provide_contract", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (8, "update_payment", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (9, "settlement", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (10, "error", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
        (11, "payment_ack", F.TYPE_MESSAGE, OPT, NO_DEFAULT),
    ],
    "ClientVersion": [
        (1, "major", F.TYPE_INT32, REQ, NO_DEFAULT),
        (2, "minor", F.TYPE_INT32, OPT, 0),
        (3, "previous_channel_contract_hash", F.TYPE_BYTES, OPT, NO_DEFAULT),
        (4, "time_window_secs", F.TYPE_UINT64, OPT, 86340),
    ],
    "ServerVersion": [
        (1, "major", F.TYPE_INT32, REQ, NO_DEFAULT),
        (2, "minor", F.TYPE_INT32, OPT, 0),
    ],
    "Initiate": [
        (1, "multisig_key", F.TYPE_BYTES, REQ, NO_DEFAULT),
        (2, "min_accepted_channel_size", F.TYPE_UINT64, REQ, NO_DEFAULT),
        (3, "expire_time_secs", F.TYPE_UINT64, REQ, NO_DEFAULT),
        (4, "min_payment", F.TYPE_UINT64, REQ, NO_DEFAULT),
    ],
    "ProvideRefund": [
        (1, "multisig_key", F.TYPE_BYTES, REQ, NO_DEFAULT),
        (2, "tx", F.TYPE_BYTES, REQ, NO_DEFAULT),
    ],
    "ReturnRefund": [(1, "signature", F.TYPE_BYTES, REQ, NO_DEFAULT)],
    "ProvideContract": [
        (1, "tx", F.TYPE_BYTES, REQ, NO_DEFAULT),
        (2, "initial_payment", F.TYPE_MESSAGE, REQ, NO_DEFAULT),
        (3, "client_key", F.TYPE_BYTES, OPT, NO_DEFAULT),
    ],
    "UpdatePayment": [
        (1, "client_change_value", F.TYPE_UINT64, REQ, NO_DEFAULT),
        (2, "signature", F.TYPE_BYTES, REQ, NO_DEFAULT),
        (3, "info", F.TYPE_BYTES, OPT, NO_DEFAULT),
    ],
    "PaymentAck": [(1, "info", F.TYPE_BYTES, OPT, NO_DEFAULT)],
    "Settlement": [(3, "tx", F.TYPE_BYTES, REQ, NO_DEFAULT)],
    "Error": [
        (1, "code", F.TYPE_ENUM, OPT, pb.Error.OTHER),
        (2, "explanation", F.TYPE_STRING, OPT, NO_DEFAULT),
        (3, "expected_value", F.TYPE_UINT64, OPT, NO_DEFAULT),
    ],
}


# Our own extensions (the v3 resume proof, the payment window, the v4 key-path close's MuSig2
# session, re-anchoring): numbers bitcoinj does not use, optional, so a bitcoinj peer skips
# them and our peers read v1/v2 messages without them.
OURS = {"TwoWayChannelMessage": {1001: "musig_nonce", 1002: "musig_partial_signature",
                                 1003: "musig_settlement", 1004: "reanchor_propose",
                                 1005: "reanchor_terms", 1006: "reanchor_signed",
                                 1007: "reanchor_ack", 1008: "reanchor_refused",
                                 1009: "reanchor_locked"},
        "ClientVersion": {1001: "reanchoring"},
        "ServerVersion": {1001: "resume_challenge", 1002: "payment_window",
                          1003: "reanchoring"},
        "UpdatePayment": {1001: "resume_proof", 1002: "next_signature"}}
OUR_TYPES = {"payment_window": F.TYPE_UINT32, "reanchoring": F.TYPE_BOOL,
             **{name: F.TYPE_MESSAGE for name in OURS["TwoWayChannelMessage"].values()
                if name.startswith("reanchor_")}}  # the others are bytes
# Messages of ours alone (re-anchoring), carried only in the fields above.
OUR_MESSAGES = {"ReanchorPropose", "ReanchorTerms", "ReanchorSigned", "ReanchorAck",
                "ReanchorRefused", "ReanchorLocked"}


@pytest.mark.parametrize("message", sorted(SCHEMA))
def test_fields_match_bitcoinj(message: str) -> None:
    desc = pb.DESCRIPTOR.message_types_by_name[message]
    got = {f.number: f for f in desc.fields if f.number not in OURS.get(message, {})}
    assert sorted(got) == sorted(n for n, *_ in SCHEMA[message])
    for number, name, ftype, required, default in SCHEMA[message]:
        f = got[number]
        assert (f.name, f.type, f.is_required, f.is_repeated) == (name, ftype, required, False)
        if default is NO_DEFAULT:
            assert not f.has_default_value, name
        else:
            assert f.has_default_value and f.default_value == default, name


@pytest.mark.parametrize(("message", "number", "name"),
                         [(m, n, name) for m, fields in OURS.items() for n, name in fields.items()])
def test_our_extensions_are_optional_far_from_bitcoinjs_numbers(message: str, number: int,
                                                                      name: str) -> None:
    field = {f.number: f for f in pb.DESCRIPTOR.message_types_by_name[message].fields}[number]
    assert (field.name, field.type, field.is_required) == (name, OUR_TYPES.get(name, F.TYPE_BYTES),
                                                           False)
    assert number > 100


def test_a_bitcoinj_peer_reads_our_extended_messages() -> None:
    """An UPDATE_PAYMENT with a resume proof still parses as bitcoinj's schema (unknown fields
    are kept aside, not an error), and its known fields are unchanged."""
    ours = pb.UpdatePayment(client_change_value=5, signature=b"s", resume_proof=b"p")
    plain = pb.UpdatePayment(client_change_value=5, signature=b"s")
    wire = ours.SerializeToString()
    assert wire.startswith(plain.SerializeToString())
    back = pb.UpdatePayment.FromString(plain.SerializeToString())
    assert not back.HasField("resume_proof")


def test_nothing_extra_in_file() -> None:
    assert sorted(pb.DESCRIPTOR.message_types_by_name) == sorted({*SCHEMA, *OUR_MESSAGES})
    proto = Path(__file__).resolve().parents[2] / "proto" / "paychan.proto"
    assert 'syntax = "proto2";' in proto.read_text()
    assert "package paymentchannels;" in proto.read_text()


def test_enums_match_bitcoinj() -> None:
    assert dict(MessageType.items()) == {
        "CLIENT_VERSION": 1, "SERVER_VERSION": 2, "INITIATE": 3, "PROVIDE_REFUND": 4,
        "RETURN_REFUND": 5, "PROVIDE_CONTRACT": 6, "CHANNEL_OPEN": 7, "UPDATE_PAYMENT": 8,
        "CLOSE": 9, "ERROR": 10, "PAYMENT_ACK": 11,
        # ours (re-anchoring), far from bitcoinj's: only on channels that negotiated it
        "REANCHOR_PROPOSE": 1001, "REANCHOR_TERMS": 1002, "REANCHOR_SIGNED": 1003,
        "REANCHOR_ACK": 1004, "REANCHOR_REFUSED": 1005, "REANCHOR_LOCKED": 1006,
    }  # fmt: skip
    assert dict(pb.Error.ErrorCode.items()) == {c.name: c.value for c in ErrorCode}


def test_fresh_v2_client_version_bytes() -> None:
    msg = pb.TwoWayChannelMessage(
        type=MessageType.CLIENT_VERSION,
        client_version=pb.ClientVersion(major=2, minor=0, time_window_secs=86340),
    )
    wire = bytes.fromhex("0000000c 0801 1208 0802 1000 20c4a205")
    assert encode_frame(encode_message(msg)) == wire
    back = pb.TwoWayChannelMessage.FromString(wire[4:])
    assert back == msg
    assert back.client_version.major == 2 and back.client_version.time_window_secs == 86340


def test_settlement_tx_is_field_3() -> None:
    settlement = pb.Settlement(tx=b"\x01\x02")
    assert settlement.SerializeToString() == b"\x1a\x02\x01\x02"  # tag (3 << 3) | 2
    msg = pb.TwoWayChannelMessage(type=MessageType.CLOSE, settlement=settlement)
    assert encode_message(msg) == b"\x08\x09" + b"\x4a\x04" + b"\x1a\x02\x01\x02"


def test_defaults() -> None:
    cv = pb.ClientVersion(major=1)
    assert (cv.minor, cv.time_window_secs) == (0, 86340)
    assert not cv.HasField("time_window_secs")
    assert cv.SerializeToString() == b"\x08\x01"  # defaults are not put on the wire
    assert pb.Error().code == pb.Error.OTHER
    assert int(pb.Error().code) == ErrorCode.OTHER
    assert pb.ServerVersion(major=2).minor == 0

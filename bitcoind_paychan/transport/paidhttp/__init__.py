"""The channel protocol over HTTP (docs/paid-http.md): `wire` (offers, the Payment challenge,
credential and receipt, bodies of frames), `sessions` (the server's side: one manager
connection per session, carried by POSTs) and `link` (the client's side)."""

from bitcoind_paychan.transport.paidhttp.link import HttpLink
from bitcoind_paychan.transport.paidhttp.sessions import Session, Sessions
from bitcoind_paychan.transport.paidhttp.wire import (
    CHALLENGE_HEADER,
    CLOSED_HEADER,
    CREDIT_HEADER,
    FRAMES_TYPE,
    MAX_FRAMES_BODY,
    PAYMENT_HEADER,
    RECEIPT_HEADER,
    SESSION_HEADER,
    Credential,
    Offer,
    Receipt,
    challenge,
    credential,
    join_frames,
    parse_credential,
    read_challenge,
    read_credential,
    read_receipt,
    receipt,
    split_frames,
)

__all__ = [
    "CHALLENGE_HEADER", "CLOSED_HEADER", "CREDIT_HEADER", "FRAMES_TYPE", "MAX_FRAMES_BODY",
    "PAYMENT_HEADER", "RECEIPT_HEADER", "SESSION_HEADER", "Credential", "HttpLink", "Offer",
    "Receipt", "Session", "Sessions", "challenge", "credential", "join_frames",
    "parse_credential", "read_challenge", "read_credential", "read_receipt", "receipt",
    "split_frames",
]

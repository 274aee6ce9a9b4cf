"""Builders for the protocol's messages (so the state machines read like the protocol)."""

from __future__ import annotations

from bitcoind_paychan.bitcoin.tx import TxOut, serialize_outputs
from bitcoind_paychan.errors import ErrorCode
from bitcoind_paychan.wire import error_message, pb

T = pb.TwoWayChannelMessage
DEFAULT_TIME_WINDOW = 24 * 3600 - 60  # bitcoinj's default, 86340 s


def client_version(major: int, time_window: int, previous_contract: str | None,
                   reanchoring: bool = False) -> T:
    msg = T(type=T.CLIENT_VERSION)
    body = msg.client_version
    body.major, body.minor, body.time_window_secs = major, 0, time_window
    if reanchoring:
        body.reanchoring = True
    if previous_contract:
        body.previous_channel_contract_hash = bytes.fromhex(previous_contract)
    return msg


def server_version(major: int, resume_challenge: bytes = b"", payment_window: int = 1,
                   reanchoring: bool = False) -> T:
    msg = T(type=T.SERVER_VERSION)
    msg.server_version.major, msg.server_version.minor = major, 0
    if reanchoring:
        msg.server_version.reanchoring = True
    if resume_challenge:
        msg.server_version.resume_challenge = resume_challenge
    if payment_window > 1:
        msg.server_version.payment_window = payment_window
    return msg


def initiate(server_pub: bytes, min_channel_size: int, expiry: int, min_payment: int) -> T:
    msg = T(type=T.INITIATE)
    body = msg.initiate
    body.multisig_key, body.min_accepted_channel_size = server_pub, min_channel_size
    body.expire_time_secs, body.min_payment = expiry, min_payment
    return msg


def provide_refund(client_pub: bytes, refund_tx: bytes) -> T:
    msg = T(type=T.PROVIDE_REFUND)
    msg.provide_refund.multisig_key, msg.provide_refund.tx = client_pub, refund_tx
    return msg


def return_refund(signature: bytes) -> T:
    msg = T(type=T.RETURN_REFUND)
    msg.return_refund.signature = signature
    return msg


def provide_contract(contract_tx: bytes, change: int, signature: bytes,
                     client_pub: bytes | None) -> T:
    msg = T(type=T.PROVIDE_CONTRACT)
    body = msg.provide_contract
    body.tx = contract_tx
    body.initial_payment.client_change_value = change
    body.initial_payment.signature = signature
    if client_pub is not None:
        body.client_key = client_pub
    return msg


def update_payment(change: int, signature: bytes, info: bytes = b"",
                   resume_proof: bytes = b"", next_signature: bytes = b"") -> T:
    msg = T(type=T.UPDATE_PAYMENT)
    body = msg.update_payment
    body.client_change_value, body.signature = change, signature
    if next_signature:
        body.next_signature = next_signature
    if info:
        body.info = info
    if resume_proof:
        body.resume_proof = resume_proof
    return msg


def payment_ack(info: bytes = b"") -> T:
    msg = T(type=T.PAYMENT_ACK)
    if info:
        msg.payment_ack.info = info
    return msg


def channel_open() -> T:
    return T(type=T.CHANNEL_OPEN)


def close(settlement_tx: bytes | None = None, *, musig_nonce: bytes = b"",
          musig_partial_signature: bytes = b"", musig_settlement: bytes = b"") -> T:
    """CLOSE: the server's with the settlement; a v4 key-path close's MuSig2 steps (ours,
    fields 1001-1003, bitcoinj skips them) with the nonce, partial signature, and the
    unsigned settlement they sign."""
    msg = T(type=T.CLOSE)
    if settlement_tx is not None:
        msg.settlement.tx = settlement_tx
    if musig_nonce:
        msg.musig_nonce = musig_nonce
    if musig_partial_signature:
        msg.musig_partial_signature = musig_partial_signature
    if musig_settlement:
        msg.musig_settlement = musig_settlement
    return msg


# -- re-anchoring (ours; docs/design/reanchoring.md) ----------------------------------------


def reanchor_propose(top_up: int, time_window: int) -> T:
    msg = T(type=T.REANCHOR_PROPOSE)
    msg.reanchor_propose.top_up, msg.reanchor_propose.time_window_secs = top_up, time_window
    return msg


def reanchor_terms(expiry: int, payout: int, payout_script: bytes, fee_rate: int) -> T:
    msg = T(type=T.REANCHOR_TERMS)
    body = msg.reanchor_terms
    body.expire_time_secs, body.payout = expiry, payout
    body.payout_script, body.fee_rate = payout_script, fee_rate
    return msg


def reanchor_signed(tx: bytes, expiry: int, payout: int, fee_rate: int, change: int,
                    next_signature: bytes, client_signature: bytes,
                    spent: tuple[TxOut, ...] = ()) -> T:
    msg = T(type=T.REANCHOR_SIGNED)
    body = msg.reanchor_signed
    body.tx, body.expire_time_secs, body.payout, body.fee_rate = tx, expiry, payout, fee_rate
    body.client_change_value, body.next_signature = change, next_signature
    body.client_signature = client_signature
    if spent:
        body.spent_outputs = serialize_outputs(spent)
    return msg


def reanchor_ack(tx: bytes) -> T:
    msg = T(type=T.REANCHOR_ACK)
    msg.reanchor_ack.tx = tx
    return msg


def reanchor_refused(explanation: str) -> T:
    msg = T(type=T.REANCHOR_REFUSED)
    msg.reanchor_refused.explanation = explanation
    return msg


def reanchor_locked(txid: str) -> T:
    msg = T(type=T.REANCHOR_LOCKED)
    msg.reanchor_locked.txid = bytes.fromhex(txid)
    return msg


def error(code: ErrorCode, explanation: str, expected_value: int | None = None) -> T:
    return error_message(code, explanation, expected_value)

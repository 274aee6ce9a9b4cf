"""The codec of the store: ChannelRecord, ChainState and ChannelSummary <-> rows of columns.

Engine-independent: every SQL engine stores these columns (its own types and DDL live beside the
engine: `sqlite_schema.py`, `postgres_schema.py`), so one record reads back the same from each.
To store a new ChannelRecord field: add its column to CHANNEL_COLUMNS, `encode` and `decode`, and
a migration step to each engine's schema. A new ChainState field likewise: CHAIN_COLUMNS,
`encode_chain`, `decode_chain`.

A channel's identity (decided here for every engine, docs/design/reanchoring.md 9 and 12): its
row is keyed by its *channel id*, generation 0's contract txid, in the `contract_txid` column
(so every row stored before re-anchoring existed keeps its key). It never changes when the
channel is re-anchored: the current contract's txid is `current_txid` ('' while generation 0,
whose contract txid is the key), every superseded generation is a row of `generations`, and a
re-anchor in flight is the `next_*` columns (`next_state` '': none).
"""

from __future__ import annotations

from typing import Any

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, parse_outputs, serialize_outputs
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import (
    ChannelRecord,
    ChannelStatus,
    PendingReanchor,
    Role,
)
from bitcoind_paychan.errors import DecodeError, StoreError
from bitcoind_paychan.store.base import ChannelSummary

# The store schema's version, the same for every engine: each engine's migrations lead to it.
SCHEMA_VERSION = 7

KEY_COLUMNS = ("role", "contract_txid")  # contract_txid: the channel id (see above)
# Version 7: the generation chain and a pending re-anchor (last, so older rows are a prefix).
REANCHOR_COLUMNS = (
    "generation",
    "current_txid",
    "next_txid",
    "next_state",
    "next_tx",
    "next_expiry",
    "next_value",
    "next_payout",
    "next_fee_rate",
    "next_change",
    "next_signature",
    "next_spent",
)
# A pending re-anchor's state, as `next_state` holds it ('': none pending).
SIGNED, COMPLETE, REFUSED = "signed", "complete", "refused"
GENERATION_COLUMNS = ("role", "channel_id", "generation", "contract_txid", "contract_tx",
                      "expiry", "value", "reanchor_txid", "payout", "promoted_at")
CHANNEL_COLUMNS = (
    *KEY_COLUMNS,
    "version",
    "client_pub",
    "server_pub",
    "expiry",
    "outpoint_index",
    "value",
    "contract_tx",
    "key_secret",
    "change",
    "signature",
    "status",
    "refund_tx",
    "settlement_tx",
    "peer",
    "payments",
    *REANCHOR_COLUMNS,
)
CHAIN_COLUMNS = (
    *KEY_COLUMNS,
    "contract_height",
    "spender",
    "spender_height",
    "conflict_height",
    "broadcast_height",
    "fee_rate",
)

SUMMARY_COLUMNS = (*KEY_COLUMNS, "version", "status", "value", "paid", "payments", "peer",
                   "expiry", "closing_txid", "to_client", "to_server", "fee", "opened_at",
                   "closed_at", "contract_tx", "closing_tx")


def encode(record: ChannelRecord) -> tuple[Any, ...]:
    """The row of `record`, in CHANNEL_COLUMNS order, keyed by its channel id."""
    c = record.contract
    return (
        Role(record.role).value,
        record.channel_id,
        c.version,
        c.client_pub,
        c.server_pub,
        c.expiry,
        c.outpoint.index,
        c.value,
        record.contract_tx,
        record.key.secret,
        record.change,
        record.signature,
        ChannelStatus(record.status).value,
        record.refund_tx or b"",  # these columns are NOT NULL: empty for None
        record.settlement_tx or b"",
        record.peer,
        record.payments,
        record.generation,
        c.txid if record.generation else "",
        *encode_pending(record.pending),
    )


def pending_state(pending: PendingReanchor | None) -> str:
    if pending is None:
        return ""
    return COMPLETE if pending.complete else REFUSED if pending.refused else SIGNED


def pending_txid(pending: PendingReanchor | None) -> str:
    return "" if pending is None else pending.txid


def encode_pending(pending: PendingReanchor | None) -> tuple[Any, ...]:
    """The `next_*` columns of a pending re-anchor (empty values for none)."""
    if pending is None:
        return ("", "", b"", 0, 0, 0, 0, 0, b"", b"")
    return (pending.txid, pending_state(pending), pending.tx, pending.contract.expiry,
            pending.contract.value, pending.payout, pending.fee_rate, pending.change,
            pending.signature, serialize_outputs(pending.spent) if pending.spent else b"")


def _decode_pending(contract: Contract, next_txid: str, state: str, tx: bytes, expiry: int,
                    value: int, payout: int, fee_rate: int, change: int, signature: bytes,
                    spent: bytes) -> PendingReanchor | None:
    if not state:
        return None
    if state not in (SIGNED, COMPLETE, REFUSED):
        raise ValueError(f"unknown re-anchor state {state!r}")
    nxt = Contract(contract.version, contract.client_pub, contract.server_pub, expiry,
                   OutPoint.from_hex(next_txid, 0), value)
    return PendingReanchor(bytes(tx), nxt, payout, fee_rate, change, bytes(signature),
                           complete=state == COMPLETE, refused=state == REFUSED,
                           spent=parse_outputs(bytes(spent)) if spent else ())


def decode(row: tuple[Any, ...], source: str) -> ChannelRecord:
    """The ChannelRecord of a row in CHANNEL_COLUMNS order; StoreError if it does not decode."""
    (role, txid, version, client_pub, server_pub, expiry, index, value, contract_tx, secret,
     change, signature, status, refund_tx, settlement_tx, peer, payments, generation,
     current_txid, *pending) = row
    try:
        contract = Contract(version, client_pub, server_pub, expiry,
                            OutPoint.from_hex(current_txid or txid, index), value)
        return ChannelRecord(Role(role), contract, contract_tx, PrivateKey(secret), change,
                             signature, ChannelStatus(status),
                             bytes(refund_tx) or None, bytes(settlement_tx) or None, peer, payments,
                             generation, txid if current_txid else "",
                             _decode_pending(contract, *pending))
    except (DecodeError, ValueError) as e:
        raise StoreError(
            f"{role} channel {txid} in {source} does not decode ({e}); the store is damaged or "
            "was edited by hand: restore it from a backup"
        ) from e


def encode_chain(role: Role, contract_txid: str, state: ChainState) -> tuple[Any, ...]:
    """The chain_state row of `state`, in CHAIN_COLUMNS order."""
    return (
        Role(role).value,
        contract_txid,
        int(state.contract_height),
        bytes(state.spender),
        int(state.spender_height),
        int(state.conflict_height),
        int(state.broadcast_height),
        int(state.fee_rate),
    )


def decode_chain(row: tuple[Any, ...]) -> ChainState:
    """The ChainState of a CHAIN row (no chain_state row yet: the default)."""
    if row[0] is None:
        return ChainState()
    contract_height, spender, spender_height, conflict_height, broadcast_height, fee_rate = row
    return ChainState(contract_height, bytes(spender), spender_height, conflict_height,
                      broadcast_height, fee_rate)


def encode_summary(summary: ChannelSummary) -> tuple[Any, ...]:
    """The history row of `summary`, in SUMMARY_COLUMNS order."""
    return tuple(Role(summary.role).value if name == "role" else
                 ChannelStatus(summary.status).value if name == "status" else
                 getattr(summary, name) for name in SUMMARY_COLUMNS)


def decode_summary(row: tuple[Any, ...]) -> ChannelSummary:
    """The ChannelSummary of a history row in SUMMARY_COLUMNS order."""
    values = dict(zip(SUMMARY_COLUMNS, row, strict=True))
    values["role"], values["status"] = Role(values["role"]), ChannelStatus(values["status"])
    values["contract_tx"], values["closing_tx"] = (bytes(values["contract_tx"]),
                                                   bytes(values["closing_tx"]))
    return ChannelSummary(**values)

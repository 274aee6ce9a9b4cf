"""The codec of the store: ChannelRecord, ChainState and ChannelSummary <-> rows of columns.

Engine-independent: every SQL engine stores these columns (its own types and DDL live beside the
engine: `sqlite_schema.py`, `postgres_schema.py`), so one record reads back the same from each.
To store a new ChannelRecord field: add its column to CHANNEL_COLUMNS, `encode` and `decode`, and
a migration step to each engine's schema. A new ChainState field likewise: CHAIN_COLUMNS,
`encode_chain`, `decode_chain`.
"""

from __future__ import annotations

from typing import Any

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import DecodeError, StoreError
from bitcoind_paychan.store.base import ChannelSummary

# The store schema's version, the same for every engine: each engine's migrations lead to it.
SCHEMA_VERSION = 6

KEY_COLUMNS = ("role", "contract_txid")
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
    """The row of `record`, in CHANNEL_COLUMNS order."""
    c = record.contract
    return (
        Role(record.role).value,
        c.txid,
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
    )


def decode(row: tuple[Any, ...], source: str) -> ChannelRecord:
    """The ChannelRecord of a row in CHANNEL_COLUMNS order; StoreError if it does not decode."""
    (role, txid, version, client_pub, server_pub, expiry, index, value, contract_tx, secret,
     change, signature, status, refund_tx, settlement_tx, peer, payments) = row
    try:
        contract = Contract(version, client_pub, server_pub, expiry,
                            OutPoint.from_hex(txid, index), value)
        return ChannelRecord(Role(role), contract, contract_tx, PrivateKey(secret), change,
                             signature, ChannelStatus(status),
                             bytes(refund_tx) or None, bytes(settlement_tx) or None, peer, payments)
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

"""Real ChannelRecords for store tests."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role


class Channel:
    """A real contract with fresh keys; `record(role)` is either side's view of it."""

    def __init__(self, value: int = 100_000, version: int = 3) -> None:
        self.client_key, self.server_key = PrivateKey.generate(), PrivateKey.generate()
        tx = Transaction(2, (TxIn(OutPoint(os.urandom(32), 0)),),
                         (TxOut(value, b"\x00\x20" + bytes(32)),), 0)
        self.contract_tx = tx.serialize()
        self.contract = Contract(version, self.client_key.pub.data, self.server_key.pub.data,
                                 1_700_000_000, OutPoint(Transaction.parse(self.contract_tx).txid,
                                                         0), value)

    @property
    def txid(self) -> str:
        return self.contract.txid

    def record(self, role: Role = Role.SERVER, **overrides: Any) -> ChannelRecord:
        key = self.client_key if role == Role.CLIENT else self.server_key
        value = self.contract.value
        rec = ChannelRecord(role, self.contract, self.contract_tx, key, value,
                            self.contract.sign_payment(self.client_key, value))
        return replace(rec, **overrides)

    def full_record(self, role: Role, status: ChannelStatus) -> ChannelRecord:
        """A record in which no field keeps its default."""
        change = self.contract.value - 12_345
        return self.record(
            role, change=change, signature=self.contract.sign_payment(self.client_key, change),
            status=status, refund_tx=b"refund" * 20, settlement_tx=b"settle" * 30,
            peer="paychan.example:4242", payments=7,
        )

    def pay(self, rec: ChannelRecord, amount: int) -> ChannelRecord:
        change = rec.change - amount
        return rec.with_payment(change, self.contract.sign_payment(self.client_key, change))


def assert_same(got: ChannelRecord | None, want: ChannelRecord) -> None:
    """Field-by-field equality (PrivateKey compares by identity, so keys compare by secret)."""
    assert got is not None
    for f in fields(ChannelRecord):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, PrivateKey):
            assert a.secret == b.secret, f.name
        else:
            assert a == b, f.name

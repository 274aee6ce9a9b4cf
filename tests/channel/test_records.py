"""ChannelRecord: the hot path's copy is the plain dataclass copy."""

from __future__ import annotations

from dataclasses import replace

from bitcoind_paychan.channel.records import ChannelStatus
from tests.store.helpers import Channel


def test_with_payment_is_replace_of_change_signature_and_count() -> None:
    record = Channel().record(status=ChannelStatus.CLOSING, peer="a:1", payments=4)
    paid = record.with_payment(90_000, b"sig")
    assert paid == replace(record, change=90_000, signature=b"sig", payments=5)
    assert (record.change, record.payments) == (100_000, 4)  # the original is untouched

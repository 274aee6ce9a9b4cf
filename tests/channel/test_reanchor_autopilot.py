"""The autopilot's pure decisions (channel/reanchor_autopilot.py): when each side re-anchors
on its own, and how much the client has deposited."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.reanchor_autopilot import client_wish, deposited, server_wish
from bitcoind_paychan.channel.server import ServerPolicy
from tests.channel.test_reanchor import NOW, VALUE, opened, rec

LIVING = ClientPolicy(VALUE, reanchoring=True, refill_below=400_000, refill_to=450_000,
                      max_deposit=600_000, renew_before=3600)


@dataclass(frozen=True)
class Superseded:
    value: int
    payout: int


def test_the_client_tops_up_below_refill_below_and_renews_within_renew_before() -> None:
    record = rec(opened(paid=20_000).client)  # 479,000 left, expiring a day from NOW
    assert client_wish(LIVING, record, NOW, VALUE) is None
    low = replace(record, change=390_000)
    assert client_wish(LIVING, low, NOW, VALUE) == (60_000, 0)
    late = record.contract.expiry - 3600
    assert client_wish(LIVING, record, late - 1, VALUE) is None
    assert client_wish(LIVING, replace(record, change=449_000), late, VALUE) == (
        1_000, LIVING.time_window)  # a top-up to refill_to rides along with the renewal


def test_a_top_up_stops_at_max_deposit_and_none_below_dust() -> None:
    low = replace(rec(opened().client), change=390_000)
    assert client_wish(LIVING, low, NOW, 580_000) == (20_000, 0)
    assert client_wish(LIVING, low, NOW, 599_600) is None  # 400 sat: below dust


def test_nothing_while_a_re_anchor_is_pending_or_when_off() -> None:
    record = replace(rec(opened().client), change=390_000)
    assert client_wish(replace(LIVING, refill_below=0, renew_before=0), record, NOW, 0) is None
    pump = opened()
    pump.run(pump.client.reanchor(0, 2 * 24 * 3600, NOW))
    assert rec(pump.client).pending is not None
    assert client_wish(LIVING, replace(rec(pump.client), change=1_000), NOW, 0) is None


def test_the_server_quotes_once_payout_above_is_acknowledged_or_the_expiry_is_near() -> None:
    policy = ServerPolicy(reanchoring=True, payout_above=20_000, renew_before=12_000)
    record = rec(opened(paid=10_000).server)  # 11,000 acknowledged
    assert server_wish(policy, record, record.change, NOW) is None
    assert server_wish(policy, record, record.change - 9_000, NOW) == (True, 0)
    near = record.contract.expiry - 12_000
    assert server_wish(policy, record, record.change, near) == (False, policy.min_time_window)
    too_late = record.contract.expiry - policy.settle_margin - 3600
    assert server_wish(policy, record, record.change, too_late) is None  # it settles instead


def test_deposited_counts_the_opening_value_and_every_top_up() -> None:
    record = rec(opened().client)  # its contract: 500,000
    assert deposited(record, []) == VALUE
    # 400,000; a payout of 20,000 (500 of fees from the channel) → 379,500; a top-up of
    # 120,500 → 500,000: deposited 400,000 + 120,500
    chain = [Superseded(400_000, 20_000), Superseded(379_500, 0)]
    assert deposited(record, chain) == 400_000 + 120_500

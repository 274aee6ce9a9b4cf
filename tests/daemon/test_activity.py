"""The dashboard's activity: per role, by minute for the hour, and the live rate; and which
block the can-settle check needs kept."""

from __future__ import annotations

from bitcoind_paychan.daemon.activity import LIVE, MINUTES, Activity
from bitcoind_paychan.daemon.health import oldest_contract_height
from bitcoind_paychan.service.watcher import ChannelView

NOW = 1_700_000_000.5  # half a second into a second (and into a minute's 20th second)


def test_roles_count_apart_by_minute_with_the_live_rate_beside_the_hours() -> None:
    activity = Activity()
    for second in range(int(NOW) - LIVE, int(NOW)):  # 2 a second for the last 10 s
        activity.record(500, received=True, now=second, count=2)
    activity.record(7, received=True, now=NOW)  # the second in progress: not in the rate
    activity.record(100, received=False, now=NOW - 1800)  # half an hour ago, client
    series = activity.series(NOW)
    server, client = series["server"], series["client"]
    assert len(series["minutes"]) == MINUTES and series["minutes"][-1] == int(NOW) // 60 * 60
    assert server["rate_live"] == 2.0 and client["rate_live"] == 0.0
    assert (server["total"], server["amount"]) == (21, 5_007)
    assert server["rate_hour"] == 21 / 3600
    assert (client["total"], client["amount"]) == (1, 100)
    assert client["payments"][MINUTES - 1 - 30] == 1 and sum(client["payments"]) == 1
    assert sum(server["amounts"]) == 5_007


def test_an_hour_later_nothing_is_left_and_the_live_rate_falls_to_zero() -> None:
    activity = Activity()
    activity.record(500, received=False, now=NOW - 1)
    assert activity.series(NOW)["client"]["rate_live"] == 1 / LIVE
    assert activity.series(NOW + LIVE)["client"]["rate_live"] == 0
    later = activity.series(NOW + 3600)["client"]
    assert (later["total"], later["amount"], sum(later["payments"])) == (0, 0, 0)


def test_rebuilt_from_the_stored_seconds_as_if_recorded_then() -> None:
    rebuilt, recorded = Activity(), Activity()
    # The last: a whole hour before the first, so in the same minute's place of the ring.
    stored = [(int(NOW) - 3000, 3, 300), (int(NOW) - 5, 2, 40), (int(NOW) - 6600, 9, 9)]
    rebuilt.rebuild("server", stored)
    for second, count, amount in stored:
        recorded.record(amount, received=True, now=second, count=count)
    assert rebuilt.series(NOW) == recorded.series(NOW)
    assert rebuilt.series(NOW)["server"]["total"] == 5  # the one over an hour old is not
    assert rebuilt.series(NOW)["server"]["rate_live"] == 2 / LIVE


def test_the_oldest_unsettled_contract_block_is_what_pruning_must_keep() -> None:
    def view(status: str, confirmations: int) -> ChannelView:
        return ChannelView(role="server", contract_txid="ab" * 32, version=3, status=status,
                           value=100_000, paid=0, change=100_000, payments=1, peer="", expiry=0,
                           deadline=0, contract_confirmations=confirmations,
                           closing_txid=None, closing_confirmations=0)

    views = [view("open", 10), view("closing", 50), view("settled", 90), view("open", 0)]
    assert oldest_contract_height(views, tip=200) == 151  # 50 confirmations at tip 200
    assert oldest_contract_height([view("open", 0), view("settled", 5)], tip=200) is None

"""Re-anchoring by hand through two daemons and the CLI (issue 23): `paychan renew` and
`paychan topup` on the client, `paychan payout` on the server; `getchannel` shows the
re-anchor in flight and the metrics count them. Real regtest node."""

from __future__ import annotations

import urllib.request

import yaml

from tests.daemon.test_daemon import Daemons, daemons, metric

__all__ = ["daemons"]  # the fixture


def enable_reanchoring(daemons: Daemons) -> None:
    for name, section, extra in (("server", "server", {}),
                                 ("client", "client", {"max_deposit": 6_000_000})):
        path = daemons.config(name)
        config = yaml.safe_load(path.read_text())
        config[section].update({"reanchoring": True, **extra})
        path.write_text(yaml.safe_dump(config))


def test_renew_topup_and_payout_through_the_cli(daemons: Daemons) -> None:
    enable_reanchoring(daemons)
    daemons.start("server")
    daemons.start("client")
    channels = []
    for _ in range(3):
        opened = daemons.json("client", "open", "shop", "400000", "--new")
        assert opened["version"] == 4  # the newest kind that re-anchors
        channels.append(opened["contract_txid"])
        daemons.cli("client", "pay", opened["contract_txid"], "2000", "--repeat", "5")
    renewing, topping, paying_out = channels

    renewed = daemons.json("client", "renew", renewing, "--window", "200000")
    assert renewed["state"] == "complete" and renewed["payout"] == 11_000
    topped = daemons.json("client", "topup", topping, "100000")
    assert topped["value"] == 400_000 + 100_000 - topped["payout"]
    too_much = daemons.cli("client", "topup", topping, "9000000", check=False)
    assert too_much.returncode != 0 and "max_deposit" in too_much.stderr

    quoted = daemons.json("server", "payout", paying_out)
    assert quoted["quoted"]["payout"] == 11_000
    # The client signs the quote on its connection as it pays; the server's ACK follows.
    daemons.cli("client", "pay", paying_out, "1000", "--repeat", "3")
    server_view = daemons.json("server", "getchannel", paying_out)
    assert server_view["reanchor_state"] == "complete", server_view
    assert server_view["reanchor_txid"] in daemons.node.rpc("getrawmempool")
    assert server_view["generations"] == []  # promoted only once R confirms
    shown = daemons.cli("client", "getchannel", paying_out).stdout
    assert server_view["reanchor_txid"] in shown

    scraped = urllib.request.urlopen(
        f"http://127.0.0.1:{daemons.metrics_port}/metrics", timeout=10).read().decode()
    expected = {'paychan_reanchors_total{kind="renewal"}': 1,
                'paychan_reanchors_total{kind="topup"}': 1,
                'paychan_reanchors_total{kind="payout"}': 3,
                "paychan_reanchor_payout_sat_total": 33_000,
                'paychan_reanchors_pending{role="server"}': 3}
    assert {sample: metric(scraped, sample) for sample in expected} == expected

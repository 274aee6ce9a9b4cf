"""The daemon's gateway on a real regtest node: a real upstream sold per request and per
byte through channels a client opens at the gateway's endpoint, the payments stored by the
daemon's server, the channel settled on chain with the exact total."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bitcoind_paychan.gateway.payer import Payer
from bitcoind_paychan.node import Bitcoind
from bitcoind_paychan.service.client import ClientManager
from bitcoind_paychan.service.regtest import regtest_ports
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport.http import WebServer
from bitcoind_paychan.transport.paidhttp import Offer, read_receipt
from bitcoind_paychan.transport.paidhttp.link import http_dialer
from regtest.node import RegtestNode, free_port, regtest_nodes
from tests.conftest import config_for, running_daemon
from tests.gateway.conftest import Upstream, upstream_app

PRICE = 50


@pytest.fixture(scope="module")
def node() -> Any:
    with regtest_nodes(1) as (node,):
        yield node


def test_the_daemons_gateway_sells_an_upstream_on_a_real_node(node: RegtestNode,
                                                                tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str]:
        upstream = Upstream("")
        up = WebServer(upstream_app(upstream), "127.0.0.1", 0)
        host, port = await up.start()
        root = f"http://{host}:{port}"
        listen = f"127.0.0.1:{free_port()}"
        gateway = {"enabled": True, "listen": listen, "routes": [
            {"path": "/api", "upstream": root + "/api", "price": PRICE},
            {"path": "/bytes", "upstream": root, "per": "byte", "price": 1,
             "quantity": 100, "reserve": 2_000}]}
        store = SQLiteStore(tmp_path / "client.db")
        wallet = regtest_ports(Bitcoind(config_for(node)))
        (tmp_path / "daemon").mkdir()
        try:
            async with (running_daemon(node, tmp_path / "daemon", gateway=gateway) as daemon,
                        aiohttp.ClientSession() as http,
                        ClientManager(wallet, store, dial=http_dialer(http),
                                      poll_interval=0.2) as client):
                url = f"http://{listen}"
                async with http.get(url + "/api/hello") as response:
                    assert response.status == 402
                    offer = Offer.from_json(await response.text())
                payer = Payer(client, 300_000)
                total = 0
                for n in range(5):
                    payment = await payer.pay(offer, PRICE)
                    async with http.get(f"{url}/api/hello?n={n}",
                                        headers=payment.header) as response:
                        assert response.status == 200, await response.text()
                        assert (await response.json())["query"] == {"n": str(n)}
                        receipt = await payment.settle(response.headers)
                    assert receipt is not None and receipt.charged == PRICE
                    total += PRICE
                payment = await payer.pay(offer, 2_000)
                async with http.get(url + "/bytes/api/data?n=12345",
                                    headers=payment.header) as response:
                    assert len(await response.read()) == 12_345
                    receipt = read_receipt(response.headers["Payment-Receipt"])
                    await payment.settle(response.headers)
                assert receipt.charged == 124  # 12,345 bytes at 1 sat / 100, rounded up
                total += 2_000
                assert daemon.server is not None
                (view,) = [v for v in daemon.server.views() if v.status == "open"]
                assert view.paid == 1_000 + total
                channel = await payer.channel(offer)
                settlement = await channel.close()
                return view.paid, settlement.txid_hex
        finally:
            store.close()
            await up.stop()

    paid, txid = asyncio.run(scenario())
    assert paid == 1_000 + 5 * PRICE + 2_000
    log = (tmp_path / "daemon" / "daemon.log").read_text()  # the access log: what for what
    assert log.count(f"charged {PRICE} sat (paid {PRICE}, credit 1000) for GET /api/hello") == 5
    assert "charged 124 sat (paid 2000, credit 2876) for GET /bytes/api/data -> 200" in log
    node.mine(1)
    assert node.rpc("getrawtransaction", txid, True)["confirmations"] == 1

"""node_api against a real node: only allow-listed methods are called, the node's error is a
400 (charged by the gateway: the work was done), the node unreachable a 502 (not charged),
and the block stream sends the tip then each new block."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from bitcoind_paychan.transport.http import WebServer
from regtest.node import regtest_nodes
from tests.examples.node_api import EXAMPLE

from node_api.app import Node, app

assert EXAMPLE.exists()


def test_the_allow_list_the_nodes_errors_and_the_block_stream(tmp_path: Path) -> None:
    with regtest_nodes(1) as (node,):
        async def scenario() -> None:
            async with aiohttp.ClientSession() as http:
                up = WebServer(app(Node(http, node.rpc_url, node.cookie_path),
                                   ("getblockcount", "getblockhash")), "127.0.0.1", 0)
                host, port = await up.start()
                down = WebServer(app(Node(http, "http://127.0.0.1:1", node.cookie_path)),
                                 "127.0.0.1", 0)
                down_host, down_port = await down.start()
                url = f"http://{host}:{port}"
                try:
                    async with http.post(url + "/rpc/getblockcount") as answer:
                        assert answer.status == 200
                        height = (await answer.json())["result"]
                    async with http.post(url + "/rpc/stop") as answer:
                        assert answer.status == 403
                        assert "not on this API's allow-list" in await answer.text()
                    async with http.post(url + "/rpc/getblockhash", data=b"[-5]") as answer:
                        assert answer.status == 400
                        assert (await answer.json())["error"]["code"] == -8
                    async with http.post(url + "/rpc/getblockhash", data=b"{}") as answer:
                        assert answer.status == 400  # not an array: not called
                    async with http.post(f"http://{down_host}:{down_port}/rpc/getblockcount"
                                         ) as answer:
                        assert answer.status == 502
                    async with http.get(url + "/blocks?count=2") as answer:
                        first = await answer.content.readuntil(b"\n\n")
                        assert json.loads(first.split(b"data: ")[1])["height"] == height
                        await asyncio.to_thread(node.mine, 1)
                        rest = await answer.read()
                    events = [line for line in rest.split(b"\n") if line.startswith(b"data:")]
                    assert [json.loads(e[5:])["height"] for e in events] == [height + 1]
                finally:
                    await up.stop()
                    await down.stop()
        asyncio.run(scenario())

"""`python -m node_api`: a node's read-only RPC and its new blocks over HTTP, the upstream that
`paychan gateway` sells (each route a method, priced per call; /blocks per second).

    python -m node_api --rpc-url http://127.0.0.1:8332 --cookie ~/.bitcoin/.cookie \\
        --listen 127.0.0.1:8080 [--allow getblock --allow ...]

- `GET|POST /rpc/<method>`: calls `method` on the node with the JSON array in the body (or
  none: no parameters) if it is on the allow-list, answers `{"result": ...}`. A method off
  the list: 403, not called. The node's error for the call (bad parameters, unknown block):
  400 with `{"error": {"code", "message"}}` (the work was done: the gateway charges it). The
  node unreachable: 502 (the gateway does not charge a 5xx).
- `GET /blocks`: Server-Sent Events, `event: block` with `{"height", "hash", "time", "txs"}`
  for the tip, then each new one; `?count=N` ends after N blocks. A comment every second
  while no block comes (so a client that left is noticed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

READ_ONLY = ("getbestblockhash", "getblock", "getblockchaininfo", "getblockcount",
             "getblockhash", "getblockheader", "getblockstats", "getchaintips",
             "getdifficulty", "getmempoolinfo", "getrawmempool", "getrawtransaction",
             "gettxout", "estimatesmartfee")
WAIT_MS = 1_000  # waitfornewblock's timeout: a heartbeat at least this often


class RpcError(Exception):
    """The node answered the call with an error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "error"))
        self.error = error


class Node:
    """JSON-RPC calls to bitcoind, authenticated with its cookie (read at each call: it
    changes when the node restarts)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, cookie: Path) -> None:
        self.http, self.url, self.cookie = http, url, cookie

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        secret = base64.b64encode(self.cookie.read_text().strip().encode()).decode()
        body = {"jsonrpc": "1.0", "id": "node_api", "method": method, "params": list(params)}
        async with self.http.post(self.url, json=body,
                                  headers={"Authorization": f"Basic {secret}"}) as answer:
            found = await answer.json(content_type=None)
        if found.get("error"):
            raise RpcError(found["error"])
        return found["result"]


def app(node: Node, allowed: Sequence[str] = READ_ONLY) -> web.Application:
    async def rpc(request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if method not in allowed:
            return web.json_response({"error": {"code": -32601, "message": f"{method} is not "
                                      "on this API's allow-list"}}, status=403)
        params: Any = []
        if request.body_exists:
            try:
                params = json.loads(await request.read() or b"[]")
            except ValueError:
                params = None
            if not isinstance(params, list):
                return web.json_response({"error": {"code": -32700, "message": "expected a "
                                          "JSON array of parameters"}}, status=400)
        try:
            return web.json_response({"result": await node.call(method, params)})
        except RpcError as exc:
            return web.json_response({"error": exc.error}, status=400)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return web.json_response({"error": {"code": -1, "message": f"the node: {exc}"}},
                                     status=502)

    async def blocks(request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("count", "0"))  # 0: without end
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                             "Cache-Control": "no-store"})
        await answer.prepare(request)
        sent, tip = 0, await node.call("getbestblockhash")
        while True:
            header = await node.call("getblockheader", [tip])
            block = {"height": header["height"], "hash": tip, "time": header["time"],
                     "txs": header["nTx"]}
            await answer.write(f"event: block\ndata: {json.dumps(block)}\n\n".encode())
            sent += 1
            if count and sent >= count:
                break
            while (found := await node.call("waitfornewblock", [WAIT_MS]))["hash"] == tip:
                await answer.write(b": waiting\n\n")
            tip = found["hash"]
        await answer.write_eof()
        return answer

    application = web.Application()
    application.router.add_route("*", "/rpc/{method}", rpc)
    application.router.add_get("/blocks", blocks)
    return application


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m node_api", description=__doc__.split("\n")[0])
    top.add_argument("--rpc-url", default="http://127.0.0.1:8332", help="(%(default)s)")
    top.add_argument("--cookie", type=Path, required=True, help="bitcoind's .cookie")
    top.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (%(default)s)")
    top.add_argument("--allow", action="append", metavar="METHOD",
                     help="a method to serve (repeatable; default: the read-only ones)")
    args = top.parse_args(argv)
    allowed = tuple(args.allow or READ_ONLY)
    asyncio.run(serve(args.rpc_url, args.cookie, args.listen, allowed))
    return 0


async def serve(url: str, cookie: Path, listen: str, allowed: Sequence[str]) -> None:
    host, _, port = listen.rpartition(":")
    async with aiohttp.ClientSession() as http:
        runner = web.AppRunner(app(Node(http, url, cookie), allowed))
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        print(f"node API on http://{listen}/rpc/<method> and /blocks", file=sys.stderr,
              flush=True)
        stopped = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
        await stopped.wait()
        await runner.cleanup()

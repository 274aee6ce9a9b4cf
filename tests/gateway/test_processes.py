"""`paychan gateway` in its own process on a real regtest node, selling a real aiohttp
upstream, and the clients of the product paying it: httpx (async and synchronous), curl (a
plain client: the 402, then a credential carried by hand) and `paychan fetch` (opening its
channel on first use, resuming it in the next process, topping up a metered SSE stream,
refusing an offer over its cap), a chunked download and a WebSocket paid per byte. The
gateway's own control API and access log show what was paid and charged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml

from bitcoind_paychan.gateway.client import paying, paying_in_thread
from bitcoind_paychan.gateway.payer import Payer
from bitcoind_paychan.node import Bitcoind
from bitcoind_paychan.service.regtest import regtest_ports
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport.http import WebServer
from bitcoind_paychan.transport.paidhttp import read_challenge, read_receipt
from regtest.node import RegtestNode, free_port, regtest_nodes
from regtest.waiting import wait_until
from tests.conftest import config_for
from tests.gateway.conftest import EVENT_SIZE, Upstream, upstream_app

PAYCHAN = [sys.executable, "-m", "bitcoind_paychan.cli"]
PRICE = 20
OPEN = 1_000


@dataclass
class Running:
    """The gateway's process (`url`), its configuration, and the upstream behind it."""

    url: str
    config: Path
    upstream: Upstream
    process: subprocess.Popen[bytes]
    node: RegtestNode
    loop: asyncio.AbstractEventLoop  # the upstream's

    def frame(self, data: bytes | None) -> None:
        """Have the upstream's WebSocket send `data` (None: close)."""
        self.loop.call_soon_threadsafe(self.upstream.frames.put_nowait, data)

    def paychan(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PAYCHAN, "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout)

    def paid_in_all(self) -> int:
        """What the gateway's server holds from its open channels (its control API)."""
        done = self.paychan("--json", "listchannels", "open")
        assert done.returncode == 0, done.stderr
        return sum(int(c["paid"]) for c in json.loads(done.stdout))


@contextlib.contextmanager
def threaded_upstream() -> Iterator[tuple[Upstream, asyncio.AbstractEventLoop]]:
    """The upstream on an event loop of its own thread: the tests block while it serves."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    upstream = Upstream("")
    server = WebServer(upstream_app(upstream), "127.0.0.1", 0)
    host, port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    upstream.url = f"http://{host}:{port}"
    try:
        yield upstream, loop
    finally:
        loop.call_soon_threadsafe(upstream.release.set)
        loop.call_soon_threadsafe(upstream.frames.put_nowait, None)
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def gateway_config(node: RegtestNode, tmp: Path, upstream: str, listen: str) -> dict[str, Any]:
    return {
        "bitcoind": {"url": node.rpc_url, "cookie_file": str(node.cookie_path),
                     "wallet": node.wallet, "poll_interval": 0.2},
        "server": {"listen": f"127.0.0.1:{free_port()}"},
        "client": {"enabled": True},  # `paychan gateway` runs without it all the same
        "gateway": {"listen": listen, "routes": [
            {"path": "/api", "upstream": upstream + "/api", "price": PRICE},
            {"path": "/meter", "upstream": upstream, "per": "byte", "price": 1,
             "quantity": 10, "reserve": 2_000}]},
        "store": {"path": str(tmp / "gateway.db")},
        "control": {"listen": f"127.0.0.1:{free_port()}",
                    "cookie_file": str(tmp / "control.cookie")},
        "logging": {"file": str(tmp / "gateway.log")},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("gateway")
    listen = f"127.0.0.1:{free_port()}"
    with regtest_nodes(1) as (node,), threaded_upstream() as (upstream, loop):
        config = tmp / "paychan.yaml"
        config.write_text(yaml.safe_dump(gateway_config(node, tmp, upstream.url, listen)))
        process = subprocess.Popen([*PAYCHAN, "gateway", "--config", str(config)])
        running = Running(f"http://{listen}", config, upstream, process, node, loop)
        try:
            wait_until(lambda: _answers(running.url + "/api/x"), 60, interval=0.2,
                       what="the gateway to answer")
            yield running
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 402
    except httpx.TransportError:
        return False


def test_paychan_gateway_runs_only_the_gateway_and_its_server(gateway: Running) -> None:
    info = gateway.paychan("--json", "getinfo")
    assert info.returncode == 0, info.stderr
    found = json.loads(info.stdout)
    assert found["client"] is None and found["server"] is not None  # client.enabled ignored
    assert list(found["channels"]) == ["server"]
    answer = httpx.get(gateway.url + "/api/hello")
    assert answer.status_code == 402
    offer = read_challenge(answer.headers["WWW-Authenticate"])
    assert (offer.price, offer.unit, offer.endpoint) == (PRICE, "request",
                                                        gateway.url + "/paychan")


def test_httpx_async_and_sync_clients_pay_the_gateways_process(gateway: Running,
                                                                tmp_path: Path) -> None:
    wallet = regtest_ports(Bitcoind(config_for(gateway.node)))
    store = SQLiteStore(tmp_path / "client.db")
    before = gateway.paid_in_all()

    async def scenario() -> int:
        async with (paying(wallet, store, 200_000, poll_interval=0.2) as auth,
                    httpx.AsyncClient(auth=auth) as http):
            for n in range(3):
                response = await http.get(f"{gateway.url}/api/hello", params={"n": n})
                assert response.status_code == 200 and response.json()["query"] == {"n": str(n)}
            return auth.paid

    try:
        paid = asyncio.run(scenario())
        assert paid == OPEN  # the opening's credit pays them: no payment of their own
        with paying_in_thread(regtest_ports(Bitcoind(config_for(gateway.node))), store,
                              200_000, poll_interval=0.2) as auth:
            response = httpx.get(gateway.url + "/api/sync", auth=auth)  # resumes the channel
            assert response.status_code == 200 and response.json()["path"] == "/api/sync"
            assert read_receipt(response.headers["Payment-Receipt"]).charged == PRICE
            paid += auth.paid
    finally:
        store.close()
    assert gateway.paid_in_all() - before == paid


def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of `curl -s -D - ARGS`."""
    done = subprocess.run(["curl", "-s", "-D", "-", *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_curl_gets_the_402_and_is_served_with_a_credential_carried_by_hand(
        gateway: Running, tmp_path: Path) -> None:
    status, headers, body = curl(gateway.url + "/api/curl")
    assert status == 402 and json.loads(body)["price"] == PRICE
    assert 'method="paychan"' in headers["WWW-Authenticate"]
    offer = read_challenge(headers["WWW-Authenticate"])
    wallet = regtest_ports(Bitcoind(config_for(gateway.node)))
    store = SQLiteStore(tmp_path / "client.db")

    async def scenario() -> None:
        async with paying(wallet, store, 200_000, poll_interval=0.2) as auth:
            payer: Payer = auth.payer
            payment = await payer.pay(offer, PRICE)
            credential = payment.header["Authorization"]
            status, headers, body = await asyncio.to_thread(
                curl, "-H", f"Authorization: {credential}", gateway.url + "/api/curl?by=curl")
            assert status == 200 and json.loads(body)["query"] == {"by": "curl"}
            receipt = await payment.settle(headers)
            assert receipt is not None and receipt.charged == PRICE
            status, _, body = await asyncio.to_thread(  # the same credential again
                curl, "-H", f"Authorization: {credential}", gateway.url + "/api/curl")
            assert status == 402 and "not new" in json.loads(body)["error"]

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert gateway.upstream.seen[-1][0] == "/api/curl?by=curl"  # the replay not forwarded


def test_paychan_fetch_opens_resumes_tops_up_and_refuses_over_its_caps(
        gateway: Running, tmp_path: Path) -> None:
    store = str(tmp_path / "fetch.db")
    out = tmp_path / "hello.json"
    first = gateway.paychan("fetch", "--store", store, "-o", str(out), "-H", "X-Who: fetch",
                            gateway.url + "/api/hello?n=1")
    assert first.returncode == 0, first.stderr
    assert json.loads(out.read_text()) == {"path": "/api/hello", "query": {"n": "1"}}
    # The opening payment's credit (the endpoint says it) pays it.
    assert f"paid {OPEN} sat; charged {PRICE} sat, credit {OPEN - PRICE}" in \
        first.stderr
    assert gateway.upstream.seen[-1][1]["X-Who"] == "fetch"
    posted = gateway.paychan("fetch", "--store", store, "-X", "PUT", "-d", "abc",
                             gateway.url + "/api/put")  # a new process: resumes the channel
    assert posted.returncode == 0, posted.stderr
    assert json.loads(posted.stdout)["path"] == "/api/put"
    assert f"paid 0 sat; charged {PRICE} sat" in posted.stderr  # no new opening: its credit
    events = gateway.paychan("fetch", "--store", store, "--max-request", "20000",
                             gateway.url + "/meter/api/events?n=600")
    assert events.returncode == 0, events.stderr
    data = [line for line in events.stdout.splitlines() if line.startswith("data: 0")]
    assert len(data) == 600  # every event, the stream topped up as it asked
    assert "event: payment-required" in events.stdout and "topping up" in events.stderr
    refused = gateway.paychan("fetch", "--store", store, "--max-request", str(PRICE - 1),
                              gateway.url + "/api/hello")
    assert refused.returncode == 1
    assert f"asks {PRICE} sat for a request" in refused.stderr
    assert f"over the cap of {PRICE - 1} sat per request" in refused.stderr
    unpaid = gateway.paychan("fetch", "--store", str(tmp_path / "new.db"), "--max-total", "5",
                             gateway.url + "/api/hello")  # a new channel: its opening payment
    assert unpaid.returncode == 1
    assert f"opening payment of {OPEN} sat would bring the total paid to {OPEN} sat, over " \
           "the cap of 5 (max_total)" in unpaid.stderr
    log = (gateway.config.parent / "gateway.log").read_text()
    assert f"charged {-(-600 * EVENT_SIZE // 10)} sat" in log  # the stream, as it was sent


def test_a_chunked_download_and_a_websocket_are_paid_per_byte_through_the_process(
        gateway: Running, tmp_path: Path) -> None:
    store_path = str(tmp_path / "fetch.db")
    out = tmp_path / "data.bin"
    fetched = gateway.paychan("fetch", "--store", store_path, "-o", str(out),
                              gateway.url + "/meter/api/data?n=15000&chunked=1")
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == b"x" * 15_000
    wallet = regtest_ports(Bitcoind(config_for(gateway.node)))
    store = SQLiteStore(tmp_path / "client.db")

    async def scenario() -> None:
        async with paying(wallet, store, 200_000, poll_interval=0.2) as auth:
            offer = read_challenge(httpx.get(gateway.url + "/meter/api/ws").headers[
                "WWW-Authenticate"])
            payment = await auth.payer.pay(offer, offer.reserve)  # 2,000 sat: 20,000 bytes
            async with aiohttp.ClientSession() as http:
                socket = await http.ws_connect(gateway.url + "/meter/api/ws",
                                               headers=payment.header)
                assert await payment.settle(socket._response.headers) is not None
                for n in range(3):
                    gateway.frame(bytes([n]) * 5_000)
                    assert await socket.receive_bytes() == bytes([n]) * 5_000
                gateway.frame(None)
                assert (await socket.receive()).type == aiohttp.WSMsgType.CLOSE
                await socket.close()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    log = gateway.config.parent / "gateway.log"
    assert re.search(r"charged 1500 sat \(paid \d+, credit \d+\) for GET /meter/api/data",
                     log.read_text())  # 15,000 bytes at 1 sat per 10
    wait_until(lambda: re.search(r"charged 1500 sat \(paid 2000, credit \d+\) for a WebSocket "
                                 r"on /meter/api/ws", log.read_text()), 30,
               what="the WebSocket's access-log line (15,000 bytes, charged as it ended)")

"""The dashboard: its login and endpoints over HTTP, then a real daemon's dashboard in a real
headless Chromium (desktop and phone viewports), updating live as payments flow."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bitcoind_paychan.daemon.control import ControlServer
from bitcoind_paychan.daemon.dashboard import SESSION, login_link
from regtest.node import regtest_nodes
from tests.browser import Browser, Page
from tests.daemon.test_control import DASHBOARD, TXID, FakeDaemon
from tests.test_cli import Running

# -- over HTTP, with a stand-in daemon ---------------------------------------------------------


def run(tmp_path: Path,
        scenario: Callable[[ControlServer, str, aiohttp.ClientSession], Awaitable[None]]
        ) -> None:
    async def main() -> None:
        api = FakeDaemon()
        server = ControlServer(api, "127.0.0.1", 0, tmp_path / "control.cookie")
        _, port = await server.start()
        jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP address
        try:
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                await scenario(server, f"http://127.0.0.1:{port}", http)
            assert api.calls == []  # the dashboard moves no money
        finally:
            await server.stop()

    asyncio.run(main())


def test_without_a_session_only_the_login_page(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, base: str, http: aiohttp.ClientSession) -> None:
        async with http.get(base + "/") as answer:
            assert answer.status == 401 and "paychan dashboard" in await answer.text()
            assert TXID not in await answer.text()
        for path in ("/state", "/events"):
            async with http.get(base + path) as answer:
                assert answer.status == 401
        async with http.get(base + "/login?token=" + "0" * 64) as answer:
            assert answer.status == 401 and "not valid" in await answer.text()
        async with http.post(base + "/login", data={"cookie": "__cookie__:" + "0" * 64}) as a:
            assert a.status == 401 and "not the control cookie" in await a.text()
        async with http.get(base + "/static/dashboard.css") as answer:
            assert answer.status == 200 and answer.content_type == "text/css"
        async with http.get(base + "/static/../control.py") as answer:
            assert answer.status in (401, 404)

    run(tmp_path, scenario)


def test_login_link_opens_a_session(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, base: str, http: aiohttp.ClientSession) -> None:
        assert server.cookie is not None
        async with http.get(login_link(base, server.cookie), allow_redirects=False) as answer:
            assert answer.status == 303 and answer.headers["Location"] == "/"
            cookie = answer.cookies[SESSION]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with http.get(base + "/") as answer:
            page = await answer.text()
            assert answer.status == 200 and TXID in page
            assert "http://" not in page.replace(base, "") and "https://" not in page
        async with http.get(base + "/state") as answer:
            assert await answer.json() == DASHBOARD
        async with http.get(base + "/events") as answer:
            assert answer.content_type == "text/event-stream"
            assert await answer.content.readline() == b"event: state\n"
            data = (await answer.content.readline()).decode()
            assert json.loads(data.removeprefix("data: ")) == DASHBOARD
        # A session is no key to the control API: calls still need the cookie itself.
        async with http.post(base + "/", json={"method": "stop", "id": 1}) as answer:
            assert answer.status == 401

    run(tmp_path, scenario)


def test_login_form_takes_the_cookie(tmp_path: Path) -> None:
    async def scenario(server: ControlServer, base: str, http: aiohttp.ClientSession) -> None:
        text = (tmp_path / "control.cookie").read_text()
        async with http.post(base + "/login", data={"cookie": text}) as answer:
            assert answer.status == 200 and TXID in await answer.text()  # redirected to /

    run(tmp_path, scenario)


def test_a_session_ends_with_the_daemon(tmp_path: Path) -> None:
    async def main() -> None:
        links = []
        for _ in range(2):
            server = ControlServer(FakeDaemon(), "127.0.0.1", 0, tmp_path / "control.cookie")
            _, port = await server.start()
            assert server.cookie is not None
            links.append(login_link(f"http://127.0.0.1:{port}", server.cookie))
            await server.stop()
        assert links[0].split("token=")[1] != links[1].split("token=")[1]

    asyncio.run(main())


# -- a real daemon in a real browser -----------------------------------------------------------


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def png_rows(png: bytes) -> tuple[list[bytes], int]:
    """The unfiltered rows of an 8-bit RGB(A) PNG, and its bytes per pixel."""
    width, height = png_size(png)
    assert png[24] == 8 and png[25] in (2, 6) and png[28] == 0  # 8 bits, no interlace
    channels = 3 if png[25] == 2 else 4
    data, offset = b"", 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            data += png[offset + 8:offset + 8 + length]
        offset += 12 + length
    raw, stride = zlib.decompress(data), width * channels
    rows, previous = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        rows.append(previous := unfilter(raw[start], raw[start + 1:start + 1 + stride],
                                         previous, channels))
    return rows, channels


def unfilter(kind: int, line: bytes, above: bytes, step: int) -> bytes:
    """One PNG scanline with its filter (RFC 2083 6.2) undone."""
    out = bytearray(line)
    for x in range(len(out)):
        left = out[x - step] if x >= step else 0
        up, corner = above[x], above[x - step] if x >= step else 0
        if kind == 1:
            out[x] = (out[x] + left) & 0xFF
        elif kind == 2:
            out[x] = (out[x] + up) & 0xFF
        elif kind == 3:
            out[x] = (out[x] + (left + up) // 2) & 0xFF
        elif kind == 4:
            guess = left + up - corner
            near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up),
                       (abs(guess - corner), 2, corner))
            out[x] = (out[x] + near[2]) & 0xFF
    return bytes(out)


def pixel(rows: list[bytes], x: int, y: int, channels: int) -> tuple[int, int, int]:
    r, g, b = rows[y][x * channels:x * channels + 3]
    return r, g, b


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with regtest_nodes(1) as (node,):
        running = Running(node, tmp_path_factory.mktemp("dashboard"))
        try:
            opened = running.json("open", "self", "200000")
            running.cli("pay", opened["contract_txid"], "1000", "--repeat", "5")
            yield running
        finally:
            running.stop()


def keep(name: str, png: bytes, tmp_path: Path) -> None:
    """Save a screenshot in tmp_path, and in $PAYCHAN_SCREENSHOTS (the README's) if set."""
    (tmp_path / name).write_bytes(png)
    wanted = os.environ.get("PAYCHAN_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(wanted) / name)


async def unable_to_settle_shows_red(daemon: Running, page: Page, tmp_path: Path) -> None:
    """The wallet unloaded and gone from where bitcoind looks: the settle card turns red
    with the reason; back again, it turns back."""
    node = daemon.node
    assert node.wallet is not None
    wallets = node.datadir / node.chain / "wallets"
    card = "document.getElementById('settle-card')"
    await asyncio.to_thread(node.rpc, "unloadwallet", node.wallet)
    (wallets / node.wallet).rename(wallets / "elsewhere")
    try:
        await asyncio.to_thread(daemon.cli, "getinfo")  # checks now (else within 10 s)
        await page.wait_for(f"{card}.classList.contains('bad')")
        text = await page.evaluate(f"{card}.innerText")
        assert "CANNOT settle" in text and "wallet_not_loaded" in text
        assert await page.evaluate(f"getComputedStyle({card}).backgroundColor") == (
            "rgb(192, 57, 43)")  # red
        keep("dashboard-cannot-settle.png", await page.screenshot(), tmp_path)
    finally:
        (wallets / "elsewhere").rename(wallets / node.wallet)
    await asyncio.to_thread(daemon.cli, "getinfo")
    await page.wait_for(f"{card}.classList.contains('ok')")


def test_dashboard_in_a_browser_updates_live(daemon: Running, tmp_path: Path) -> None:
    link = daemon.json("dashboard")["url"]
    txid = daemon.json("listchannels")[0]["contract_txid"]
    height = daemon.node.rpc("getblockcount")

    async def main() -> None:
        async with Browser() as browser:
            page = await browser.page(1280, 800)
            await page.goto(link)
            assert await page.evaluate("location.pathname") == "/"  # the link logged in
            await page.wait_for("document.body.dataset.live === 'yes'")  # events arrive
            text = await page.evaluate("document.body.innerText")
            assert txid in text and "up" in text and f"tip {height:,}" in text
            assert "200,000" in text and "can settle" in text  # thousands separated
            assert await page.evaluate("document.querySelectorAll('#channels tbody tr')"
                                       ".length") == 2  # the client's and the server's view
            for role in ("server", "client"):  # each role apart: its card and charts
                assert await page.evaluate(f"document.querySelectorAll('#chart-{role}-rate "
                                           "rect').length") >= 1
                assert "last hour's average" in await page.evaluate(
                    f"document.querySelector('#role-{role} .rate-hour').textContent")
                for kind in ("rate", "amount"):  # axes: values, and times every 15 min
                    chart = f"#chart-{role}-{kind}"
                    times = await page.evaluate(f"[...document.querySelectorAll('{chart} "
                                                ".x-axis text')].map(t => t.textContent)")
                    assert len(times) == 4 and all(re.fullmatch(r"\d\d:\d\d", t)
                                                   for t in times), times
                    assert await page.evaluate(f"document.querySelectorAll('{chart} .y-axis "
                                               "text').length") == 3
            live = ("parseFloat(document.querySelector('#role-{}  .rate-live').textContent"
                    ".replace(/,/g, ''))")
            streaming = asyncio.ensure_future(asyncio.to_thread(
                daemon.cli, "pay", txid, "100", "--repeat", "300"))
            await page.wait_for(f"{live.format('client')} > 0 && {live.format('server')} > 0")
            await streaming
            for role in ("server", "client"):  # the live channel's connection, each side
                await page.wait_for(f"document.querySelector('#role-{role} .open').textContent"
                                    ".includes('peers connected: 1')")
            payments = "[...document.querySelectorAll('#channels tbody tr')].map(r => " \
                       "r.cells[5].textContent).join(',')"
            before = await page.evaluate(payments)
            await asyncio.to_thread(daemon.cli, "pay", txid, "1000", "--repeat", "2")
            await page.wait_for(f"({payments}) !== {json.dumps(before)}")  # no reload
            external = await page.evaluate(
                "[...document.querySelectorAll('[href],[src]')].map(e => e.href || e.src)"
                ".filter(u => !u.startsWith(location.origin)).length")
            assert external == 0  # no CDN, nothing leaves the machine
            png = await page.screenshot()
            keep("dashboard.png", png, tmp_path)
            await unable_to_settle_shows_red(daemon, page, tmp_path)
            assert png_size(png) == (1280, 800)
            rows, channels = png_rows(png)
            assert pixel(rows, 5, 5, channels) == (0x1D, 0x23, 0x30)  # the header bar
            assert pixel(rows, 640, 400, channels) != pixel(rows, 5, 5, channels)
            assert len({row for row in rows}) > 100  # text, charts, a table: not blank

            phone = await browser.page(390, 844, mobile=True)
            await phone.goto(link)
            await phone.wait_for("document.body.dataset.live === 'yes'")
            assert await phone.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth")  # no side-scroll
            assert await phone.evaluate(
                f"document.body.innerText.includes({json.dumps(txid)})")
            widest = await phone.evaluate(
                "Math.max(...[...document.querySelectorAll('main *')].map("
                "e => e.getBoundingClientRect().right))")
            assert widest <= 390
            smallest = await phone.evaluate(
                "Math.min(...[...document.querySelectorAll('td, p, h2')].map("
                "e => parseFloat(getComputedStyle(e).fontSize)))")
            assert smallest >= 12  # readable without zooming
            keep("dashboard-phone.png", await phone.full_screenshot(), tmp_path)

    asyncio.run(main())


def test_the_last_hour_is_rebuilt_after_a_restart(daemon: Running) -> None:
    """Last in this module: it restarts the module's daemon (same store, new ports)."""

    async def state(running: Running) -> dict[str, Any]:
        link = running.json("dashboard")["url"]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(link):  # opens the session
                pass
            async with http.get(link.split("/login")[0] + "/state") as answer:
                found: dict[str, Any] = await answer.json()
                return found

    logged = daemon.json("listpayments")  # all made within this hour
    daemon.stop()
    restarted = Running(daemon.node, daemon.tmp)
    try:
        activity = asyncio.run(state(restarted))["activity"]
    finally:
        restarted.stop()
    for role in ("server", "client"):
        mine = [p["amount"] for p in logged if p["role"] == role]
        assert len(mine) > 300
        assert (activity[role]["total"], activity[role]["amount"]) == (len(mine), sum(mine))

"""A real headless Chromium, driven over the DevTools protocol (aiohttp's WebSocket client).

    async with Browser() as browser:
        page = await browser.page(390, 844, mobile=True)
        await page.goto("http://127.0.0.1:4243/login?token=...")
        await page.wait_for("document.body.dataset.live === 'yes'")
        text = await page.evaluate("document.body.innerText")
        png = await page.screenshot()

Chromium runs with a throw-away profile, on loopback only; as root it needs --no-sandbox
(Chromium's documented flag: its sandbox refuses root).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from tests.tools import chromium


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="paychan-chromium-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        args = [str(chromium()), "--headless", "--disable-gpu", "--no-first-run",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}", "--hide-scrollbars", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")
        # Its own process group: Debian's launcher is a script that does not exec, and the
        # browser's helpers (zygote, renderers, GPU) must go with it.
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"{args[0]} did not start (exit {self._process.poll()})")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._session = aiohttp.ClientSession()
        self._socket = await self._session.ws_connect(f"ws://127.0.0.1:{port}{path}",
                                                      max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._reader:
            self._reader.cancel()
        if self._socket:
            await self._socket.close()
        if self._session:
            await self._session.close()
        if self._process:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            await self._group_gone(self._process.pid)
        shutil.rmtree(self._profile, ignore_errors=True)

    @staticmethod
    async def _group_gone(group: int, seconds: float = 10.0) -> None:
        """Wait until no process of the browser's group is left (SIGKILL after `seconds`)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                deadline = time.monotonic() + seconds
            await asyncio.sleep(0.05)

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            answer = message.json()
            future = self._waiting.pop(answer.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(answer)

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> dict[str, Any]:
        """One DevTools command's result; BrowserError if it failed."""
        assert self._socket is not None
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self._socket.send_json(message)
        async with asyncio.timeout(60):
            answer = await future
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def page(self, width: int, height: int, *, mobile: bool = False) -> Page:
        """A new tab with a `width` x `height` CSS-pixel viewport."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        return page


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== "
                            "'about:blank'")

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate",
                                 {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of `expression` once it is truthy (polled)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(BrowserError):  # mid-navigation
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        """The viewport as a PNG."""
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(shot["data"])

    async def full_screenshot(self) -> bytes:
        """The whole page (beyond the viewport) as a PNG."""
        shot = await self.send("Page.captureScreenshot",
                               {"format": "png", "captureBeyondViewport": True})
        return base64.b64decode(shot["data"])

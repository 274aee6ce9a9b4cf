"""The control API (JSON-RPC over HTTP, cookie auth) and its client, over real sockets.

`FakeDaemon` stands for the daemon (the DaemonApi implementer), with canned answers."""

from __future__ import annotations

import asyncio
import base64
import grp
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bitcoind_paychan.daemon.control import ControlCookie, ControlServer, DaemonApi
from bitcoind_paychan.daemon.rpcclient import (
    BAD_ANSWER,
    NO_COOKIE,
    NOT_RUNNING,
    TIMEOUT,
    UNAUTHORIZED,
    ControlClient,
)
from bitcoind_paychan.daemon.web import MAX_BODY, WebServer
from bitcoind_paychan.errors import (
    ConfigError,
    ControlError,
    DecodeError,
    InsufficientFunds,
    LocalProtocolError,
    NodeAuthError,
    NodeError,
    NodeUnreachable,
    PaychanError,
    ProtocolError,
    RemoteProtocolError,
    StoreError,
    TransactionRejected,
    WalletNotLoaded,
    WrongNetwork,
)

TXID = "ab" * 32
CHANNEL: dict[str, Any] = {"contract_txid": TXID, "role": "client", "status": "open",
                           "value": 100_000}


DASHBOARD: dict[str, Any] = {
    "version": "0.1", "network": "regtest", "now": 1_700_000_000,
    "node": {"up": True, "height": 101, "error": None},
    "settle": {"can_settle": True, "reason": "ok", "detail": "bitcoind answers"},
    "roles": ["client"], "connections": {"server": 0, "client": 1},
    "channels": [CHANNEL | {"version": 2, "paid": 700, "change": 99_300, "payments": 3,
                            "peer": "127.0.0.1:4242", "expiry": 1_700_086_400,
                            "deadline": 1_700_072_000, "contract_confirmations": 1,
                            "closing_txid": None, "closing_confirmations": 0}],
    "activity": {"minutes": [1_700_000_000 - 60 * i for i in range(59, -1, -1)],
                 "live_seconds": 10,
                 "client": {"payments": [0] * 57 + [1, 0, 2],
                            "amounts": [0] * 57 + [100, 0, 600], "total": 3, "amount": 700,
                            "rate_live": 0.2, "rate_hour": 3 / 3600}},
}


class FakeDaemon:
    """A DaemonApi with canned data; records calls; `fail` makes the next call raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: BaseException | None = None
        self.result: Any = None  # overrides the next answer
        self.delay = 0.0

    async def _answer(self, method: str, *args: Any, default: Any) -> Any:
        self.calls.append((method, args))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return default if self.result is None else self.result

    async def getinfo(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer(
            "getinfo", default={"version": "0.1", "network": "regtest", "height": 101})
        return answer

    async def listchannels(self, state: str | None, include_forgotten: bool | None = None
                           ) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = await self._answer("listchannels", state,
                                                          include_forgotten, default=[CHANNEL])
        return answer

    async def getchannel(self, channel_id: str) -> dict[str, Any]:
        if not TXID.startswith(channel_id):
            self.calls.append(("getchannel", (channel_id,)))
            raise LocalProtocolError(f"no channel {channel_id!r}")
        answer: dict[str, Any] = await self._answer("getchannel", channel_id, default=CHANNEL)
        return answer

    async def open(self, server: str, amount: int, new: bool) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer("open", server, amount, new,
                                                    default=CHANNEL | {"value": amount})
        return answer

    async def pay(self, target: str, amount: int, info: str | None) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer(
            "pay", target, amount, info, default={"paid": amount, "ack_info": info or ""})
        return answer

    async def close(self, channel_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer(
            "close", channel_id, default={"settlement_txid": "cd" * 32})
        return answer

    async def topup(self, channel_id: str, amount: int) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer("topup", channel_id, amount,
                                                    default={"reanchor_txid": "ef" * 32})
        return answer

    async def renew(self, channel_id: str, window: int | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer("renew", channel_id, window,
                                                    default={"reanchor_txid": "ef" * 32})
        return answer

    async def payout(self, channel_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer("payout", channel_id,
                                                    default={"quoted": {"payout": 1}})
        return answer

    async def listpayments(self, channel_id: str | None, limit: int | None = None,
                           since: str | None = None) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = await self._answer(
            "listpayments", channel_id, limit, since, default=[{"amount": 5, "info": ""}])
        return answer

    async def prunehistory(self, before: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer("prunehistory", before,
                                                    default={"pruned": 0})
        return answer

    async def stop(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._answer("stop", default={"stopping": True})
        return answer

    async def dashboard(self) -> dict[str, Any]:  # not a control call: not recorded
        return DASHBOARD


def _is_api(api: DaemonApi) -> DaemonApi:
    return api


_is_api(FakeDaemon())  # mypy checks that FakeDaemon implements the protocol


class Harness:
    def __init__(self, server: ControlServer, port: int, api: FakeDaemon) -> None:
        self.server = server
        self.port = port
        self.api = api
        assert server.cookie is not None
        self.auth = server.cookie.authorization()

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def http(self, body: bytes, *, method: str = "POST", path: str = "/",
                   auth: str | None = "cookie") -> tuple[int, Any]:
        """(HTTP status, JSON answer) for a raw request."""
        headers = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close",
                   f"Content-Length: {len(body)}", "Content-Type: application/json"]
        if auth is not None:
            headers.append(f"Authorization: {self.auth if auth == 'cookie' else auth}")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        async with asyncio.timeout(5):
            answer = await reader.read(-1)
        writer.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), json.loads(payload)

    async def rpc(self, method: str, params: Any = None, call_id: Any = 7,
                  **kw: Any) -> tuple[int, Any]:
        call = {"jsonrpc": "1.0", "id": call_id, "method": method}
        if params is not None:
            call["params"] = params
        return await self.http(json.dumps(call).encode(), **kw)

    async def result(self, method: str, *params: Any) -> Any:
        status, answer = await self.rpc(method, list(params))
        assert status == 200 and answer["error"] is None, answer
        assert answer["id"] == 7
        return answer["result"]

    async def error(self, method: str, params: Any) -> tuple[int, str]:
        status, answer = await self.rpc(method, params)
        assert status == 200 and answer["result"] is None, answer
        return answer["error"]["code"], answer["error"]["message"]


def run(tmp_path: Path, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        api = FakeDaemon()
        server = ControlServer(api, "127.0.0.1", 0, tmp_path / "control" / ".cookie")
        _, port = await server.start()
        try:
            await scenario(Harness(server, port, api))
        finally:
            await server.stop()

    asyncio.run(main())


# -- the cookie ----------------------------------------------------------------------------


def test_cookie_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cookie"
    cookie = ControlCookie.create(path)
    assert re.fullmatch(r"__cookie__:[0-9a-f]{64}", path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ControlCookie.read(path) == cookie
    again = ControlCookie.create(path)  # replaces atomically
    assert again != cookie and ControlCookie.read(path) == again
    assert sorted(p.name for p in path.parent.iterdir()) == ["cookie"]  # no temporary left
    assert again.accepts(again.authorization())
    assert not again.accepts(cookie.authorization())
    ControlCookie.delete(path)
    ControlCookie.delete(path)  # already gone: fine
    with pytest.raises(ConfigError, match="is `paychan daemon` running"):
        ControlCookie.read(path)
    path.write_text("no-colon")
    with pytest.raises(ConfigError, match="malformed"):
        ControlCookie.read(path)


def operators_group() -> str:
    """A group this process may give files to, other than its own if it can (root: any)."""
    own = os.getegid()
    mine = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    return grp.getgrgid(next((gid for gid in mine if gid != own), own)).gr_name


def test_cookie_for_an_operators_group(tmp_path: Path) -> None:
    path = tmp_path / "cookie"
    group = operators_group()
    umask = os.umask(0o077)  # as under the systemd unit: the mode must not depend on it
    try:
        cookie = ControlCookie.create(path, 0o640, group)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_gid == grp.getgrnam(group).gr_gid
    assert ControlCookie.read(path) == cookie
    with pytest.raises(ConfigError, match="no group named 'no-such-group'"):
        ControlCookie.create(tmp_path / "other", 0o640, "no-such-group")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cookie"]  # nothing half-written


def test_cookie_write_failure_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the control cookie"):
        ControlCookie.create(tmp_path / "file" / "cookie")


def test_server_owns_the_cookie_while_running(tmp_path: Path) -> None:
    path = tmp_path / "control" / ".cookie"

    async def scenario(h: Harness) -> None:
        assert ControlCookie.read(path) == h.server.cookie

    run(tmp_path, scenario)
    assert not path.exists()

    async def replaced() -> None:  # another daemon took the cookie over: leave it
        server = ControlServer(FakeDaemon(), "127.0.0.1", 0, path)
        await server.start()
        other = ControlCookie.create(path)
        await server.stop()
        assert ControlCookie.read(path) == other

    asyncio.run(replaced())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_refuses_non_loopback_host(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        ControlServer(FakeDaemon(), host, 0, tmp_path / "c")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_accepts_loopback_host(tmp_path: Path, host: str) -> None:
    ControlServer(FakeDaemon(), host, 0, tmp_path / "c")


# -- dispatch ------------------------------------------------------------------------------


def test_dispatch(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        txid = TXID
        assert (await h.result("getinfo"))["height"] == 101
        assert await h.result("listchannels") == [CHANNEL]
        assert await h.result("listchannels", "open") == [CHANNEL]
        assert await h.result("listchannels", None) == [CHANNEL]
        assert await h.result("listchannels", None, True) == [CHANNEL]
        assert await h.result("getchannel", "abab") == CHANNEL
        assert (await h.result("open", "alice", 50_000))["value"] == 50_000
        assert await h.result("pay", "alice", 10) == {"paid": 10, "ack_info": ""}
        assert await h.result("pay", txid, 11, "coffee") == {"paid": 11, "ack_info": "coffee"}
        assert await h.result("close", txid) == {"settlement_txid": "cd" * 32}
        assert await h.result("listpayments") == [{"amount": 5, "info": ""}]
        assert await h.result("listpayments", txid) == [{"amount": 5, "info": ""}]
        assert await h.result("listpayments", None, 3, "2026-01-01") == [
            {"amount": 5, "info": ""}]
        assert await h.result("prunehistory", "2026-01-01") == {"pruned": 0}
        assert await h.result("stop") == {"stopping": True}
        assert h.api.calls == [
            ("getinfo", ()), ("listchannels", (None, False)),
            ("listchannels", ("open", False)), ("listchannels", (None, False)),
            ("listchannels", (None, True)), ("getchannel", ("abab",)),
            ("open", ("alice", 50_000, False)),
            ("pay", ("alice", 10, None)), ("pay", (txid, 11, "coffee")), ("close", (txid,)),
            ("listpayments", (None, None, None)), ("listpayments", (txid, None, None)),
            ("listpayments", (None, 3, "2026-01-01")),
            ("prunehistory", ("2026-01-01",)), ("stop", ()),
        ]
        # Named parameters and a missing params member.
        status, answer = await h.rpc("pay", {"target": "bob", "amount": 3, "info": "x"})
        assert answer["result"] == {"paid": 3, "ack_info": "x"}
        status, answer = await h.rpc("getinfo", call_id="abc")
        assert status == 200 and answer["id"] == "abc" and answer["error"] is None
        status, answer = await h.rpc("getinfo", call_id=None)
        assert answer["id"] is None and answer["result"]["network"] == "regtest"

    run(tmp_path, scenario)


@pytest.mark.parametrize(("method", "params", "message"), [
    ("getinfo", [1], "getinfo takes 0 parameters, got 1"),
    ("getchannel", [], "getchannel takes 1 parameter, got 0; usage: getchannel channel_id"),
    ("getchannel", [5], "channel_id must be a string, got 5"),
    ("getchannel", [""], "channel_id must not be empty"),
    ("listchannels", ["open", 1], "all must be true or false, got 1"),
    ("listpayments", [None, 0], "limit must be positive, got 0"),
    ("listpayments", [None, "3"], 'limit must be a whole number, got "3"'),
    ("listchannels", ["open", True, 1], "listchannels takes 0 to 2 parameters"),
    ("prunehistory", [], "prunehistory takes 1 parameter, got 0"),
    ("listchannels", [3], "state must be a string"),
    ("open", ["alice"], "open takes 2 to 3 parameters, got 1"),
    ("open", ["alice", 5, "yes"], "new must be true or false"),
    ("open", ["alice", 0], "amount must be positive, got 0"),
    ("open", ["alice", -5], "amount must be positive, got -5"),
    ("open", ["alice", 1.5], "amount must be a whole number of satoshis, got 1.5"),
    ("open", ["alice", "100"], 'amount must be a whole number of satoshis, got "100"'),
    ("open", ["alice", True], "amount must be a whole number of satoshis, got true"),
    ("open", [None, 100], "server must be a string, got null"),
    ("pay", ["alice", 1, 2], "info must be a string, got 2"),
    ("pay", ["alice", 1, None, 4], "pay takes 2 to 3 parameters, got 4"),
    ("pay", {"target": "a", "amount": 1, "memo": "x"}, "unknown parameter memo"),
    ("pay", {"target": "a"}, "amount must be a whole number"),
    ("close", "abc", "params must be an array or an object"),
])
def test_invalid_parameters(tmp_path: Path, method: str, params: Any, message: str) -> None:
    async def scenario(h: Harness) -> None:
        code, text = await h.error(method, params)
        assert code == -8
        assert text.startswith("invalid parameter: ")
        assert message in text
        assert h.api.calls == []

    run(tmp_path, scenario)


def test_unknown_method(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        code, text = await h.error("sendtoaddress", [])
        assert code == -32601 and "sendtoaddress" in text and "getinfo" in text
        code, _ = await h.error("_answer", [])  # not a way into the implementation
        assert code == -32601
        assert h.api.calls == []

    run(tmp_path, scenario)


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError("bad config"), -1),
    (NodeUnreachable("bitcoind is down"), -28),
    (NodeAuthError("bad rpc password"), -29),
    (WrongNetwork("mainnet node"), -30),
    (WalletNotLoaded("no wallet"), -18),
    (InsufficientFunds("too poor"), -6),
    (TransactionRejected("rejected: fee too low", reason="min relay fee not met"), -26),
    (LocalProtocolError("no channel 'ff'"), -31),
    (RemoteProtocolError("peer sent garbage"), -32),
    (StoreError("disk full"), -33),
    (NodeError("other node trouble"), -1),
    (ProtocolError("other protocol trouble"), -1),
    (DecodeError("bad bytes"), -1),
    (PaychanError("generic"), -1),
])
def test_error_mapping(tmp_path: Path, error: PaychanError, code: int) -> None:
    async def scenario(h: Harness) -> None:
        h.api.fail = error
        assert await h.error("pay", ["alice", 1]) == (code, str(error))

    run(tmp_path, scenario)


def test_no_such_channel_comes_from_the_api(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert await h.error("getchannel", ["ff"]) == (-31, "no channel 'ff'")

    run(tmp_path, scenario)


def test_internal_error_is_logged_and_server_keeps_running(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        h.api.fail = ZeroDivisionError("oops")
        with caplog.at_level(logging.ERROR, "bitcoind_paychan.daemon.control"):
            code, text = await h.error("getinfo", [])
        assert code == -1 and text.startswith("internal error")
        assert "oops" not in text
        assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)
        h.api.fail = None
        h.api.result = {"not json": object()}  # an unserialisable result
        code, _ = await h.error("getinfo", [])
        assert code == -1
        h.api.result = None
        assert (await h.result("getinfo"))["height"] == 101

    run(tmp_path, scenario)


# -- HTTP level ----------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [
    None,
    "Basic " + base64.b64encode(b"__cookie__:" + b"0" * 64).decode(),
    "Basic " + base64.b64encode(b"someone:else").decode(),
    "Basic !!!not-base64",
    "Basic ",
    "Bearer abc",
    "",
])
def test_auth_required_and_nothing_runs(tmp_path: Path, auth: str | None) -> None:
    async def scenario(h: Harness) -> None:
        for method in ("stop", "pay"):
            status, answer = await h.rpc(method, ["alice", 1] if method == "pay" else [],
                                         auth=auth)
            assert status == 401
            assert answer["result"] is None and "authentication required" in \
                answer["error"]["message"]
        # Even a request that would be a 404 or 405 says nothing without credentials.
        assert (await h.http(b"", method="GET", path="/x", auth=auth))[0] == 401
        assert h.api.calls == []

    run(tmp_path, scenario)


def test_http_errors(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        status, answer = await h.http(b"", method="PUT")
        assert status == 405 and answer["error"]["code"] == -32600
        status, answer = await h.rpc("stop", [], path="/wallet/x")
        assert status == 404 and answer["result"] is None
        status, answer = await h.http(b"{not json")
        assert status == 400 and answer["error"]["code"] == -32700
        status, answer = await h.http(b"\xff\xfe")
        assert status == 400 and answer["error"]["code"] == -32700
        status, answer = await h.http(b'[{"method": "stop"}]')
        assert status == 400 and answer["error"]["code"] == -32600
        status, answer = await h.http(b'{"id": 3, "method": 5}')
        assert status == 400 and answer["error"]["code"] == -32600 and answer["id"] == 3
        assert h.api.calls == []

    run(tmp_path, scenario)


# -- the client ----------------------------------------------------------------------------


def test_client_round_trip(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = ControlClient(h.client_url, h.server.cookie_path, timeout=5)
        assert (await asyncio.to_thread(client.call, "getinfo"))["network"] == "regtest"
        paid = await asyncio.to_thread(client.call, "pay", "alice", 12, "tea")
        assert paid == {"paid": 12, "ack_info": "tea"}
        assert await asyncio.to_thread(client.call, "listchannels", None) == [CHANNEL]
        with pytest.raises(ControlError) as error:
            await asyncio.to_thread(client.call, "pay", "alice", -1)
        assert error.value.code == -8 and "amount must be positive" in str(error.value)
        h.api.fail = InsufficientFunds("the wallet has 3 sat")
        with pytest.raises(ControlError) as error:
            await asyncio.to_thread(client.call, "open", "alice", 10**8)
        assert error.value.code == -6 and error.value.message == "the wallet has 3 sat"
        assert isinstance(error.value, PaychanError)

    run(tmp_path, scenario)


def test_client_when_daemon_not_running(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ControlCookie.create(tmp_path / "cookie")  # left over by a daemon that crashed
    client = ControlClient(f"http://127.0.0.1:{port}", tmp_path / "cookie", timeout=5)
    with pytest.raises(ControlError) as error:
        client.call("getinfo")
    assert error.value.code == NOT_RUNNING
    assert "is `paychan daemon` running? it listens on 127.0.0.1:" in str(error.value)
    client = ControlClient(f"http://127.0.0.1:{port}", tmp_path / "nothing", timeout=5)
    with pytest.raises(ControlError) as error:
        client.call("getinfo")
    assert error.value.code == NO_COOKIE
    assert f"no control cookie at {tmp_path / 'nothing'}" in str(error.value)
    assert "is `paychan daemon` running?" in str(error.value)


def test_client_with_wrong_cookie(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        stale = tmp_path / "stale-cookie"
        ControlCookie.create(stale)
        client = ControlClient(h.client_url, stale, timeout=5)
        with pytest.raises(ControlError) as error:
            await asyncio.to_thread(client.call, "stop")
        assert error.value.code == UNAUTHORIZED
        assert "refused the cookie in" in str(error.value) and str(stale) in str(error.value)
        assert h.api.calls == []

    run(tmp_path, scenario)


def test_client_timeout(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.api.delay = 2
        client = ControlClient(h.client_url, h.server.cookie_path, timeout=0.3)
        with pytest.raises(ControlError) as error:
            await asyncio.to_thread(client.call, "getinfo")
        assert error.value.code == TIMEOUT and "within 0.3s" in str(error.value)

    run(tmp_path, scenario)


def test_client_against_something_else(tmp_path: Path) -> None:
    async def not_paychan(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/", not_paychan)
        server = WebServer(app, "127.0.0.1", 0)
        _, port = await server.start()
        ControlCookie.create(tmp_path / "cookie")
        client = ControlClient(f"http://127.0.0.1:{port}", tmp_path / "cookie", timeout=5)
        try:
            with pytest.raises(ControlError) as error:
                await asyncio.to_thread(client.call, "getinfo")
            assert error.value.code == BAD_ANSWER and "is it a paychan daemon" in str(
                error.value)
        finally:
            await server.stop()

    asyncio.run(main())


# -- attacks -------------------------------------------------------------------------------


async def raw_exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


def test_content_length_of_5000_digits_is_refused_before_anything(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        raw = (b"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n{}")
        with caplog.at_level(logging.ERROR):
            answer = await raw_exchange(h.port, raw)
        assert answer.split(b" ", 2)[1] in (b"400", b"413"), answer[:200]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert h.api.calls == []
        assert (await h.result("getinfo"))["height"] == 101  # still serving

    run(tmp_path, scenario)


def test_deeply_nested_body_is_a_parse_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        with caplog.at_level(logging.ERROR):
            status, answer = await h.http(b"[" * 500_000)
        assert status == 400 and answer["error"]["code"] == -32700
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert h.api.calls == []

    run(tmp_path, scenario)


def test_body_over_the_limit_is_413_and_nothing_runs(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        body = json.dumps({"method": "stop", "pad": "x" * MAX_BODY}).encode()
        status, answer = await h.http(body)
        assert status == 413 and answer["error"]["code"] == -32600
        assert h.api.calls == []

    run(tmp_path, scenario)

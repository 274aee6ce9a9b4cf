"""The daemon's control API: JSON-RPC 1.0 over HTTP on localhost, shaped like bitcoind's.

A call is `POST /` with `{"jsonrpc": "1.0", "id": ..., "method": "...", "params": [...]}`
(params may also be an object of named parameters) and HTTP Basic credentials from the
cookie file, as bitcoin-cli does with bitcoind's `.cookie`: the daemon writes
`__cookie__:<64 hex>` (mode 0600) when it starts and deletes it when it stops. The answer is
`{"result": ..., "error": null, "id": ...}` or `{"result": null, "error": {"code": ...,
"message": ...}, "id": ...}`.

HTTP status: 200 for every answer to a call, method errors included; 401 (with a JSON
error) for missing or wrong credentials, checked before anything else so nothing runs; 404
for a path other than `/`; 405 for a method other than POST; 400 when the body is not JSON
(-32700) or not a call object (-32600).

Error codes (bitcoind's where one fits):

    code    meaning
    -1      ConfigError, any other PaychanError, or an internal error (logged)
    -6      InsufficientFunds
    -8      invalid parameter (count, type, a non-positive amount, a malformed server
            address or date: InvalidParameter); `paychan` exits with 2 (usage)
    -18     WalletNotLoaded
    -26     TransactionRejected
    -28     NodeUnreachable
    -29     NodeAuthError
    -30     WrongNetwork
    -31     LocalProtocolError (also "no such channel", "client role not enabled", ...)
    -32     RemoteProtocolError
    -33     StoreError
    -34     ChannelFailed: a channel could not be opened or used (refused, unreachable,
            gone); the message says why and what was kept
    -32600  invalid request (not a JSON-RPC call object)
    -32601  method not found
    -32700  parse error (the body is not JSON)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from bitcoind_paychan.daemon.cookie import COOKIE_USER as COOKIE_USER
from bitcoind_paychan.daemon.cookie import ControlCookie as ControlCookie
from bitcoind_paychan.daemon.dashboard import Dashboard
from bitcoind_paychan.daemon.web import WebServer, read_body
from bitcoind_paychan.errors import (
    ChannelFailed,
    ConfigError,
    InsufficientFunds,
    InvalidParameter,
    LocalProtocolError,
    NodeAuthError,
    NodeUnreachable,
    PaychanError,
    RemoteProtocolError,
    StoreError,
    TransactionRejected,
    WalletNotLoaded,
    WrongNetwork,
)
from bitcoind_paychan.logcontext import channel_logging

log = logging.getLogger(__name__)

# JSON-RPC error codes (bitcoind's numbering where one fits).
MISC_ERROR = -1
INSUFFICIENT_FUNDS = -6
INVALID_PARAMETER = -8
WALLET_NOT_LOADED = -18
TRANSACTION_REJECTED = -26
NODE_UNREACHABLE = -28
NODE_AUTH = -29
WRONG_NETWORK = -30
LOCAL_PROTOCOL = -31
REMOTE_PROTOCOL = -32
STORE_ERROR = -33
CHANNEL_FAILED = -34
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
PARSE_ERROR = -32700

# Most specific first: the first matching class gives the code.
ERROR_CODES: tuple[tuple[type[PaychanError], int], ...] = (
    (ConfigError, MISC_ERROR),
    (NodeUnreachable, NODE_UNREACHABLE),
    (NodeAuthError, NODE_AUTH),
    (WrongNetwork, WRONG_NETWORK),
    (WalletNotLoaded, WALLET_NOT_LOADED),
    (InsufficientFunds, INSUFFICIENT_FUNDS),
    (TransactionRejected, TRANSACTION_REJECTED),
    (InvalidParameter, INVALID_PARAMETER),
    (LocalProtocolError, LOCAL_PROTOCOL),
    (RemoteProtocolError, REMOTE_PROTOCOL),
    (StoreError, STORE_ERROR),
    (ChannelFailed, CHANNEL_FAILED),
)


def error_code(exc: PaychanError) -> int:
    """The JSON-RPC code for a PaychanError (see the table above)."""
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return MISC_ERROR


class DaemonApi(Protocol):
    """What the control API calls; the daemon implements it. Raise LocalProtocolError for
    "no such channel" and other requests that cannot be served."""

    async def getinfo(self) -> dict[str, Any]: ...

    async def listchannels(self, state: str | None, include_forgotten: bool | None = None
                           ) -> list[dict[str, Any]]: ...

    async def getchannel(self, channel_id: str) -> dict[str, Any]: ...

    async def open(self, server: str, amount: int, new: bool) -> dict[str, Any]: ...

    async def pay(self, target: str, amount: int, info: str | None) -> dict[str, Any]: ...

    async def close(self, channel_id: str) -> dict[str, Any]: ...

    async def topup(self, channel_id: str, amount: int) -> dict[str, Any]: ...

    async def renew(self, channel_id: str, window: int | None = None) -> dict[str, Any]: ...

    async def payout(self, channel_id: str) -> dict[str, Any]: ...

    async def listpayments(self, channel_id: str | None, limit: int | None = None,
                           since: str | None = None) -> list[dict[str, Any]]: ...

    async def prunehistory(self, before: str) -> dict[str, Any]: ...

    async def stop(self) -> dict[str, Any]: ...

    async def dashboard(self) -> dict[str, Any]:
        """What the dashboard shows (see `daemon/dashboard.py`); not a JSON-RPC method."""
        ...


# -- parameters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "str", "amount", "count" (a whole number ≥ 1), "flag" (false when missing)
    required: bool = True

    def check(self, method: str, value: Any) -> Any:
        if value is None and not self.required:
            return False if self.kind == "flag" else None
        if self.kind == "flag":
            if not isinstance(value, bool):
                raise LocalProtocolError(f"{method}: {self.name} must be true or false, got "
                                         f"{json.dumps(value)}")
            return value
        if self.kind in ("amount", "count"):
            if isinstance(value, bool) or not isinstance(value, int):
                unit = " of satoshis" if self.kind == "amount" else ""
                raise LocalProtocolError(f"{method}: {self.name} must be a whole number{unit}, "
                                         f"got {json.dumps(value)}")
            if value <= 0:
                raise LocalProtocolError(f"{method}: {self.name} must be positive, got {value}")
            return value
        if not isinstance(value, str):
            raise LocalProtocolError(f"{method}: {self.name} must be a string, got "
                                   f"{json.dumps(value)}")
        if self.required and not value:
            raise LocalProtocolError(f"{method}: {self.name} must not be empty")
        return value


SIGNATURES: dict[str, tuple[Param, ...]] = {
    "getinfo": (),
    "listchannels": (Param("state", "str", required=False),
                     Param("all", "flag", required=False)),
    "getchannel": (Param("channel_id", "str"),),
    "open": (Param("server", "str"), Param("amount", "amount"),
             Param("new", "flag", required=False)),
    "pay": (Param("target", "str"), Param("amount", "amount"),
            Param("info", "str", required=False)),
    "close": (Param("channel_id", "str"),),
    "topup": (Param("channel_id", "str"), Param("amount", "amount")),
    "renew": (Param("channel_id", "str"), Param("window", "count", required=False)),
    "payout": (Param("channel_id", "str"),),
    "listpayments": (Param("channel_id", "str", required=False),
                     Param("limit", "count", required=False),
                     Param("since", "str", required=False)),
    "prunehistory": (Param("before", "str"),),
    "stop": (),
}


def _usage(method: str) -> str:
    names = [p.name if p.required else f"[{p.name}]" for p in SIGNATURES[method]]
    return " ".join([method, *names])


def check_params(method: str, params: Any) -> list[Any]:
    """The positional arguments for `method`, checked; LocalProtocolError (answered with -8)
    if they do not fit."""
    signature = SIGNATURES[method]
    if params is None:
        params = []
    if isinstance(params, dict):
        unknown = sorted(set(params) - {p.name for p in signature})
        if unknown:
            raise LocalProtocolError(f"{method}: unknown parameter {', '.join(unknown)}; "
                                   f"usage: {_usage(method)}")
        params = [params.get(p.name) for p in signature]
    elif not isinstance(params, list):
        raise LocalProtocolError(f"{method}: params must be an array or an object")
    required = sum(1 for p in signature if p.required)
    if not required <= len(params) <= len(signature):
        expected = (f"{required}" if required == len(signature)
                    else f"{required} to {len(signature)}")
        raise LocalProtocolError(f"{method} takes {expected} parameter"
                               f"{'' if len(signature) == 1 else 's'}, got {len(params)}; "
                               f"usage: {_usage(method)}")
    padded = [*params, *[None] * (len(signature) - len(params))]
    return [p.check(method, v) for p, v in zip(signature, padded, strict=True)]


# -- the server ----------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _json(status: int, payload: dict[str, Any], **headers: str) -> web.Response:
    body = json.dumps(payload).encode() + b"\n"
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)


def _error(status: int, code: int, message: str, call_id: Any = None,
           **headers: str) -> web.Response:
    return _json(status, {"result": None, "error": {"code": code, "message": message},
                          "id": call_id}, **headers)


def parse_call(body: bytes) -> Any:
    """The JSON in a call's body; ValueError if it is not JSON (nested too deep included:
    a body of 500,000 `[` is a parse error, not a RecursionError)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


class ControlServer:
    """The control API of `api` on `host:port` (loopback only), authenticated by the cookie
    at `cookie_path`, which exists exactly while the server runs (with `cookie_mode` and
    `cookie_group`, see ControlCookie.create). The same listener serves the dashboard
    (`daemon/dashboard.py`) behind the same cookie."""

    def __init__(self, api: DaemonApi, host: str, port: int, cookie_path: Path | str, *,
                 cookie_mode: int = 0o600, cookie_group: str | None = None) -> None:
        if not is_loopback(host):
            raise ConfigError(f"control.listen must be a loopback address (127.0.0.1, ::1 or "
                              f"localhost), not {host!r}: the control API moves money")
        self.api = api
        self.cookie_path = Path(cookie_path)
        self.cookie_mode, self.cookie_group = cookie_mode, cookie_group
        self.cookie: ControlCookie | None = None
        app = web.Application(middlewares=[self._errors_as_json])
        self.dashboard = Dashboard(app, api.dashboard, self._cookie)
        app.router.add_post("/", self.handle)
        app.router.add_route("*", "/{tail:.*}", self.other)
        self.web = WebServer(app, host, port)
        self.address: tuple[str, int] | None = None

    def _cookie(self) -> ControlCookie | None:
        return self.cookie

    async def start(self) -> tuple[str, int]:
        """Listen, then write the cookie (so a failed bind leaves another daemon's be)."""
        self.address = await self.web.start()
        try:
            self.cookie = ControlCookie.create(self.cookie_path, self.cookie_mode,
                                               self.cookie_group)
        except BaseException:
            await self.web.stop()
            raise
        log.info("control API and dashboard on http://%s:%s/ (cookie %s)", *self.address,
                 self.cookie_path)
        return self.address

    async def stop(self) -> None:
        await self.web.stop()
        if self.cookie is not None:
            with contextlib.suppress(ConfigError):  # only ours: another daemon may own it now
                if ControlCookie.read(self.cookie_path) == self.cookie:
                    ControlCookie.delete(self.cookie_path)
            self.cookie = None

    def _refused(self) -> web.Response:
        log.warning("control API: refused a call without valid credentials")
        return _error(HTTPStatus.UNAUTHORIZED, MISC_ERROR,
                      f"authentication required: use the cookie in {self.cookie_path}",
                      **{"WWW-Authenticate": 'Basic realm="paychan"'})

    def authorized(self, request: web.Request) -> bool:
        return self.cookie is not None and self.cookie.accepts(
            request.headers.get("Authorization"))

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """HTTP errors a handler raises (413, 408, ...) answered as JSON-RPC errors."""
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type != "text/plain":
                raise
            return _error(exc.status, INVALID_REQUEST, (exc.text or exc.reason).strip(),
                          **{k: v for k, v in exc.headers.items() if k == "Allow"})
        return response

    async def other(self, request: web.Request) -> web.Response:
        """Anything but a call: refused without credentials, else 404 or 405."""
        if not self.authorized(request):
            return self._refused()
        if request.path != "/":
            return _error(HTTPStatus.NOT_FOUND, INVALID_REQUEST,
                          f"no such endpoint {request.path_qs!r}; POST to /")
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, INVALID_REQUEST,
                      "the control API takes JSON-RPC calls by POST", Allow="POST")

    async def handle(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self._refused()
        body = await read_body(request)
        try:
            call = parse_call(body)
        except ValueError:
            return _error(HTTPStatus.BAD_REQUEST, PARSE_ERROR, "parse error: body is not JSON")
        if not isinstance(call, dict):
            return _error(HTTPStatus.BAD_REQUEST, INVALID_REQUEST,
                          "invalid request: expected one JSON-RPC call object")
        call_id = call.get("id")
        method = call.get("method")
        if not isinstance(method, str):
            return _error(HTTPStatus.BAD_REQUEST, INVALID_REQUEST,
                          "invalid request: method must be a string", call_id)
        with channel_logging(""):  # a call may bind a channel to its lines: only its own
            code, result, message = await self.dispatch(method, call.get("params"))
        if code:
            return _error(HTTPStatus.OK, code, message, call_id)
        try:
            return _json(HTTPStatus.OK, {"result": result, "error": None, "id": call_id})
        except (TypeError, ValueError):
            log.exception("control API: %s returned a result that is not JSON", method)
            return _error(HTTPStatus.OK, MISC_ERROR, "internal error", call_id)

    async def dispatch(self, method: str, params: Any) -> tuple[int, Any, str]:
        """(0, result, "") or (code, None, message)."""
        if method not in SIGNATURES:
            return METHOD_NOT_FOUND, None, (f"method not found: {method!r}; one of "
                                            f"{', '.join(SIGNATURES)}")
        try:
            args = check_params(method, params)
        except LocalProtocolError as exc:
            return INVALID_PARAMETER, None, f"invalid parameter: {exc}"
        function: Callable[..., Awaitable[Any]] = getattr(self.api, method)
        started = time.perf_counter()
        try:
            result = await function(*args)
        except PaychanError as exc:
            code = error_code(exc)
            log.info("control %s failed (%s): %s", method, code, exc)
            return code, None, str(exc) or type(exc).__name__
        except Exception:
            log.exception("control %s: internal error", method)
            return MISC_ERROR, None, "internal error (see the daemon's log)"
        log.debug("control %s done in %.3fs", method, time.perf_counter() - started)
        return 0, result, ""

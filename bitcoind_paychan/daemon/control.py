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
    -8      invalid parameter (count, type, or a non-positive amount)
    -18     WalletNotLoaded
    -26     TransactionRejected
    -28     NodeUnreachable
    -29     NodeAuthError
    -30     WrongNetwork
    -31     LocalProtocolError (also "no such channel", "client role not enabled", ...)
    -32     RemoteProtocolError
    -33     StoreError
    -32600  invalid request (not a JSON-RPC call object)
    -32601  method not found
    -32700  parse error (the body is not JSON)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import grp
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from bitcoind_paychan.daemon.http import HttpServer, Request, Response
from bitcoind_paychan.errors import (
    ConfigError,
    InsufficientFunds,
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
    (LocalProtocolError, LOCAL_PROTOCOL),
    (RemoteProtocolError, REMOTE_PROTOCOL),
    (StoreError, STORE_ERROR),
)

COOKIE_USER = "__cookie__"


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

    async def listpayments(self, channel_id: str | None) -> list[dict[str, Any]]: ...

    async def prunehistory(self, before: str) -> dict[str, Any]: ...

    async def stop(self) -> dict[str, Any]: ...


# -- the cookie ----------------------------------------------------------------------------


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"control.cookie_group: no group named {group!r} on this machine; "
                          "create it (groupadd) or name an existing one") from None


def _set_owner_group(fd: int, gid: int, group: str | None) -> None:
    if gid == -1:
        return
    try:
        os.fchown(fd, -1, gid)
    except PermissionError:
        raise ConfigError(f"control.cookie_group: cannot give the control cookie to group "
                          f"{group!r}: the daemon's user is not a member of it "
                          f"(usermod -aG {group} USER)") from None


@dataclass(frozen=True)
class ControlCookie:
    """The control API's credentials, kept in a file only the daemon's user can read."""

    user: str
    password: str

    @classmethod
    def create(cls, path: Path | str, mode: int = 0o600,
               group: str | None = None) -> ControlCookie:
        """A fresh random cookie, written atomically to `path` with `mode` (0600, or 0640 for
        an operators' group: `group`, else the daemon's own group)."""
        path = Path(path)
        cookie = cls(COOKIE_USER, secrets.token_hex(32))
        gid = -1 if group is None else _group_id(group)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _set_owner_group(fd, gid, group)
                os.fchmod(fd, mode)  # whatever the umask
                with os.fdopen(fd, "w", encoding="ascii") as file:
                    file.write(f"{cookie.user}:{cookie.password}")
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise
        except OSError as exc:
            raise ConfigError(f"cannot write the control cookie {path}: {exc.strerror or exc}; "
                              "check control.cookie_file and its directory's permissions"
                              ) from exc
        return cookie

    @classmethod
    def read(cls, path: Path | str) -> ControlCookie:
        """The cookie in `path`; ConfigError if it is missing, unreadable or malformed."""
        path = Path(path)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise ConfigError(f"no control cookie at {path}: is `paychan daemon` running? "
                              "(it writes the cookie when it starts)") from None
        except PermissionError:
            raise ConfigError(f"cannot read the control cookie {path}: permission denied; "
                              "run as the daemon's user") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the control cookie {path}: {exc}") from exc
        user, colon, password = text.partition(":")
        if not colon or not user or not password:
            raise ConfigError(f"the control cookie {path} is malformed (expected user:password)")
        return cls(user, password)

    @staticmethod
    def delete(path: Path | str) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()

    def authorization(self) -> str:
        """The value of the HTTP Authorization header that carries this cookie."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def accepts(self, authorization: str | None) -> bool:
        """Whether an Authorization header value carries this cookie (constant time)."""
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, f"{self.user}:{self.password}".encode())


# -- parameters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "str", "amount", "flag" (a bool, false when missing)
    required: bool = True

    def check(self, method: str, value: Any) -> Any:
        if value is None and not self.required:
            return False if self.kind == "flag" else None
        if self.kind == "flag":
            if not isinstance(value, bool):
                raise LocalProtocolError(f"{method}: {self.name} must be true or false, got "
                                         f"{json.dumps(value)}")
            return value
        if self.kind == "amount":
            if isinstance(value, bool) or not isinstance(value, int):
                raise LocalProtocolError(f"{method}: {self.name} must be a whole number of "
                                       f"satoshis, got {json.dumps(value)}")
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
    "listpayments": (Param("channel_id", "str", required=False),),
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


def _json(status: int, payload: dict[str, Any], **headers: str) -> Response:
    body = json.dumps(payload).encode() + b"\n"
    return Response(status, body, "application/json", dict(headers))


def _error(status: int, code: int, message: str, call_id: Any = None,
           **headers: str) -> Response:
    return _json(status, {"result": None, "error": {"code": code, "message": message},
                          "id": call_id}, **headers)


class ControlServer:
    """The control API of `api` on `host:port` (loopback only), authenticated by the cookie
    at `cookie_path`, which exists exactly while the server runs (with `cookie_mode` and
    `cookie_group`, see ControlCookie.create)."""

    def __init__(self, api: DaemonApi, host: str, port: int, cookie_path: Path | str, *,
                 cookie_mode: int = 0o600, cookie_group: str | None = None) -> None:
        if not is_loopback(host):
            raise ConfigError(f"control.listen must be a loopback address (127.0.0.1, ::1 or "
                              f"localhost), not {host!r}: the control API moves money")
        self.api = api
        self.cookie_path = Path(cookie_path)
        self.cookie_mode, self.cookie_group = cookie_mode, cookie_group
        self.cookie: ControlCookie | None = None
        self.http = HttpServer(self.handle, host, port)
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        """Listen, then write the cookie (so a failed bind leaves another daemon's be)."""
        self.address = await self.http.start()
        try:
            self.cookie = ControlCookie.create(self.cookie_path, self.cookie_mode,
                                               self.cookie_group)
        except BaseException:
            await self.http.stop()
            raise
        log.info("control API on %s:%s (cookie %s)", *self.address, self.cookie_path)
        return self.address

    async def stop(self) -> None:
        await self.http.stop()
        if self.cookie is not None:
            with contextlib.suppress(ConfigError):  # only ours: another daemon may own it now
                if ControlCookie.read(self.cookie_path) == self.cookie:
                    ControlCookie.delete(self.cookie_path)
            self.cookie = None

    async def handle(self, request: Request) -> Response:
        if self.cookie is None or not self.cookie.accepts(request.headers.get("authorization")):
            log.warning("control API: refused a call without valid credentials")
            return _error(HTTPStatus.UNAUTHORIZED, MISC_ERROR,
                          f"authentication required: use the cookie in {self.cookie_path}",
                          **{"WWW-Authenticate": 'Basic realm="paychan"'})
        if request.path.partition("?")[0] != "/":
            return _error(HTTPStatus.NOT_FOUND, INVALID_REQUEST,
                          f"no such endpoint {request.path!r}; POST to /")
        if request.method != "POST":
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, INVALID_REQUEST,
                          "the control API takes JSON-RPC calls by POST", Allow="POST")
        try:
            call = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return _error(HTTPStatus.BAD_REQUEST, PARSE_ERROR, "parse error: body is not JSON")
        if not isinstance(call, dict):
            return _error(HTTPStatus.BAD_REQUEST, INVALID_REQUEST,
                          "invalid request: expected one JSON-RPC call object")
        call_id = call.get("id")
        method = call.get("method")
        if not isinstance(method, str):
            return _error(HTTPStatus.BAD_REQUEST, INVALID_REQUEST,
                          "invalid request: method must be a string", call_id)
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

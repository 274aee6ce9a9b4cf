"""The client side of the control API (what `paychan <command>` uses), over urllib.

Errors are ControlError: the daemon's own JSON-RPC code and message (see
`bitcoind_paychan.daemon.control`), or one of the local codes below when the call did not
get an answer.
"""

from __future__ import annotations

import http.client
import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bitcoind_paychan.daemon.cookie import ControlCookie
from bitcoind_paychan.errors import ConfigError, ControlError
from bitcoind_paychan.reasons import connection_failure

# Local codes: the call got no JSON-RPC answer.
NOT_RUNNING = -1001  # nothing listens at the control address
NO_COOKIE = -1002  # the cookie file is missing or unreadable
UNAUTHORIZED = -1003  # the daemon refused the cookie (HTTP 401)
BAD_ANSWER = -1004  # the answer was not a JSON-RPC answer
TIMEOUT = -1005  # no answer in time
UNREACHABLE = -1006  # another connection failure
LOCAL_CODES = (NOT_RUNNING, NO_COOKIE, UNAUTHORIZED, BAD_ANSWER, TIMEOUT, UNREACHABLE)


class ControlClient:
    """Calls the daemon at `url` (http://host:port) with the cookie at `cookie_path`."""

    def __init__(self, url: str, cookie_path: Path | str, timeout: float = 300.0) -> None:
        self.url = url if urlsplit(url).path else url.rstrip("/") + "/"
        self.cookie_path = Path(cookie_path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        # Never through a proxy: the daemon is on this machine.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc

    def call(self, method: str, *params: Any) -> Any:
        """The result of `method(*params)`; ControlError if there is none."""
        try:
            cookie = ControlCookie.read(self.cookie_path)
        except ConfigError as exc:
            raise ControlError(NO_COOKIE, str(exc)) from None
        call_id = next(self._ids)
        body = json.dumps({"jsonrpc": "1.0", "id": call_id, "method": method,
                           "params": list(params)}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": cookie.authorization()})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            exc.close()
            if status == 401:
                raise ControlError(UNAUTHORIZED, (
                    f"the daemon at {self.address} refused the cookie in {self.cookie_path}: "
                    "is it a stale cookie, or does another daemon listen there? Check that "
                    "control.cookie_file is the running daemon's")) from None
        except urllib.error.URLError as exc:
            raise self._connection_error(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._connection_error(exc) from None
        return self._result(call_id, status, raw)

    def _connection_error(self, reason: object) -> ControlError:
        if isinstance(reason, ConnectionRefusedError):
            return ControlError(NOT_RUNNING, (
                f"cannot connect to the daemon: is `paychan daemon` running? it listens on "
                f"{self.address} (control.listen)"))
        if isinstance(reason, TimeoutError):
            return ControlError(TIMEOUT, f"no answer from the daemon at {self.address} within "
                                         f"{self.timeout:g}s (--timeout)")
        why = connection_failure(reason) if isinstance(reason, BaseException) else reason
        return ControlError(UNREACHABLE, f"cannot reach the daemon at {self.address}: {why}")

    def _result(self, call_id: int, status: int, raw: bytes) -> Any:
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict) or "result" not in answer or "error" not in answer:
            text = raw[:200].decode(errors="replace").strip()
            raise ControlError(BAD_ANSWER, f"unexpected answer from {self.address} "
                                           f"(HTTP {status}): {text!r}; is it a paychan daemon?")
        error = answer["error"]
        if error is not None:
            if isinstance(error, dict):
                code, message = error.get("code"), error.get("message")
                raise ControlError(code if isinstance(code, int) else BAD_ANSWER,
                                   str(message) if message is not None else json.dumps(error))
            raise ControlError(BAD_ANSWER, f"malformed error from {self.address}: {error!r}")
        if answer.get("id") != call_id:
            raise ControlError(BAD_ANSWER, f"answer from {self.address} is for call "
                                           f"{answer.get('id')!r}, not {call_id}")
        return answer["result"]

"""Thread-safe JSON-RPC calls to bitcoind over python-bitcoinrpc, with typed errors.

`AuthServiceProxy` owns one HTTP connection and is not thread-safe, so each thread gets its
own. After an authentication failure the credentials are read again (bitcoind rewrites its
cookie on every start) and the call is retried once.
"""

from __future__ import annotations

import base64
import http.client
import logging
import threading
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

from bitcoind_paychan.errors import (
    InsufficientFunds,
    NodeAuthError,
    NodeError,
    NodeUnreachable,
    RpcError,
    WalletNotLoaded,
)
from bitcoind_paychan.node.config import NodeConfig
from bitcoind_paychan.reasons import connection_failure

log = logging.getLogger(__name__)

RPC_IN_WARMUP = -28
RPC_WALLET_ALREADY_LOADED = -35
RPC_WALLET_INSUFFICIENT_FUNDS = -6
RPC_WALLET_NOT_FOUND = -18
RPC_WALLET_NOT_SPECIFIED = -19
_HTTP_ERROR = -342  # python-bitcoinrpc's code for a non-JSON HTTP reply


class RpcClient:
    """Calls bitcoind's JSON-RPC, one connection per thread."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._local = threading.local()
        self._lock = threading.Lock()
        self._auth_header = b""
        self._generation = 0
        self._reload_credentials()

    def _reload_credentials(self) -> None:
        user, password = self.config.credentials()
        with self._lock:
            self._auth_header = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
            self._generation += 1

    def _method(self, wallet: str | None, method: str) -> Any:
        """A python-bitcoinrpc callable for `method`, on this thread's connection."""
        cache: dict[str | None, tuple[int, str, Any]] = self._local.__dict__.setdefault("conns", {})
        cached = cache.get(wallet)
        if not cached or cached[0] != self._generation:
            parts = urlsplit(self.config.url)
            path = f"/wallet/{quote(wallet)}" if wallet else parts.path
            # Credentials never go into the URL (the library would mangle ':' and '@' in them).
            url = urlunsplit((parts.scheme, f"rpc:rpc@{parts.netloc}", path, "", ""))
            connection = AuthServiceProxy(url, timeout=self.config.timeout)._AuthServiceProxy__conn
            cached = cache[wallet] = (self._generation, url, connection)
        call = AuthServiceProxy(cached[1], method, self.config.timeout, cached[2])
        call._AuthServiceProxy__auth_header = self._auth_header
        return call

    def _drop_connection(self, wallet: str | None) -> None:
        cached = self._local.__dict__.get("conns", {}).pop(wallet, None)
        if cached:
            cached[2].close()

    def call(self, method: str, *params: Any, wallet: bool = False) -> Any:
        """Call `method`; with `wallet`, against the configured wallet's endpoint.

        A dropped connection or a refused password is retried once (with the cookie read
        again), so every call must be safe to repeat; ours are. A configured wallet that
        bitcoind has on disk but not loaded (a node restarted without `load_on_startup`) is
        loaded, said in the log, and the call made again.
        """
        target = self.config.wallet if wallet else None
        reconnected = reauthenticated = reloaded = False
        while True:
            try:
                return self._method(target, method)(*params)
            except JSONRPCException as exc:
                code, message = exc.code or 0, str(exc.message)
                if code == RPC_WALLET_NOT_FOUND and target and not reloaded:
                    reloaded = True
                    self._load_wallet(target, message)
                    continue
                if code == _HTTP_ERROR:
                    self._drop_connection(target)
                    if "401" in message or "403" in message:
                        if not reauthenticated:
                            reauthenticated = True
                            self._reload_credentials()
                            continue
                        raise NodeAuthError(self._auth_hint()) from None
                    raise NodeUnreachable(f"bitcoind at {self.config.url}: {message}") from None
                raise self._typed(method, code, message, target) from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self._drop_connection(target)
                if not reconnected and not isinstance(exc, TimeoutError):
                    reconnected = True
                    continue  # a kept-alive connection may have died with a node restart
                raise NodeUnreachable(
                    f"bitcoind does not answer at {self.config.url} "
                    f"({connection_failure(exc)}); is it running, and are rpcport/rpcbind right?"
                ) from None

    def _load_wallet(self, name: str, why: str) -> None:
        """`loadwallet name` (another thread loading it too is fine); WalletNotLoaded, saying
        what to do, if bitcoind cannot."""
        try:
            self.call("loadwallet", name)
        except RpcError as exc:
            if exc.code == RPC_WALLET_ALREADY_LOADED:
                return
            raise WalletNotLoaded(
                f"wallet {name!r} is not loaded in bitcoind ({why}) and loading it failed "
                f"({exc.rpc_message}); create it with `bitcoin-cli -named createwallet "
                f"wallet_name={name} load_on_startup=true`, or fix what bitcoind says"
            ) from None
        log.warning("bitcoind had wallet %r on disk but not loaded (%s): loaded it. So that "
                    "bitcoind loads it itself after a restart: `bitcoin-cli loadwallet %s "
                    "true` once (load_on_startup)", name, why, name)

    def _auth_hint(self) -> str:
        how = (
            f"cookie file {self.config.cookie_file}"
            if self.config.cookie_file
            else f"user {self.config.user!r} and its password"
        )
        return (
            f"bitcoind at {self.config.url} refused the credentials ({how}); check "
            "rpcuser/rpcpassword/rpcauth in bitcoin.conf, or point at the node's own cookie"
        )

    def _typed(self, method: str, code: int, message: str, wallet: str | None) -> NodeError:
        if code in (RPC_WALLET_NOT_FOUND, RPC_WALLET_NOT_SPECIFIED) and method != "loadwallet":
            name = wallet or self.config.wallet
            return WalletNotLoaded(
                f"wallet {name!r} is not loaded in bitcoind ({message}); create or load it: "
                f"`bitcoin-cli -named createwallet wallet_name={name} load_on_startup=true` "
                f"or `bitcoin-cli loadwallet {name} true`"
            )
        if code == RPC_WALLET_INSUFFICIENT_FUNDS or "insufficient funds" in message.lower():
            return InsufficientFunds(f"the wallet cannot pay for this ({message}); add funds")
        if code == RPC_IN_WARMUP:
            return NodeUnreachable(f"bitcoind is still starting ({message}); try again shortly")
        return RpcError(method, code, message)

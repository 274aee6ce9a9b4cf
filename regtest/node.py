"""Isolated regtest bitcoind nodes for tests, the demo and benchmarks.

Each node has its own datadir, free ports and cookie auth, listens for peers only when asked,
and is stopped and removed when its owner is done, when the process exits, on SIGTERM, and (via
PR_SET_PDEATHSIG) even if the owning process is killed outright. Standard library only, so the
harness never depends on the code it tests.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from .fetch import Binaries, find_bitcoind
from .ports import free_port as free_port  # re-exported: tests import it from here
from .waiting import wait_until

COINBASE_MATURITY = 100
DEFAULT_WALLET = "paychan"
_live: set[RegtestNode] = set()
_live_lock = threading.Lock()


class NodeFailure(RuntimeError):
    """A regtest node did not start, answer or stop as expected."""


class RPCFault(RuntimeError):
    """bitcoind answered an RPC call with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"RPC error {code}: {message}")
        self.code = code
        self.message = message


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the process that started us dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgrp()  # Ctrl-C in a terminal reaches us only through our owner's cleanup


class RegtestNode:
    """One bitcoind process (regtest unless `chain` says otherwise) with its own datadir and ports.

    Another chain (signet, testnet4) is only for testing network checks: it never syncs,
    because DNS seeds and fixed seeds are off.
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        name: str = "node",
        listen: bool = False,
        zmq: bool = False,
        extra_args: tuple[str, ...] = (),
        wallet: str | None = DEFAULT_WALLET,
        chain: str = "regtest",
    ) -> None:
        self.binaries = binaries or find_bitcoind()
        self.name = name
        self.datadir = Path(tempfile.mkdtemp(prefix=f"paychan-{name}-"))
        self.listen = listen
        self.zmq = zmq
        self.extra_args = extra_args
        self.wallet = wallet
        self.chain = chain
        self.rpc_port = 0
        self.p2p_port = 0
        self.zmq_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def cookie_path(self) -> Path:
        return self.datadir / self.chain / ".cookie"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def zmq_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    def args(self) -> list[str]:
        args = [
            str(self.binaries.bitcoind),
            f"-chain={self.chain}",
            "-daemon=0",
            "-server=1",
            f"-datadir={self.datadir}",
            f"-rpcport={self.rpc_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            "-fallbackfee=0.0002",
            "-txindex=1",
            "-printtoconsole=0",
            "-dnsseed=0",
            "-fixedseeds=0",
            "-discover=0",
            "-natpmp=0",
            "-keypool=20",
            "-addresstype=bech32",
            "-changetype=bech32",  # Knots defaults to legacy
            "-debug=0",
        ]
        if self.listen:
            args += [
                "-listen=1",
                f"-bind=127.0.0.1:{self.p2p_port}",
                f"-port={self.p2p_port}",
                "-listenonion=0",
            ]
        else:
            args += ["-listen=0"]
        if self.zmq:
            args += [
                f"-zmqpubhashblock={self.zmq_endpoint}",
                f"-zmqpubsequence={self.zmq_endpoint}",
                f"-zmqpubrawtx={self.zmq_endpoint}",
            ]
        return args + list(self.extra_args)

    def start(
        self, timeout: float = 60.0, attempts: int = 3, same_ports: bool = False
    ) -> RegtestNode:
        """Start bitcoind and wait for RPC; retries with fresh ports if one was taken meanwhile
        (with `same_ports`, keeps the ports of the previous run instead)."""
        for attempt in range(attempts):
            if not (same_ports and self.rpc_port):
                self.rpc_port, self.p2p_port, self.zmq_port = free_port(), free_port(), free_port()
            self._spawn()
            try:
                self._wait_for_rpc(timeout)
                break
            except NodeFailure:
                log = self.debug_log_tail()
                self._reap()
                if "Unable to bind" not in log or attempt == attempts - 1:
                    raise
        if self.wallet:
            self._load_or_create_wallet(self.wallet)
        return self

    def _spawn(self) -> None:
        self.cookie_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        with _live_lock:
            _live.add(self)

    def _wait_for_rpc(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise NodeFailure(
                    f"{self.name}: bitcoind exited with {self.process.returncode}: "
                    f"{err.strip()[-500:]} {self.debug_log_tail()[-500:]}"
                )
            if self.cookie_path.exists():
                try:
                    self.rpc("getblockchaininfo")
                    return
                except (RPCFault, OSError, urllib.error.URLError):
                    pass
            time.sleep(0.05)
        raise NodeFailure(f"{self.name}: RPC not ready after {timeout}s")

    def _load_or_create_wallet(self, wallet: str) -> None:
        try:
            self.rpc("loadwallet", wallet)
        except RPCFault as exc:
            if exc.code == -35:  # already loaded
                return
            self.rpc("createwallet", wallet)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop bitcoind cleanly (kill it if it does not stop in time); keep the datadir."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.rpc("stop")
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL bitcoind, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
            if self.process.stderr:
                self.process.stderr.close()
        self.process = None
        with _live_lock:
            _live.discard(self)

    def restart(self, same_ports: bool = False) -> RegtestNode:
        """Stop and start again with the same datadir and wallet (on new ports by default)."""
        self.stop()
        return self.start(same_ports=same_ports)

    def cleanup(self) -> None:
        """Stop bitcoind and remove the datadir (unless $PAYCHAN_KEEP_DATADIR is set)."""
        self.stop()
        if not os.environ.get("PAYCHAN_KEEP_DATADIR"):
            shutil.rmtree(self.datadir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def debug_log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.datadir / self.chain / "debug.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> RegtestNode:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- RPC -------------------------------------------------------------------------------

    def rpc(
        self, method: str, *params: Any, wallet: str | None = None, timeout: float = 120
    ) -> Any:
        """Call bitcoind directly (JSON-RPC over HTTP with the cookie)."""
        path = f"/wallet/{wallet}" if wallet else ""
        body = json.dumps(
            {"jsonrpc": "1.0", "id": 1, "method": method, "params": params}, default=str
        ).encode()
        auth = base64.b64encode(self.cookie_path.read_bytes().strip()).decode()
        request = urllib.request.Request(
            self.rpc_url + path,
            data=body,
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                reply = json.loads(response.read(), parse_float=Decimal)
        except urllib.error.HTTPError as exc:
            reply = json.loads(exc.read() or b"{}", parse_float=Decimal)
            if not reply.get("error"):
                raise
        if reply.get("error"):
            raise RPCFault(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def wallet_rpc(self, method: str, *params: Any) -> Any:
        return self.rpc(method, *params, wallet=self.wallet)

    # -- chain helpers ---------------------------------------------------------------------

    def new_address(self) -> str:
        return str(self.wallet_rpc("getnewaddress"))

    def mine(self, blocks: int = 1, address: str | None = None) -> list[str]:
        """Mine `blocks` blocks to `address` (default: this node's wallet); returns once the
        node's wallets have seen them (fundrawtransaction does not wait for that itself)."""
        hashes = list(self.rpc("generatetoaddress", blocks, address or self.new_address()))
        self.rpc("syncwithvalidationinterfacequeue")
        return hashes

    def mature(self) -> None:
        """Mine until the wallet has a spendable coinbase."""
        height = self.rpc("getblockcount")
        if height <= COINBASE_MATURITY:
            self.mine(COINBASE_MATURITY + 1 - height)

    def mine_tx(self, raw_tx_hex: str) -> str:
        """Mine one block holding exactly `raw_tx_hex` (even if the mempool would refuse it)."""
        block = str(self.rpc("generateblock", self.new_address(), [raw_tx_hex])["hash"])
        self.rpc("syncwithvalidationinterfacequeue")
        return block

    def pay_in_block(self, outputs: dict[str, Any]) -> str:
        """Pay `outputs` ({address: BTC}) from this node's wallet in a transaction mined at
        once in a block of its own; returns its txid once the node's wallets have seen it.

        The block is built with exactly this transaction, so the payment cannot be left in
        (or out of) the mempool; a transaction the node refuses raises with the node's reason.
        """
        draft = self.wallet_rpc("createrawtransaction", [], outputs)
        funded = self.wallet_rpc("fundrawtransaction", draft)["hex"]
        signed = self.wallet_rpc("signrawtransactionwithwallet", funded)
        if not signed.get("complete"):
            raise RuntimeError(f"the wallet could not sign its payment: {signed.get('errors')}")
        txid = str(self.rpc("decoderawtransaction", signed["hex"])["txid"])
        self.mine_tx(signed["hex"])
        return txid

    def set_mocktime(self, timestamp: int) -> None:
        self.rpc("setmocktime", timestamp)

    def advance_median_time_past(self, past: int) -> None:
        """Set mocktime after `past` and mine 11 blocks so the chain's median-time-past is > it."""
        start = max(past + 1, int(self.rpc("getblockchaininfo")["mediantime"]) + 1)
        address = self.new_address()
        for i in range(11):
            self.set_mocktime(start + i)
            self.rpc("generatetoaddress", 1, address)

    def tip(self) -> tuple[int, str]:
        info = self.rpc("getblockchaininfo")
        return int(info["blocks"]), str(info["bestblockhash"])

    def invalidate(self, block_hash: str) -> None:
        self.rpc("invalidateblock", block_hash)

    def reconsider(self, block_hash: str) -> None:
        self.rpc("reconsiderblock", block_hash)

    def connect(self, other: RegtestNode) -> None:
        """Peer with `other` (which must have been started with listen=True)."""
        self.rpc("addnode", f"127.0.0.1:{other.p2p_port}", "onetry")
        wait_until(lambda: self.rpc("getconnectioncount") > 0, what="peer connection")

    def __repr__(self) -> str:
        return f"<RegtestNode {self.name} rpc={self.rpc_port} {self.datadir}>"


@contextlib.contextmanager
def regtest_nodes(
    count: int = 1, *, mature: bool = True, connected: bool = False, **kwargs: Any
) -> Iterator[list[RegtestNode]]:
    """Start `count` nodes, each with a spendable coinbase; stop and remove them all afterwards.

    With `connected`, the nodes peer with the first one and share one chain; otherwise each
    node has a chain of its own.
    """
    nodes = [RegtestNode(name=f"node{i}", listen=connected, **kwargs) for i in range(count)]
    try:
        for node in nodes:
            node.start()
        for node in nodes[1:] if connected else []:
            node.connect(nodes[0])
        if mature:
            if connected:
                for node in nodes:
                    node.mine(1)
                    sync_tips(nodes)
                nodes[0].mine(COINBASE_MATURITY)
                sync_tips(nodes)
            else:
                for node in nodes:
                    node.mature()
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


def sync_tips(nodes: list[RegtestNode], timeout: float = 30.0) -> None:
    """Wait until every node has the same tip and every node's wallets have seen it."""
    if len(nodes) > 1:
        wait_until(lambda: len({node.tip() for node in nodes}) == 1, timeout, what="tips to sync")
        for node in nodes:
            node.rpc("syncwithvalidationinterfacequeue")


def stop_all() -> None:
    """Stop every node this process started (runs at exit and on SIGTERM)."""
    with _live_lock:
        nodes = list(_live)
    for node in nodes:
        with contextlib.suppress(Exception):
            node.cleanup()


def _on_sigterm(signum: int, frame: object) -> None:
    stop_all()
    raise SystemExit(128 + signum)


atexit.register(stop_all)
if threading.current_thread() is threading.main_thread():
    with contextlib.suppress(ValueError):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)

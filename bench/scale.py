"""Many channels on one server process: restart, blocks, and many live connections.

Default mode: N stored open server channels (synthetic records written through the store's own
`put_many`, their contracts counted as confirmed; 101 of them watch real wallet outputs so
blocks can spend them) in an SQLite file beside a regtest node. A server process is started on
that store; reported: seconds from starting the process to completing a handshake with it,
seconds to process a block (scan, store, review) with 1 and with 100 watched outputs spent in
it, the server's peak RSS, and the longest ack gap of a live (real) channel paying all the
while; beside the gap, the server event loop's longest step (one callback or task step, with
what it ran and any wait for the GIL; the gap adds the machine's load, fsyncs and the client),
the longest step of the autopilot's own tasks (what a block holds the loop for) and the longest
garbage collection, from the block's wake-up to the end of its handling.
`--connections K`: K stored channels resumed by K concurrent connections, each paying
`--payments` times: payments/s, p99 latency and the server's RSS per connection.
Figures, not assertions. Usage: python bench/scale.py [--channels N] [--connections K]
[--payments M] [--show-steps MS] [--json]   (--json prints one JSON object last)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.machine import resume_digest
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.daemon.process import freeze_heap, raise_fd_limit
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
from bitcoind_paychan.node.monitor import ChainEvent
from bitcoind_paychan.service.client import PaymentClient
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.stream import MessageStream
from bitcoind_paychan.wire import pb
from regtest.node import RegtestNode, regtest_nodes

T = pb.TwoWayChannelMessage
VALUE = 1_000_000  # sat per synthetic channel
AMOUNT = 1_000  # sat per payment
REAL = 101  # synthetic channels watching real wallet outputs (spent by the timed blocks)
SPENDS = (1, 100)  # watched outputs spent per timed block
EXPIRY = 4_000_000_000  # far away: no deadline falls in the run
SHOW_STEPS = "PAYCHAN_SCALE_SHOW_STEPS"  # --show-steps, for the server process


def rss_mb() -> float:
    """Resident memory now (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Tasks of the autopilot, by their outermost coroutine: the block monitor (which handles each
# block), APScheduler's jobs (reviews, deadlines) and the mempool wake-up's reviews.
AUTOPILOT = ("BlockMonitor._run", "run_coroutine_job", "ChainWatcher._review_mempool_spends")


class LoopSteps:
    """The event loop's longest steps (one callback or task step each, wall time including
    any wait for the GIL): what holds the loop, and for how long; and the longest step of the
    autopilot's own tasks. Installed in the server process only; `take` returns and resets
    them. Steps longer than `show_over` seconds are printed to stderr as they happen."""

    def __init__(self, show_over: float | None = None) -> None:
        self.longest = self.longest_autopilot = 0.0
        self.what = ""
        original = asyncio.events.Handle._run
        steps = self

        def timed(handle: asyncio.events.Handle) -> None:
            t0 = time.perf_counter()
            original(handle)
            took = time.perf_counter() - t0
            if took > steps.longest:
                steps.longest, steps.what = took, _describe(handle)
            if took > steps.longest_autopilot and _root(handle) in AUTOPILOT:
                steps.longest_autopilot = took
            if show_over is not None and took > show_over:
                print(f"server: loop step {took * 1000:.1f} ms, {_describe(handle)}",
                      file=sys.stderr)

        setattr(asyncio.events.Handle, "_run", timed)  # noqa: B010 (mypy: a method)
        self.longest_gc = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._collecting)

    def _collecting(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.longest_gc = max(self.longest_gc, time.perf_counter() - self._gc_started)

    def take(self) -> tuple[float, str, float, float]:
        """The longest step, what it ran, the longest garbage collection and the autopilot's
        longest step (seconds)."""
        taken = self.longest, self.what, self.longest_gc, self.longest_autopilot
        self.longest = self.longest_gc = self.longest_autopilot = 0.0
        self.what = ""
        return taken


def _root(handle: asyncio.events.Handle) -> str:
    """The outermost coroutine of the task a step belongs to ("" for a plain callback)."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    return getattr(task.get_coro(), "__qualname__", "") if isinstance(task, asyncio.Task) else ""


def _describe(handle: asyncio.events.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return repr(callback)[:120]
    # The two innermost coroutines the task waits in now: the step ran up to there.
    chain: list[Any] = [task.get_coro()]
    while hasattr(getattr(chain[-1], "cr_await", None), "cr_frame"):
        chain.append(chain[-1].cr_await)
    return " < ".join(_where(coro) for coro in reversed(chain[-2:]))


def _where(coro: Any) -> str:
    frame = getattr(coro, "cr_frame", None)
    where = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}" if frame else ""
    return f"{getattr(coro, '__qualname__', coro)} {where}"


def config_for(node: RegtestNode) -> NodeConfig:
    return NodeConfig(url=node.rpc_url, chain="regtest", wallet=node.wallet,
                      cookie_file=node.cookie_path)


# -- synthetic channels --------------------------------------------------------------------


def synthetic(client: PrivateKey, server: PrivateKey, outpoints: Iterator[OutPoint],
              contract_tx: bytes) -> Iterator[ChannelRecord]:
    """Open channels with one initial payment (one signature shared by all: stored records are
    not checked again, and later payments are signed for each channel)."""
    signature = b""
    for outpoint in outpoints:
        contract = Contract(3, client.pub.data, server.pub.data, EXPIRY, outpoint, VALUE)
        signature = signature or contract.sign_payment(client, VALUE - AMOUNT)
        yield ChannelRecord(Role.SERVER, contract, contract_tx, server, VALUE - AMOUNT,
                            signature, payments=1)


def fill(db: Path, count: int, real: list[OutPoint], contract_tx: bytes, height: int,
         client: PrivateKey) -> float:
    """Store `count` open server channels (the first ones on `real` outputs); seconds taken."""
    started = time.perf_counter()
    server = PrivateKey.generate()
    fake = (OutPoint(os.urandom(32), 1) for _ in range(count - len(real)))
    with SQLiteStore(db) as store:
        records = list(synthetic(client, server, iter([*real, *fake]), contract_tx))
        store.put_many(records)
        store.put_chain_states(Role.SERVER, {r.contract_txid: ChainState(contract_height=height)
                                             for r in records})
    return time.perf_counter() - started


# -- the server process --------------------------------------------------------------------


def server_process(conn: Connection, config: NodeConfig, db: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="server: %(message)s")
    asyncio.run(serve(conn, config, db))


async def serve(conn: Connection, config: NodeConfig, db: Path) -> None:
    """Serve; report each chain event's processing time; answer 'rss'; stop on 'stop'."""
    started = time.perf_counter()
    show = os.environ.get(SHOW_STEPS)
    steps = LoopSteps(float(show) / 1000 if show else None)
    store = SQLiteStore(db)
    # Every benchmark connection comes from 127.0.0.1: lift the per-address limits.
    limits = PeerLimits(max_connections_per_minute=10**9, max_handshakes_per_ip=10**9)
    server = PaymentServer(AsyncBitcoind(Bitcoind(config)), store, poll_interval=0.2,
                           limits=limits)
    watcher = server.watcher
    handle = watcher._on_chain_event

    async def timed(event: ChainEvent) -> None:
        t0 = time.perf_counter()
        await handle(event)
        took = time.perf_counter() - t0
        # Since the last block: this block's wake-up and handling (and payments meanwhile).
        longest, what, collecting, autopilot = steps.take()
        conn.send(("block", event.tip.height, took, watcher.block_channels,
                   watcher.reviewed_channels, longest, what, collecting, autopilot))

    watcher._on_chain_event = timed  # type: ignore[method-assign]
    raise_fd_limit()  # the daemon's acts on the process, as `paychan daemon` takes them
    address = await server.listen()
    freeze_heap()
    conn.send(("serving", address, time.perf_counter() - started, rss_mb()))
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: requests.put_nowait(conn.recv()))
    while await requests.get() != "stop":
        conn.send(("rss", rss_mb()))
    loop.remove_reader(conn.fileno())
    await server.stop()
    store.close()
    conn.send(("stopped", peak_rss_mb()))


class Server:
    """The server process and its pipe."""

    def __init__(self, config: NodeConfig, db: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, theirs = ctx.Pipe()
        self.started = time.perf_counter()
        self.process = ctx.Process(target=server_process, args=(theirs, config, db),
                                   daemon=True)
        self.process.start()
        theirs.close()
        self.blocks: list[tuple[Any, ...]] = []

    def expect(self, kind: str, timeout: float = 600.0) -> tuple[Any, ...]:
        while True:
            if not self.pipe.poll(timeout):
                raise RuntimeError(f"the server sent no {kind!r} in {timeout} s")
            message = self.pipe.recv()
            if message[0] == "block":
                self.blocks.append(message[1:])
            if message[0] == kind:
                return tuple(message[1:])

    def block(self, height: int) -> tuple[Any, ...]:
        while not any(b[0] >= height for b in self.blocks):
            self.expect("block")
        return next(b for b in self.blocks if b[0] >= height)

    def stop(self) -> float:
        self.pipe.send("stop")
        (peak,) = self.expect("stopped", 600)  # K connections to hang up on
        self.process.join(10)
        return float(peak)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


async def handshake(address: tuple[str, int], deadline: float) -> float:
    """Connect and get INITIATE; the time it completed (retrying until the server listens)."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(*address)
            break
        except OSError:
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.01)
    stream = MessageStream(reader, writer)
    await stream.send(messages.client_version(3, messages.DEFAULT_TIME_WINDOW, None))
    while (reply := await stream.receive(30)) is not None and reply.type != T.INITIATE:
        pass
    await stream.close()
    return time.perf_counter()


# -- default mode: stored channels and blocks ----------------------------------------------


def real_outputs(node: RegtestNode) -> tuple[list[OutPoint], bytes]:
    """REAL confirmed wallet outputs, each in its own transaction (a channel is known by its
    contract's txid), to be watched by synthetic channels; and one of those transactions."""
    txid = node.pay_in_block({node.new_address(): "0.0011" for _ in range(REAL)})
    funding = Transaction.from_hex(node.wallet_rpc("gettransaction", txid)["hex"])
    coins = [OutPoint(funding.txid, i) for i, out in enumerate(funding.outputs)
             if out.value == 110_000]
    txs = [move(node, coin, "0.001") for coin in coins]
    node.mine(1)
    outs = [OutPoint(tx.txid, 0) for tx in txs]
    node.wallet_rpc("lockunspent", False, [{"txid": o.txid_hex, "vout": o.index} for o in outs])
    return outs, txs[0].serialize()


def mine(node: RegtestNode) -> int:
    """Mine a block; its height."""
    node.mine(1)
    return node.tip()[0]


def move(node: RegtestNode, coin: OutPoint, btc: str) -> Transaction:
    """Spend `coin` to a new wallet address (output 0) paying `btc`."""
    raw = node.rpc("createrawtransaction", [{"txid": coin.txid_hex, "vout": coin.index}],
                   {node.new_address(): btc})
    signed = node.wallet_rpc("signrawtransactionwithwallet", raw)["hex"]
    node.rpc("sendrawtransaction", signed)
    return Transaction.from_hex(signed)


async def stored_channels(node: RegtestNode, tmp: Path, count: int) -> dict[str, Any]:
    config = config_for(node)
    outs, contract_tx = real_outputs(node)
    fill_s = fill(tmp / "server.db", count, outs, contract_tx, node.tip()[0], PrivateKey.generate())
    server = Server(config, tmp / "server.db")
    try:
        address, listen_s, start_rss = server.expect("serving")
        serving = await handshake(tuple(address), server.started + 600)
        result: dict[str, Any] = {"channels": count, "fill_s": round(fill_s, 2),
                                  "restart_to_serving_s": round(serving - server.started, 2),
                                  "listen_s": round(listen_s, 2),
                                  "rss_after_start_mb": round(start_rss, 1)}
        client = PaymentClient(AsyncBitcoind(Bitcoind(config)), SQLiteStore(tmp / "client.db"),
                               poll_interval=0.2)
        host, port = address
        channel = await client.open(str(host), int(port), 50_000_000, new=True)
        acks: list[tuple[float, float]] = []
        paying = True

        async def pay() -> None:
            while paying:
                t0 = time.perf_counter()
                await channel.pay(AMOUNT)
                acks.append((t0, time.perf_counter()))

        payer = asyncio.create_task(pay())
        height = await asyncio.to_thread(mine, node)
        await asyncio.to_thread(server.block, height)  # the live channel's contract confirms
        spent = 0
        for k in SPENDS:
            for outpoint in outs[spent:spent + k]:
                await asyncio.to_thread(move, node, outpoint, "0.0009")
            spent += k
            await asyncio.sleep(0.5)  # payments before the block, for the gap's baseline
            t0 = time.perf_counter()
            height = await asyncio.to_thread(mine, node)
            _, seconds, folded, reviewed, step, what, collecting, autopilot = (
                await asyncio.to_thread(server.block, height))
            t1 = time.perf_counter()
            await asyncio.sleep(0.2)
            gap = max((end - start for start, end in acks if end >= t0 and start <= t1),
                      default=0.0)
            result[f"block_{k}_spends_s"] = round(seconds, 3)
            result[f"block_{k}_channels_touched"] = folded
            result[f"block_{k}_channels_reviewed"] = reviewed
            result[f"block_{k}_ack_gap_ms"] = round(gap * 1000, 1)
            result[f"block_{k}_longest_loop_step_ms"] = round(step * 1000, 1)
            result[f"block_{k}_longest_loop_step_in"] = what
            result[f"block_{k}_longest_gc_ms"] = round(collecting * 1000, 1)
            result[f"block_{k}_longest_autopilot_step_ms"] = round(autopilot * 1000, 1)
        paying = False
        await payer
        latencies = sorted(end - start for start, end in acks)
        result["live_payments"] = len(latencies)
        result["live_p50_ms"] = round(latencies[len(latencies) // 2] * 1000, 1)
        result["live_max_ack_gap_ms"] = round(latencies[-1] * 1000, 1)
        await channel.close()
        await client.stop()
        result["server_peak_rss_mb"] = round(server.stop(), 1)
        return result
    finally:
        server.kill()


# -- --connections mode --------------------------------------------------------------------


async def resumed_payer(address: tuple[str, int], record: ChannelRecord, client: PrivateKey,
                        ready: asyncio.Event, go: asyncio.Event, payments: int,
                        latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    stream = MessageStream(reader, writer)
    try:
        await stream.send(messages.client_version(3, messages.DEFAULT_TIME_WINDOW,
                                                  record.contract_txid))
        challenge = b""
        while (reply := await stream.receive(60)) is not None and reply.type != T.CHANNEL_OPEN:
            if reply.type == T.ERROR:
                raise RuntimeError(f"resume refused: {reply.error.explanation}")
            if reply.type == T.SERVER_VERSION:
                challenge = reply.server_version.resume_challenge
        ready.set()
        await go.wait()
        change = record.change
        proof = client.sign(resume_digest(challenge, record.contract_txid))
        for _ in range(payments):
            change -= AMOUNT
            update = messages.update_payment(change, record.contract.sign_payment(client, change),
                                             resume_proof=proof)
            proof = b""  # the first payment after the resume carries it
            t0 = time.perf_counter()
            await stream.send(update)
            # All K pay at once, queued behind one store: allow for the whole queue.
            while (reply := await stream.receive(900)) is not None and (
                    reply.type != T.PAYMENT_ACK):
                if reply.type == T.ERROR:
                    raise RuntimeError(f"payment refused: {reply.error.explanation}")
            latencies.append(time.perf_counter() - t0)
    finally:
        await stream.close()


async def connections(node: RegtestNode, tmp: Path, count: int, payments: int) -> dict[str, Any]:
    raise_fd_limit()
    client = PrivateKey.generate()
    outs, contract_tx = real_outputs(node)
    fill(tmp / "server.db", count, outs[:0], contract_tx, node.tip()[0], client)
    with SQLiteStore(tmp / "server.db") as store:
        records = store.channels(Role.SERVER)
    server = Server(config_for(node), tmp / "server.db")
    try:
        address, _, _ = server.expect("serving")
        server.pipe.send("rss")
        (before,) = server.expect("rss")
        go = asyncio.Event()
        readies = [asyncio.Event() for _ in records]
        latencies: list[float] = []
        tasks = []
        for record, ready in zip(records, readies, strict=True):
            tasks.append(asyncio.create_task(resumed_payer(tuple(address), record, client,
                                                           ready, go, payments, latencies)))
            if len(tasks) % 200 == 0:  # connect in waves: the listen backlog is finite
                await asyncio.gather(*(r.wait() for r in readies[len(tasks) - 200:len(tasks)]))
        await asyncio.gather(*(r.wait() for r in readies))
        server.pipe.send("rss")
        (connected,) = server.expect("rss")
        t0 = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        latencies.sort()
        stopping = time.perf_counter()
        peak = server.stop()
        return {"connections": count, "payments_per_connection": payments,
                "server_stop_s": round(time.perf_counter() - stopping, 1),
                "payments_per_s": round(len(latencies) / wall, 1),
                "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
                "server_rss_before_mb": round(before, 1),
                "server_rss_connected_mb": round(connected, 1),
                "rss_per_connection_kb": round((connected - before) * 1024 / count, 1),
                "server_peak_rss_mb": round(peak, 1)}
    finally:
        server.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--channels", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=0,
                        help="K live connections paying instead of the stored-channels run")
    parser.add_argument("--payments", type=int, default=5, help="per connection")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--show-steps", type=float, metavar="MS",
                        help="print each server event-loop step longer than MS milliseconds")
    args = parser.parse_args(argv)
    if args.show_steps is not None:
        os.environ[SHOW_STEPS] = str(args.show_steps)
    if args.channels < REAL or args.connections < 0 or args.payments < 1:
        parser.error(f"--channels must be at least {REAL}, --payments at least 1")
    load = os.getloadavg()
    with (regtest_nodes(1) as (node,),
          tempfile.TemporaryDirectory(prefix="paychan-scale-") as tmp):
        if args.connections:
            result = asyncio.run(connections(node, Path(tmp), args.connections, args.payments))
        else:
            result = asyncio.run(stored_channels(node, Path(tmp), args.channels))
    result["load_average"] = [round(x, 2) for x in load]
    result["cpus"] = os.cpu_count()
    for key, value in result.items():
        print(f"  {key:32} {value}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

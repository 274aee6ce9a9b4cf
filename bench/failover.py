"""Failover: I server instances on one PostgreSQL and one regtest node, C clients paying through
a small round-robin TCP balancer, one instance killed with SIGKILL every few seconds and
restarted; then one instance frozen (SIGSTOP) in the middle of a payment's transaction for a
while, and the PostgreSQL server restarted.

Each instance is a process of its own (PaymentServer, PostgresStore, PostgresLeases); the
clients (one PaymentClient, one channel each, one payment in flight) and the balancer share
this process. First the rate with 1, 2, ... I instances in the balancer (its connections are
dropped between phases, so the clients resume on the instances of the phase); then the kills.
At the end every channel is closed (each settled by whichever instance the client reached)
and checked: every acknowledged payment in the store's payment log (lost: acknowledged but
absent) and in the settlement (its client output at most the change of the last one
acknowledged), no payment logged twice (double-accepted), one settlement per channel.

The balancer checks each instance as an operator's would (a small health port per instance,
every 0.25 s, down after 2 failures: a stopped process still completes TCP handshakes), and a
client gives up on a payment not acknowledged within `--ack-timeout` and resumes. For each
case it reports the longest time any client could not pay; for the PostgreSQL restart also how
long after the server accepted connections again every client had paid.
Usage: python bench/failover.py [--instances I] [--clients C] [--kills K] [--kill-every S]
[--phase S] [--stop-for S] [--pg-restarts N] [--ack-timeout S]
(figures, then ONE JSON object last; the lead re-runs it on a quiet machine)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.effects import ChannelClosed
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import PaychanError, StoreError
from bitcoind_paychan.node import Bitcoind, NodeConfig, to_btc
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.regtest import regtest_ports
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import PostgresStore, SQLiteStore, open_store
from bitcoind_paychan.store.leases import ClusterPolicy, leases_for
from regtest.node import RegtestNode, free_port, regtest_nodes
from regtest.postgres import PostgresServer

AMOUNT = 1_000  # sat per payment
VALUE = 10_000_000  # sat per channel: room for every payment of the run
TAKEOVER_AFTER = 2.0  # seconds (cluster.takeover_after)
CHECK_EVERY = 0.25  # seconds between the balancer's health checks of an instance


# -- an instance (a process of its own) --------------------------------------------------


class FreezingStore(PostgresStore):
    """The instance's store: on SIGUSR1, its next payment transaction stops the whole process
    (SIGSTOP) once it holds its channels' lease rows, as a GC or VM pause would."""

    freeze = threading.Event()

    def _store_payments(self, conn: Any, batch: Sequence[Any]) -> list[StoreError | None]:
        if self.freeze.is_set():
            self.freeze.clear()
            os.kill(os.getpid(), signal.SIGSTOP)
        return super()._store_payments(conn, batch)


async def serve(dsn: str, port: int, health: int, name: str, node: dict[str, str],
                events: Path) -> None:
    """Serve on `port` (and answer health checks on `health`) until killed; each settlement
    broadcast is appended to `events`."""
    config = NodeConfig(url=node["url"], chain="regtest", wallet=node["wallet"],
                        cookie_file=Path(node["cookie"]))
    log = events.open("a", buffering=1)

    def on_event(event: ServerEvent) -> None:
        if isinstance(event, ChannelClosed):
            log.write(json.dumps({"contract": event.record.contract_txid, "instance": name,
                                  "settlement": event.settlement.txid_hex}) + "\n")

    async def healthy(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok\n")
        writer.close()

    signal.signal(signal.SIGUSR1, lambda *_: FreezingStore.freeze.set())
    store = FreezingStore(dsn)
    server = PaymentServer(regtest_ports(Bitcoind(config)), store, on_event=on_event,
                           poll_interval=0.5, review_interval=5.0,
                           leases=leases_for(store, ClusterPolicy(name, TAKEOVER_AFTER)))
    await server.listen("127.0.0.1", port)
    await asyncio.start_server(healthy, "127.0.0.1", health)
    print("listening", flush=True)
    await asyncio.Event().wait()


# -- the balancer ------------------------------------------------------------------------


class Balancer:
    """Round robin over the backends in rotation that pass their health check, skipping those
    that refuse a connection."""

    def __init__(self, backends: list[int], health: dict[int, int]) -> None:
        self.backends = backends
        self.rotation = list(backends)
        self.health = health  # backend port → its health port
        self.down: set[int] = set()
        self._next = 0
        self._pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._checking = asyncio.create_task(self._check())
        return int(self.server.sockets[0].getsockname()[1])

    async def _check(self) -> None:
        """Each backend's health port every CHECK_EVERY s: down after 2 failures, up after 1
        success (haproxy's `check inter 250ms fall 2 rise 1`)."""
        failures = dict.fromkeys(self.backends, 0)
        while True:
            checked = await asyncio.gather(*(self._healthy(b) for b in self.backends))
            for backend, ok in zip(self.backends, checked, strict=True):
                failures[backend] = 0 if ok else failures[backend] + 1
                if ok:
                    self.down.discard(backend)
                elif failures[backend] >= 2:
                    self.down.add(backend)
            await asyncio.sleep(CHECK_EVERY)

    async def _healthy(self, backend: int) -> bool:
        """Whether the backend's process answers its health port within CHECK_EVERY s."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.health[backend]), CHECK_EVERY)
            ok = await asyncio.wait_for(reader.read(), CHECK_EVERY) == b"ok\n"
            writer.close()
            return ok
        except (OSError, TimeoutError):
            return False

    def drop_all(self) -> None:
        """Hang up every proxied connection (clients resume through the new rotation)."""
        for writer in list(self._pipes):
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rotation = [port for port in self.rotation if port not in self.down] or self.rotation
        for _ in range(len(rotation)):
            port = rotation[self._next % len(rotation)]
            self._next += 1
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 1.0)
                break
            except (OSError, TimeoutError):
                continue
        else:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._pipes -= {writer, up_writer}


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


# -- the clients -------------------------------------------------------------------------


class Payer:
    """One client's channel: pays one payment at a time, resumes through the balancer when
    its connection goes (or a payment is not acknowledged within `ack_timeout`); notes each
    acknowledged change, when, and its longest time unable to pay."""

    def __init__(self, client: PaymentClient, channel: Channel, ack_timeout: float) -> None:
        self.client, self.channel = client, channel
        self.txid = channel.contract_txid
        self.ack_timeout = ack_timeout
        self.acked: list[int] = []  # the change after each acknowledged payment
        self.acked_at: list[float] = []  # and when (monotonic)
        self.longest_gap = 0.0
        self.failures = 0

    async def run(self, running: Callable[[], bool]) -> None:
        """Pay until `running()` is false. A gap runs from the last acknowledgement before a
        failure (the client has been waiting since) to the next one."""
        channel: Channel | None = self.channel
        last_ack = time.monotonic()
        down_since: float | None = None
        while running():
            try:
                if channel is None or not channel.connected:
                    channel = await self.client.resume(self.txid)
                await asyncio.wait_for(channel.pay(AMOUNT), self.ack_timeout)
                last_ack = time.monotonic()
                self.acked.append(channel.record.change)
                self.acked_at.append(last_ack)
                if down_since is not None:
                    self.longest_gap = max(self.longest_gap, last_ack - down_since)
                    down_since = None
            except (PaychanError, OSError, TimeoutError):
                self.failures += 1
                if channel is not None:
                    await channel.disconnect()
                channel = None
                down_since = down_since or last_ack
                await asyncio.sleep(0.02)

    def paid_since(self, moment: float) -> float | None:
        """When this client's first payment acknowledged after `moment` was, if any."""
        return next((t for t in self.acked_at if t > moment), None)


# -- the run -----------------------------------------------------------------------------


def cpu_seconds(roots: list[int]) -> float:
    """CPU (user + system) used so far by the processes `roots` and their descendants."""
    usage: dict[int, tuple[int, float]] = {}  # pid -> (parent, seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            usage[int(entry.name)] = (int(fields[1]),
                                      (int(fields[11]) + int(fields[12])) / TICKS)
    counted: set[int] = set()
    total, wanted = 0.0, set(roots)
    while wanted - counted:
        counted |= wanted
        wanted |= {pid for pid, (parent, _) in usage.items() if parent in counted}
    for pid in counted:
        total += usage.get(pid, (0, 0.0))[1]
    return total


TICKS = os.sysconf("SC_CLK_TCK")


def stat_state(pid: int) -> str:
    """A process's state letter (R, S, T: stopped ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


class Run:
    def __init__(self, args: argparse.Namespace, tmp: Path, node: RegtestNode,
                 postgres: PostgresServer) -> None:
        self.args, self.tmp, self.node, self.postgres = args, tmp, node, postgres
        self.dsn = postgres.dsn(postgres.new_database())
        self.ports = [free_port() for _ in range(args.instances)]
        self.health = {port: free_port() for port in self.ports}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.events = tmp / "settlements.jsonl"
        self.node_file = tmp / "node.json"
        self.node_file.write_text(json.dumps({"url": node.rpc_url, "wallet": node.wallet,
                                              "cookie": str(node.cookie_path)}))

    def start_instance(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(
            [sys.executable, __file__, "--serve", self.dsn, str(self.ports[i]),
             str(self.health[self.ports[i]]), f"i{i}", str(self.node_file), str(self.events)],
            stdout=subprocess.PIPE, cwd=Path(__file__).parent)

    def wait_listening(self, i: int) -> None:
        stdout = self.procs[i].stdout
        assert stdout is not None
        if stdout.readline().strip() != b"listening":
            raise RuntimeError(f"instance {i} did not start (see its error above)")

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def freeze(self, i: int, timeout: float = 30.0) -> None:
        """Have instance `i` stop itself (SIGSTOP) inside its next payment transaction."""
        self.procs[i].send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while stat_state(self.procs[i].pid) != "T":
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance {i} never froze: no payment reached it")
            time.sleep(0.01)

    def thaw(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGCONT)

    def cpu(self) -> float:
        """CPU seconds used so far by the instances, PostgreSQL and this process."""
        assert self.postgres.process is not None
        return cpu_seconds([os.getpid(), self.postgres.process.pid,
                            *(proc.pid for proc in self.procs.values())])

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def measure(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    node = run.node
    balancer = Balancer(run.ports, run.health)
    port = await balancer.start()
    client_store = SQLiteStore(run.tmp / "client.db")
    client = PaymentClient(regtest_ports(Bitcoind(NodeConfig(
        url=node.rpc_url, chain="regtest", wallet="client", cookie_file=node.cookie_path))),
        client_store, policy=ClientPolicy(value=VALUE), poll_interval=0.5,
        review_interval=5.0, handshake_timeout=3 * args.ack_timeout)
    payers = []
    for n in range(1, args.clients + 1):
        payers.append(Payer(client, await client.open("127.0.0.1", port, VALUE, new=True),
                            args.ack_timeout))
        if n % 20 == 0:  # each contract spends the last one's change: stay below the node's
            await asyncio.to_thread(node.mine, 1)  # limit of 25 unconfirmed ancestors
    running = True
    tasks = [asyncio.create_task(p.run(lambda: running)) for p in payers]

    cpu: dict[int, tuple[float, float, float]] = {}  # cores: ours, everyone's; ms/payment

    async def rate(instances: int) -> float:
        balancer.rotation = run.ports[:instances]
        balancer.drop_all()
        await asyncio.sleep(2.0)  # everyone resumed on the phase's instances
        before, ours, all_ = sum(len(p.acked) for p in payers), time.process_time(), run.cpu()
        await asyncio.sleep(args.phase)
        paid = sum(len(p.acked) for p in payers) - before
        used = run.cpu() - all_
        cpu[instances] = ((time.process_time() - ours) / float(args.phase),
                          used / float(args.phase), 1000 * used / max(paid, 1))
        return paid / float(args.phase)

    rates = {n: await rate(n) for n in range(1, args.instances + 1)}
    for p in payers:
        p.longest_gap = 0.0  # the phases' hand-overs are not failures
    acked_before = sum(len(p.acked) for p in payers)
    started = time.monotonic()
    for kill in range(args.kills):
        await asyncio.sleep(args.kill_every)
        victim = kill % args.instances
        run.kill(victim)
        run.start_instance(victim)
        await asyncio.to_thread(run.wait_listening, victim)
    kill_phase_s = time.monotonic() - started
    acked_during_kills = sum(len(p.acked) for p in payers) - acked_before
    gaps = {"sigkill": await longest_gap(payers, time.monotonic())}
    if args.stop_for > 0:  # one instance frozen inside a payment's transaction
        await asyncio.to_thread(run.freeze, 0)
        await asyncio.sleep(args.stop_for)
        run.thaw(0)
        gaps["sigstop"] = await longest_gap(payers, time.monotonic())
    back_after = []
    for _ in range(args.pg_restarts):
        await asyncio.to_thread(run.postgres.restart)
        ready = time.monotonic()  # the server accepts connections again
        gaps["postgres_restart"] = max(gaps.get("postgres_restart", 0.0),
                                       await longest_gap(payers, ready))
        back_after.append(max(p.paid_since(ready) or ready for p in payers) - ready)
    running = False
    await asyncio.gather(*tasks)
    result = await verify(run, client, client_store, payers, rates, cpu, kill_phase_s,
                          acked_during_kills)
    result["longest_unable_to_pay_s"] = {case: round(gap, 3) for case, gap in gaps.items()}
    result["sigstop_s"] = args.stop_for
    result["postgres_restarts"] = args.pg_restarts
    result["all_paying_after_postgres_ready_s"] = (round(max(back_after), 3) if back_after
                                                   else None)
    return result


async def longest_gap(payers: list[Payer], since: float, timeout: float = 60.0) -> float:
    """The longest time any client could not pay, once each has paid after `since` (the case
    is over); the figure starts again from 0 for the next case."""
    deadline = time.monotonic() + timeout
    while any(p.paid_since(since) is None for p in payers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stuck = [p.txid for p in payers if p.paid_since(since) is None]
    if stuck:
        raise RuntimeError(f"{len(stuck)} client(s) could not pay for {timeout} s: {stuck}")
    longest = max(p.longest_gap for p in payers)
    for p in payers:
        p.longest_gap = 0.0
    return longest


async def verify(run: Run, client: PaymentClient, client_store: SQLiteStore,
                 payers: list[Payer], rates: dict[int, float],
                 cpu: dict[int, tuple[float, float, float]],
                 kill_phase_s: float, acked_during_kills: int) -> dict[str, Any]:
    closes = []
    for payer in payers:  # each settled by whichever instance the balancer picks
        for _ in range(20):
            try:
                channel = await client.resume(payer.txid)
                closes.append(await channel.close())
                break
            except PaychanError:
                await asyncio.sleep(0.2)
    await asyncio.to_thread(run.node.mine, 1)
    await client.stop()
    client_store.close()
    await asyncio.sleep(1.0)  # the instances log what they broadcast
    store = open_store(engine="postgresql", dsn=run.dsn)
    lost = double = lost_in_settlement = 0
    settled_by: dict[str, set[str]] = {}
    for line in run.events.read_text().splitlines():
        entry = json.loads(line)
        settled_by.setdefault(entry["contract"], set()).add(entry["settlement"])
    settlements = {tx.inputs[0].prevout.txid_hex: tx for tx in closes}
    for payer in payers:
        log = store.payments(Role.SERVER, payer.txid)
        changes = [entry.change_after for entry in log]
        double += len(changes) - len(set(changes))
        lost += sum(1 for change in payer.acked if change not in set(changes))
        settlement = settlements.get(payer.txid)
        if settlement is None:
            lost_in_settlement += len(payer.acked)
        elif settled_by.get(payer.txid) != {settlement.txid_hex}:
            raise RuntimeError(f"channel {payer.txid}: the client saw settlement "
                               f"{settlement.txid_hex}, the instances broadcast "
                               f"{settled_by.get(payer.txid)}")
        else:  # its client output: the change the settlement leaves the client
            left = settlement.outputs[0].value
            lost_in_settlement += sum(1 for change in payer.acked if change < left)
    open_left = len(store.channels(Role.SERVER, (ChannelStatus.OPEN,)))
    store.close()
    total_acked = sum(len(p.acked) for p in payers)
    return {
        "instances": run.args.instances, "clients": run.args.clients,
        "kills": run.args.kills, "kill_every_s": run.args.kill_every,
        "payments_acknowledged": total_acked,
        "payments_acknowledged_during_kills": acked_during_kills,
        "payments_lost": lost + lost_in_settlement,
        "payments_lost_from_store": lost, "payments_lost_from_settlement": lost_in_settlement,
        "double_accepted": double,
        "settlements_broadcast_twice": sum(1 for s in settled_by.values() if len(s) > 1),
        "channels_settled": len(settled_by), "channels_closed_by_clients": len(closes),
        "channels_left_open": open_left,
        "client_failures_seen": sum(p.failures for p in payers),
        "payments_per_s": {str(n): round(r, 1) for n, r in rates.items()},
        "payments_per_s_during_kills": round(acked_during_kills / kill_phase_s, 1),
        "scaling_2_over_1": round(rates.get(2, 0.0) / rates[1], 2) if rates.get(1) else None,
        "cores_clients_and_balancer": {str(n): round(c[0], 2) for n, c in cpu.items()},
        "cores_used": {str(n): round(c[1], 2) for n, c in cpu.items()},
        "cpu_ms_per_payment": {str(n): round(c[2], 3) for n, c in cpu.items()},
        "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
    }


def fund_client(node: RegtestNode, clients: int) -> None:
    node.rpc("createwallet", "client")
    coin = to_btc(VALUE + 100_000)
    node.pay_in_block({node.rpc("getnewaddress", wallet="client"): coin
                       for _ in range(clients)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    with (regtest_nodes(1) as (node,), PostgresServer() as postgres,
          tempfile.TemporaryDirectory(prefix="paychan-failover-") as tmp):
        fund_client(node, args.clients)
        runner = Run(args, Path(tmp), node, postgres)
        try:
            for i in range(args.instances):
                runner.start_instance(i)
            for i in range(args.instances):
                runner.wait_listening(i)
            return asyncio.run(measure(args, runner))
        finally:
            runner.stop_all()


def show(result: dict[str, Any]) -> None:
    r = result
    print(f"failover: {r['instances']} instances, {r['clients']} clients, {r['kills']} kills "
          f"(SIGKILL every {r['kill_every_s']} s, restarted at once)")
    print(f"  acknowledged      {r['payments_acknowledged']} payments "
          f"({r['payments_acknowledged_during_kills']} during the kills)")
    print(f"  lost              {r['payments_lost']} (store {r['payments_lost_from_store']}, "
          f"settlement {r['payments_lost_from_settlement']})")
    print(f"  double-accepted   {r['double_accepted']}")
    print(f"  settled twice     {r['settlements_broadcast_twice']} of "
          f"{r['channels_settled']} channels settled ({r['channels_left_open']} left open)")
    gaps = r["longest_unable_to_pay_s"]
    print(f"  longest unable to pay  SIGKILL {gaps['sigkill']} s"
          + (f", SIGSTOP for {r['sigstop_s']} s mid-transaction {gaps['sigstop']} s"
             if "sigstop" in gaps else "")
          + (f", PostgreSQL restart {gaps['postgres_restart']} s (every client paying again "
             f"{r['all_paying_after_postgres_ready_s']} s after it accepted connections)"
             if "postgres_restart" in gaps else "")
          + f" ({r['client_failures_seen']} failed attempts in all)")
    rates = ", ".join(f"{n}: {v}/s" for n, v in r["payments_per_s"].items())
    print(f"  payments/s by instances  {rates}; during the kills "
          f"{r['payments_per_s_during_kills']}/s; 2 over 1: {r['scaling_2_over_1']}x "
          f"({r['cpus']} CPUs, load average {r['load_average']})")
    for key, what in (("cores_used", "cores used (instances, PostgreSQL, clients)"),
                      ("cpu_ms_per_payment", "CPU ms per payment (the same processes)"),
                      ("cores_clients_and_balancer", "cores used by the clients and balancer")):
        figures = ", ".join(f"{n}: {v}" for n, v in r[key].items())
        print(f"  {what} by instances  {figures}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--phase", type=float, default=8.0,
                        help="seconds each rate is measured over")
    parser.add_argument("--stop-for", type=float, default=6.0,
                        help="seconds an instance stays frozen mid-transaction (0: no SIGSTOP)")
    parser.add_argument("--pg-restarts", type=int, default=1,
                        help="PostgreSQL restarts while the clients pay")
    parser.add_argument("--ack-timeout", type=float, default=1.0,
                        help="seconds a client waits for an ack before it resumes elsewhere")
    parser.add_argument("--json", action="store_true",
                        help="accepted for symmetry: the JSON object is always printed last")
    parser.add_argument("--serve", nargs=6,
                        metavar=("DSN", "PORT", "HEALTH", "NAME", "NODE", "EVENTS"),
                        help=argparse.SUPPRESS)  # an instance's process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.serve:
        dsn, port, health, name, node, events = args.serve
        asyncio.run(serve(dsn, int(port), int(health), name, json.loads(Path(node).read_text()),
                          Path(events)))
        return 0
    result = run(args)
    show(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

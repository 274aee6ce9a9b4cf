"""kill -9 of either side at each stage, then a restart: nothing lost, every deadline kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import ChannelFailed
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
from bitcoind_paychan.node.ports import NodePorts
from bitcoind_paychan.service.client import PaymentClient
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.store import SQLiteStore
from regtest.node import free_port
from regtest.waiting import until
from tests.conftest import config_for
from tests.service.conftest import FAST, Sides
from tests.service.side_process import HoldingBroadcaster

ROOT = Path(__file__).resolve().parents[2]
VALUE = 1_000_000


class Side:
    """A server or client process: read its JSON events, kill it with SIGKILL."""

    running: ClassVar[list[asyncio.subprocess.Process]] = []

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        Side.running.append(proc)

    @classmethod
    async def start(cls, sides: Sides, role: str, store: Path, port: int,
                    *options: str) -> Side:
        wallet = sides.server_node.wallet if role == "server" else sides.client_wallet
        node = store.with_suffix(".node.json")
        node.write_text(json.dumps({"url": sides.server_node.rpc_url, "wallet": wallet,
                                    "cookie": str(sides.server_node.cookie_path)}))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.service.side_process", role, str(node), str(store),
            str(port), *options, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def wait_for(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"process ended before {event!r}: {self.events}")
                self.events.append(json.loads(line))
                if self.events[-1]["event"] == event:
                    return self.events[-1]

    async def kill(self) -> None:
        self.proc.kill()
        await self.proc.wait()


@pytest.fixture(autouse=True)
def no_side_outlives_its_test() -> Iterator[None]:
    yield
    for proc in Side.running:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    Side.running.clear()


def stores(sides: Sides) -> tuple[Path, Path]:
    return sides.tmp / "server.db", sides.tmp / "client.db"


def client_for(sides: Sides, store: Path, policy: ClientPolicy | None = None
               ) -> PaymentClient:
    node = AsyncBitcoind(Bitcoind(config_for(sides.client_node, wallet=sides.client_wallet)))
    holding = HoldingBroadcaster(node, Path("/nonexistent"), 0, 0)
    return PaymentClient(NodePorts.of(node, broadcaster=holding),
                         SQLiteStore(store), autopilot=FAST, poll_interval=0.2,
                         review_interval=0.5, on_event=sides.client_event, policy=policy)


def server_for(sides: Sides, store: Path, hold: int = 0, after: int = 0) -> PaymentServer:
    node = AsyncBitcoind(Bitcoind(config_for(sides.server_node)))
    holding = HoldingBroadcaster(node, Path(str(store) + ".go"), hold, after)
    wallet = NodePorts.of(node, broadcaster=holding)
    return PaymentServer(wallet, SQLiteStore(store), autopilot=FAST, poll_interval=0.2,
                         review_interval=0.5, on_event=sides.events.append)


async def mine(sides: Sides, blocks: int = 1) -> None:
    await asyncio.to_thread(sides.server_node.mine, blocks)


def settled_amounts(sides: Sides, txid: str) -> tuple[int, int]:
    """(first output, last output) of the transaction that spent contract `txid`, from the
    mempool or the last 30 blocks."""
    node = sides.server_node
    found = node.rpc("gettxspendingprevout", [{"txid": txid, "vout": 0}])[0]
    candidates = [node.rpc("getrawtransaction", found["spendingtxid"], True)] if (
        "spendingtxid" in found) else []
    block = node.rpc("getbestblockhash")
    for _ in range(30):
        info = node.rpc("getblock", block, 2)
        candidates += info["tx"]
        block = info.get("previousblockhash")
        if not block:
            break
    for tx in candidates:
        if any(i.get("txid") == txid and i.get("vout") == 0 for i in tx["vin"]):
            values = [round(o["value"] * 100_000_000) for o in tx["vout"]]
            return values[0], values[-1]
    raise AssertionError(f"nothing spent contract {txid}")


# -- the server dies -------------------------------------------------------------------------


def test_server_killed_before_the_contract_broadcast(one_node: Sides) -> None:
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()

    async def scenario() -> tuple[str, int]:
        server = await Side.start(sides, "server", server_db, port, "--hold", "1")
        await server.wait_for("listening")
        client = client_for(sides, client_db)
        opening = asyncio.create_task(client.open("127.0.0.1", port, VALUE))
        await server.wait_for("holding")  # stored, not yet broadcast
        await server.kill()
        with pytest.raises(ChannelFailed):
            await opening
        restarted = await Side.start(sides, "server", server_db, port)
        await restarted.wait_for("listening")
        channel = await client.open("127.0.0.1", port, VALUE)  # resumes the stored channel
        await until(lambda: channel.contract_txid in sides.server_node.rpc("getrawmempool"),
                    what="the restarted server to broadcast the contract")
        for _ in range(3):
            await channel.pay(5_000)
        settlement = await channel.close()
        await client.stop()
        await restarted.kill()
        return channel.contract_txid, settlement.outputs[0].value

    txid, change = asyncio.run(scenario())
    assert change == VALUE - 1_000 - 15_000
    assert settled_amounts(sides, txid)[0] == change


def test_server_killed_mid_payments_settles_at_once_when_back_after_its_deadline(
    one_node: Sides,
) -> None:
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()

    async def scenario() -> tuple[str, int]:
        server = await Side.start(sides, "server", server_db, port)
        await server.wait_for("listening")
        client = client_for(sides, client_db)
        channel = await client.open("127.0.0.1", port, VALUE)
        for _ in range(5):
            await channel.pay(2_000)
        await server.kill()  # mid-payments
        record = channel.record
        deadline = record.contract.expiry - FAST.settle_margin
        sides.server_node.set_mocktime(deadline + 600)
        await mine(sides)  # the deadline passes while the server is down
        assert sides.server_node.rpc("getblockchaininfo")["mediantime"] < record.contract.expiry
        restarted = await Side.start(sides, "server", server_db, port)
        await restarted.wait_for("listening")
        await until(lambda: "spendingtxid" in sides.server_node.rpc(
            "gettxspendingprevout", [{"txid": channel.contract_txid, "vout": 0}])[0],
                    what="the restarted server to settle at once")
        await mine(sides)
        await until(lambda: client.store.get(Role.CLIENT, channel.contract_txid) is not None
                    and client.store.get(Role.CLIENT, channel.contract_txid).status  # type: ignore[union-attr]
                    is ChannelStatus.SETTLED, what="the client to record the settlement")
        await client.stop()
        await restarted.kill()
        return channel.contract_txid, record.change

    txid, change = asyncio.run(scenario())
    assert settled_amounts(sides, txid)[0] == change == VALUE - 1_000 - 10_000


def test_server_killed_after_the_settlement_broadcast(one_node: Sides) -> None:
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()

    async def scenario() -> str:
        server = await Side.start(sides, "server", server_db, port, "--after", "2")
        await server.wait_for("listening")
        client = client_for(sides, client_db)
        channel = await client.open("127.0.0.1", port, VALUE)
        await channel.pay(3_000)
        closing = asyncio.create_task(channel.close(timeout=30))
        await server.wait_for("holding")  # broadcast, CLOSE not yet sent
        await server.kill()
        settlement = await closing  # the client finds it in the mempool
        restarted = await Side.start(sides, "server", server_db, port)
        await restarted.wait_for("listening")
        await mine(sides, 2)  # forget_depth
        store = SQLiteStore(server_db, read_only=True)  # the restarted server owns it
        await until(lambda: store.get(Role.SERVER, channel.contract_txid) is None,
                    what="the restarted server to see it settle, then forget it")
        store.close()
        await client.stop()
        await restarted.kill()
        return settlement.txid_hex

    settlement = asyncio.run(scenario())
    assert sides.server_node.rpc("getrawtransaction", settlement, True)["confirmations"] >= 2


# -- the client dies -------------------------------------------------------------------------


def test_client_killed_before_the_contract_broadcast(one_node: Sides) -> None:
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()

    async def scenario() -> tuple[str, int]:
        server = server_for(sides, server_db, hold=1)
        await server.listen("127.0.0.1", port)
        client = await Side.start(sides, "client", client_db, port)
        await until(lambda: server.store.channels(Role.SERVER) != [], what="the contract")
        await client.kill()  # it stored the channel and sent the contract; no CHANNEL_OPEN yet
        Path(str(server_db) + ".go").touch()  # let the server broadcast now
        again = await Side.start(sides, "client", client_db, port, "--pays", "4", "--close")
        opened = await again.wait_for("opened")
        closed = await again.wait_for("closed")
        await again.kill()
        await server.stop()
        assert closed["settlement"]
        return opened["contract"], sum(p.amount for p in sides.payments())

    txid, paid = asyncio.run(scenario())
    assert paid == 1_000 + 4 * 1_000
    assert settled_amounts(sides, txid)[0] == VALUE - paid


def test_client_killed_after_the_settlement_broadcast(one_node: Sides) -> None:
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()

    async def scenario() -> tuple[str, int]:
        server = server_for(sides, server_db, after=2)
        await server.listen("127.0.0.1", port)
        client = await Side.start(sides, "client", client_db, port, "--pays", "2", "--close")
        opened = await client.wait_for("opened")
        await until(lambda: server.watcher.chain_state(opened["contract"]).spender != b""
                    or any(e.status is ChannelStatus.CLOSING for e in server.channels()),
                    what="the settlement broadcast")
        await client.kill()  # before it heard CLOSE
        Path(str(server_db) + ".go").touch()
        await server.stop()
        restarted = client_for(sides, client_db)
        await restarted.start()  # the autopilot alone
        await mine(sides)
        txid = opened["contract"]
        await until(lambda: restarted.store.get(Role.CLIENT, txid) is not None
                    and restarted.store.get(Role.CLIENT, txid).status  # type: ignore[union-attr]
                    is ChannelStatus.SETTLED, what="the restarted client to record it")
        # the application hears of it after it is stored
        await until(lambda: bool(sides.client_events), what="the channel's finished event")
        change = restarted.store.get(Role.CLIENT, txid).change  # type: ignore[union-attr]
        await restarted.stop()
        return txid, change

    txid, change = asyncio.run(scenario())
    assert settled_amounts(sides, txid)[0] == change
    (finished,) = sides.client_events
    assert finished.status is ChannelStatus.SETTLED and finished.client_amount == change


def test_client_killed_then_back_after_the_expiry_refunds_at_once(one_node: Sides) -> None:
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()

    async def scenario() -> str:
        server = server_for(sides, server_db)
        await server.listen("127.0.0.1", port)
        client = await Side.start(sides, "client", client_db, port, "--pays", "3")
        opened = await client.wait_for("opened")
        for _ in range(3):
            await client.wait_for("paid")
        await client.kill()
        await server.stop()  # and the server vanishes too
        with SQLiteStore(client_db, read_only=True) as looking:
            expiry = looking.get(Role.CLIENT, opened["contract"]).contract.expiry  # type: ignore[union-attr]
        await asyncio.to_thread(sides.client_node.advance_median_time_past, expiry)
        restarted = client_for(sides, client_db)
        await restarted.start()
        txid: str = opened["contract"]
        await until(lambda: restarted.watcher.chain_state(txid).spender != b"",
                    what="the refund, at once")
        await until(lambda: "spendingtxid" in sides.server_node.rpc(
            "gettxspendingprevout", [{"txid": txid, "vout": 0}])[0], what="refund in mempool")
        await mine(sides)
        await until(lambda: restarted.store.get(Role.CLIENT, txid) is not None
                    and restarted.store.get(Role.CLIENT, txid).status  # type: ignore[union-attr]
                    is ChannelStatus.REFUNDED, what="the refund to confirm")
        await restarted.stop()
        return txid

    txid = asyncio.run(scenario())
    change, _ = settled_amounts(sides, txid)
    assert VALUE - 5_000 < change < VALUE


# -- a re-anchor (issue 23) with the server killed at each step ---------------------------

DAY = 24 * 3600
REANCHOR_STEPS = {
    "stored": ("--hold", "2"),  # R stored complete, not broadcast, no ACK
    "broadcast": ("--after", "2"),  # R stored and broadcast, no ACK
    "confirmed": (),  # R acknowledged, then confirmed while the server is down
}


@pytest.mark.parametrize("step", list(REANCHOR_STEPS))
def test_server_killed_at_each_step_of_a_reanchor(one_node: Sides, step: str) -> None:
    """Rule 3: kill -9 of the server at each step after it takes R, then a restart: its
    watcher broadcasts the stored R, the resumed client re-sends REANCHOR_SIGNED and gets
    the ACK (or, R confirmed meanwhile, CHANNEL_OPEN then REANCHOR_LOCKED), the channel
    moves to the new contract once R confirms, and nothing paid is lost: the settlement of
    the new contract pays exactly what both sides stored."""
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()

    async def scenario() -> tuple[str, int, int, int]:
        server = await Side.start(sides, "server", server_db, port, "--reanchoring",
                                  *REANCHOR_STEPS[step])
        await server.wait_for("listening")
        client = client_for(sides, client_db, ClientPolicy(VALUE, reanchoring=True))
        channel = await client.open("127.0.0.1", port, VALUE, version=3)
        await mine(sides)  # the contract confirmed: the server's next broadcast is R's
        await channel.pay(10_000)
        if step == "confirmed":
            await channel.reanchor(0, 2 * DAY)
            await server.kill()
            await channel.disconnect()  # an idle channel would notice at its next read
            await mine(sides)  # R confirmed while the server is down
        else:
            reanchoring = asyncio.create_task(channel.reanchor(0, 2 * DAY))
            await server.wait_for("holding")
            await server.kill()
            with pytest.raises(ChannelFailed):
                await reanchoring
        stored = client.store.get(Role.CLIENT, channel.channel_id)
        assert stored is not None and stored.pending is not None
        r_txid = stored.pending.txid
        restarted = await Side.start(sides, "server", server_db, port, "--reanchoring")
        await restarted.wait_for("listening")
        channel = await client.open("127.0.0.1", port, VALUE)  # resumes the stored channel
        if step != "confirmed":
            await until(lambda: r_txid in sides.server_node.rpc("getrawmempool"),
                        what="the restarted server to broadcast R")
            await mine(sides)
        looking = SQLiteStore(server_db, read_only=True)

        def promoted() -> bool:
            record = looking.get(Role.SERVER, channel.channel_id)
            return record is not None and record.generation == 1

        await until(promoted, what="the server's promotion")
        looking.close()
        await channel.pay(3_000)  # crosses REANCHOR_LOCKED (or follows it)
        assert channel.record.generation == 1
        await channel.pay(4_000)  # on the new contract alone
        record = channel.record
        settlement = await channel.close()
        await client.stop()
        await restarted.kill()
        assert settlement.inputs[0].prevout.txid_hex == r_txid  # C' = R:0
        return r_txid, record.change, settlement.outputs[0].value, record.generation

    r_txid, change, settled, generation = asyncio.run(scenario())
    assert generation == 1 and settled == change
    assert settled_amounts(sides, r_txid)[0] == change


@pytest.mark.parametrize("step", ["signed", "acknowledged"])
def test_client_killed_at_each_step_of_a_reanchor(one_node: Sides, step: str) -> None:
    """Rule 3: kill -9 of the client after it stored and sent its signed R ("signed": the
    server holds R stored, not yet broadcast nor acknowledged) or once R was acknowledged
    ("acknowledged": R then confirms while the client is down). Restarted from its store,
    the client resumes: it re-sends R and gets the ACK, or hears REANCHOR_LOCKED; the
    channel moves to the new contract and settles there with every payment."""
    sides = one_node
    server_db, client_db = stores(sides)
    port = free_port()
    hold = ("--hold", "2") if step == "signed" else ()

    async def scenario() -> tuple[int, int]:
        server = await Side.start(sides, "server", server_db, port, "--reanchoring", *hold)
        await server.wait_for("listening")
        client = await Side.start(sides, "client", client_db, port, "--pays", "2",
                                  "--reanchoring")
        opened = await client.wait_for("opened")
        await client.wait_for("reanchoring")
        if step == "signed":
            await server.wait_for("holding")  # R stored by both, not acknowledged
            await client.kill()
            Path(str(server_db) + ".go").touch()  # the server goes on: broadcast, ACK lost
        else:
            await client.wait_for("reanchored")
            await client.kill()
        stored = SQLiteStore(client_db, read_only=True).get(Role.CLIENT, opened["contract"])
        assert stored is not None and stored.pending is not None  # R, stored before it left
        r_txid = stored.pending.txid
        await until(lambda: r_txid in sides.server_node.rpc("getrawmempool"),
                    what="the server to broadcast R")
        await mine(sides)  # the contract and R
        looking = SQLiteStore(server_db, read_only=True)

        def promoted() -> bool:
            record = looking.get(Role.SERVER, opened["contract"])
            return record is not None and record.generation == 1

        await until(promoted, what="the server's promotion")
        looking.close()
        # The client resumes the old generation ("signed": R not even acknowledged; it
        # re-sends R, answered REANCHOR_LOCKED): CHANNEL_OPEN, then REANCHOR_LOCKED.
        restarted = client_for(sides, client_db, ClientPolicy(VALUE, reanchoring=True))
        channel = await restarted.resume(opened["contract"])
        await channel.pay(3_000)
        assert channel.record.generation == 1
        record = channel.record
        settlement = await channel.close()
        await restarted.stop()
        await server.kill()
        assert settlement.inputs[0].prevout == record.contract.outpoint  # C'
        return record.change, settlement.outputs[0].value

    change, settled = asyncio.run(scenario())
    assert settled == change

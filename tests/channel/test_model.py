"""A stateful, property-based model of a client, a server, their stores, connections and the
chain: hypothesis searches for the interleaving that loses money.

Every rule is an input one side can get; the invariants (tests/channel/model/checks.py) are
checked at each send and broadcast and after every step. What runs (tests/channel/model/
search.py):

- `test_channel_model`: in `make test` the quick profile, a fixed derandomized smoke set (the
  same 150 examples every run); `HYPOTHESIS_PROFILE=deep .venv/bin/pytest
  tests/channel/test_model.py::test_channel_model` searches 10,000 random examples of up to
  80 steps (minutes; run it with `nice`, before resolving an issue that touches the
  machines, the stores or the watcher) and prints its seed, examples, steps and time.
- `test_model_search`: in `make test`, random examples in batches of 100 until
  MODEL_SEARCH_SECONDS (120) have passed, each batch under a fresh seed, so every CI run
  looks somewhere new.

A failure says its seed and the command that runs it again (`--hypothesis-seed=N`); random
runs keep the example database in `.hypothesis/model` (out of git), which replays the
failures it saved before anything new. Failures found are replayed step by step as plain
tests at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bitcoind_paychan.bitcoin.tx import Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import DUST, VERSIONS
from bitcoind_paychan.channel.records import ChannelRecord as ChannelRecordT
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.channel.watch import client_share
from bitcoind_paychan.wire import decode_message
from tests.channel.model import glue
from tests.channel.model.checks import PAYOUT, WATCH_POLICY
from tests.channel.model.search import (
    PROFILE,
    PROFILE_NAME,
    SEARCH_SECONDS,
    TALLY,
    fresh_seed,
    reproduce,
    run,
    timed_search,
)
from tests.channel.model.world import SERVER_POLICY, Connection, Crash, Process, World

if PROFILE_NAME == "deep":
    pytestmark = pytest.mark.timeout(0)  # the deep search takes as long as it takes

HOUR = 3600
sides = st.sampled_from([Role.CLIENT, Role.SERVER])
block_steps = st.sampled_from([1, 600, 600, HOUR, 4 * HOUR, 12 * HOUR])
AMOUNTS = ("one", "dust-1", "dust", "min-1", "min", "leave-dust", "all", "too-much")
amounts = st.sampled_from(AMOUNTS) | st.integers(1, 60_000)
pick = st.integers(0, 7)


class ChannelModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()

    # -- plumbing ------------------------------------------------------------------------

    def process(self, side: Role) -> Process:
        return self.world.client if side is Role.CLIENT else self.world.server

    def act(self, action: Callable[[], object]) -> None:
        """Run `action`; a process that crashes mid-way is down afterwards."""
        try:
            action()
        except Crash as crash:
            self.process(crash.args[0]).crashed()
            self.world.prune()

    def connection(self, index: int) -> Connection | None:
        conns = self.world.connections
        return conns[index % len(conns)] if conns else None

    def chain_moved(self) -> None:
        """The nodes tell both watchers (ZMQ) about new blocks."""
        for side in (Role.SERVER, Role.CLIENT):
            self.act(self.process(side).watch)

    # -- the client application ------------------------------------------------------------

    @rule(version=st.sampled_from(VERSIONS),
          window=st.sampled_from([5 * HOUR, 24 * HOUR - 60]),
          value=st.sampled_from([100_000, 150_000]), autopilot=st.booleans(),
          flow=st.booleans())
    def open_channel(self, version: int, window: int, value: int, flow: bool,
                     autopilot: bool = False) -> None:
        self.act(lambda: self.world.client.open(version, window, value, autopilot))
        self.let_flow(flow)

    @precondition(lambda self: self.client_connected())
    @rule(amount=amounts, flow=st.booleans())
    def pay(self, amount: int | str, flow: bool) -> None:
        conn = self.world.client.conn
        record = conn.client.record if conn else None
        if record is None:
            return
        self.act(lambda: self.world.client.pay(self.amount(amount, record.change)))
        self.let_flow(flow)

    def client_connected(self) -> bool:
        conn = self.world.client.conn
        return conn is not None and not conn.client_done

    def let_flow(self, flow: bool) -> None:
        """If `flow`, the client's connection runs until quiet."""
        conn = self.world.client.conn
        if flow and conn is not None:
            self.flush_connection(conn)

    @staticmethod
    def amount(kind: int | str, change: int) -> int:
        if isinstance(kind, int):
            return kind
        minimum = SERVER_POLICY.min_payment
        return {"one": 1, "dust-1": DUST - 1, "dust": DUST, "min-1": minimum - 1,
                "min": minimum, "leave-dust": change - DUST + 1, "all": change,
                "too-much": change + 1}[kind]

    @precondition(lambda self: self.client_connected())
    @rule(flow=st.booleans())
    def client_closes(self, flow: bool) -> None:
        self.act(self.world.client.close)
        self.let_flow(flow)

    @precondition(lambda self: self.client_connected())
    @rule(top_up=st.sampled_from([0, 100_000]), window=st.sampled_from([0, 24 * HOUR]),
          flow=st.booleans(), wallet_later=st.booleans())
    def client_reanchors(self, top_up: int, window: int, flow: bool,
                         wallet_later: bool = False) -> None:
        """Issue 23: a top-up and/or a renewal (the server adds a payout of what it acked);
        with `wallet_later`, the wallet's funding answers when `wallet_answers` says."""
        self.world.client.defer_funding = wallet_later
        self.act(lambda: self.world.client.reanchor(top_up, window))
        self.let_flow(flow)

    @precondition(lambda self: self.world.client.funding is not None)
    @rule(fail=st.booleans(), flow=st.booleans())
    def wallet_answers(self, fail: bool, flow: bool) -> None:
        """The wallet funds the top-up (or has no coins) after messages went on meanwhile:
        a refusal, a close, a lost connection."""
        self.act(lambda: self.world.client.answer_funding(fail))
        self.let_flow(flow)

    @precondition(lambda self: self.world.client.offered is not None)
    @rule(propose=st.booleans(), top_up=st.sampled_from([0, 100_000]),
          window=st.sampled_from([0, 24 * HOUR]), flow=st.booleans())
    def client_answers_offer(self, propose: bool, top_up: int, window: int,
                             flow: bool) -> None:
        """Issue 23: the client's autopilot answers the server's unasked payout: its own
        top-up and/or renewal (the answer pays the payout too), or the payout alone."""
        self.act(lambda: self.world.client.answer_offer(propose, top_up, window))
        self.let_flow(flow)

    @precondition(lambda self: self.client_connected())
    @rule(top_up=st.sampled_from([0, 100_000]), window=st.sampled_from([0, 24 * HOUR]),
          blocks=st.integers(1, 3), step=block_steps, pay=st.booleans())
    def reanchor_and_mine(self, top_up: int, window: int, blocks: int, step: int,
                          pay: bool) -> None:
        """Issue 23 on chain: a whole re-anchor (a payment signed on both contracts while R
        is pending, if `pay`), then blocks that take what the mempool holds (R among it)."""
        self.client_reanchors(top_up=top_up, window=window, flow=True)
        if pay:
            self.pay(amount="min", flow=True)
        self.mine(blocks=blocks, step=step, include=True)

    # -- the server operator ---------------------------------------------------------------

    @rule(index=pick, renew=st.booleans())
    def server_quotes_reanchor(self, index: int, renew: bool) -> None:
        """Issue 23: the server asks for a payout (and a renewal) on a live connection."""
        conn = self.connection(index)
        if conn is not None:
            self.act(lambda: self.world.server.quote(conn, renew))

    @rule(index=pick)
    def server_closes(self, index: int) -> None:
        server = self.world.server
        if not server.up:
            return
        open_ = server.store.channels(Role.SERVER, (ChannelStatus.OPEN,))
        if open_:
            self.act(lambda: server.settle_stored(open_[index % len(open_)].channel_id))

    @rule(index=pick, flow=st.booleans())
    def settle_while_resuming(self, index: int, flow: bool) -> None:
        """A settlement is decided (the operator, the autopilot) while a resume of the same
        channel is in flight: loaded as open, its proof not taken yet. With none in flight,
        the client (its connection lost) resumes its stored channel and the server loads it
        first."""
        world, server = self.world, self.world.server
        if not any(glue.server_resumed(c.server) for c in world.connections) and (
                world.client.resumable() is not None):
            live = world.client.conn
            if live is not None and live in world.connections:
                self.lose_connection(world.connections.index(live))
            self.act(lambda: world.client.open(3, 24 * HOUR, 100_000))
            conn = world.client.conn
            if conn is not None and conn.to_server:
                self.act(lambda: world.deliver(conn, True, False))  # CLIENT_VERSION: loaded
        loaded = [c.server.record for c in world.connections
                  if glue.server_resumed(c.server) and c.server.record is not None]
        if server.up and loaded:
            txid = loaded[index % len(loaded)].channel_id
            self.act(lambda: server.settle_stored(txid))
        self.let_flow(flow)

    # -- the network -----------------------------------------------------------------------

    @precondition(lambda self: self.world.connections)
    @rule(index=pick, to_server=st.booleans(), duplicate=st.booleans() | st.just(False))
    def deliver(self, index: int, to_server: bool, duplicate: bool) -> None:
        conn = self.connection(index)
        if conn is not None:
            self.act(lambda: self.world.deliver(conn, to_server, duplicate))

    @precondition(lambda self: self.world.connections)
    @rule(index=pick)
    def flush(self, index: int) -> None:
        conn = self.connection(index)
        if conn is not None:
            self.flush_connection(conn)

    def flush_connection(self, conn: Connection) -> None:
        """Frames flow both ways until the connection is quiet (or over)."""
        for _ in range(40):
            if conn not in self.world.connections:
                return
            to_server = bool(conn.to_server) or (not conn.to_client and conn.client_done)
            if not (conn.to_server or conn.to_client or conn.client_done or conn.server_done):
                return
            self.act(partial(self.world.deliver, conn, to_server, False))

    @precondition(lambda self: self.world.connections)
    @rule(index=pick, to_server=st.booleans())
    def drop_frame(self, index: int, to_server: bool) -> None:
        conn = self.connection(index)
        queue = (conn.to_server if to_server else conn.to_client) if conn else []
        if conn is not None and queue:
            queue.pop(0)
            conn.tampered = True

    @precondition(lambda self: self.world.connections)
    @rule(index=pick)
    def lose_connection(self, index: int) -> None:
        conn = self.connection(index)
        if conn is not None:
            conn.to_server.clear()
            conn.to_client.clear()
            self.act(lambda: self.world.close_end(conn, Role.SERVER))
            self.act(lambda: self.world.close_end(conn, Role.CLIENT))

    @precondition(lambda self: self.world.connections)
    @rule(index=pick)
    def client_completes_key_path_alone(self, index: int) -> None:
        """A hostile client: it takes the server's key-path proposal off the wire (closing its
        open channel and letting its frames reach the server first, if none is in flight),
        completes what it can alone, never sends its partial signature, hangs up, resumes at
        once and pays on (more through the other rules). No payment may be acknowledged below
        a settlement it holds (checks.py)."""
        conn = self.connection(index)
        if conn is None or conn.stranger or conn.client_done:
            return
        if not self.proposals(conn) and glue.client_can_pay(conn.client):
            self.act(self.world.client.close)
            for _ in range(8):  # what it sent before CLOSE, then CLOSE: the proposal returns
                if self.proposals(conn) or not conn.to_server or conn not in self.world.connections:
                    break
                self.act(partial(self.world.deliver, conn, True, False))
        proposals = self.proposals(conn)
        if proposals:
            self.act(lambda: self.world.client_completes_alone(conn, proposals[0]))
            self.flush_connection(conn)  # the server reads the hang-up
            self.open_channel(version=4, window=24 * HOUR - 60, value=100_000, flow=True)
            self.pay(amount="min", flow=True)

    @staticmethod
    def proposals(conn: Connection) -> list[bytes]:
        """The server's key-path proposals in flight to the client."""
        return [f for f in conn.to_client if decode_message(f).musig_settlement]

    @rule(index=pick)
    def stranger_resumes(self, index: int) -> None:
        """Someone who read a contract txid off the chain asks to resume it."""
        published = {tx.txid for tx in self.world.chain.chain_txs() + self.world.chain.mempool}
        victims = [r for r in self.world.client.store.channels(Role.CLIENT)
                   if r.contract.outpoint.txid in published]
        if victims:
            victim = victims[index % len(victims)]
            self.act(lambda: self.world.stranger_connects(victim))

    @rule(index=pick)
    def stranger_closes(self, index: int) -> None:
        strangers = [c for c in self.world.connections if c.stranger]
        if strangers:
            self.world.stranger_sends_close(strangers[index % len(strangers)])

    # -- processes and nodes ---------------------------------------------------------------

    @rule(side=sides, effects=st.integers(0, 6))
    def crash_soon(self, side: Role, effects: int) -> None:
        """The process will die before its `effects`-th next effect (0: the next one)."""
        process = self.process(side)
        if process.up:
            process.crash_in = effects

    @precondition(lambda self: self.world.client.up or self.world.server.up)
    @rule(side=sides)
    def crash_now(self, side: Role) -> None:
        if self.process(side).up:
            self.process(side).crashed()
            self.world.prune()

    @rule(side=sides)
    def restart(self, side: Role) -> None:
        """Start again from what the store holds; the watcher catches up and reviews."""
        process = self.process(side)
        if not process.up:
            process.up = True
            self.act(partial(process.watch, everything=True))

    @rule(side=sides, reachable=st.booleans())
    def node_reachable(self, side: Role, reachable: bool) -> None:
        process = self.process(side)
        process.node_up = reachable
        if reachable:
            self.act(partial(process.watch, everything=True))

    @rule(side=sides)
    def review(self, side: Role) -> None:
        """A review timer or deadline fires."""
        self.act(partial(self.process(side).watch, everything=True))

    # -- the chain -------------------------------------------------------------------------

    @rule(blocks=st.integers(1, 8), step=block_steps, include=st.booleans())
    def mine(self, blocks: int, step: int, include: bool) -> None:
        for _ in range(blocks):
            self.world.chain.mine(step, include)
            self.chain_moved()

    @rule(step=block_steps, index=pick)
    def mine_double_spend(self, step: int, index: int) -> None:
        """A block spends the coin funding a contract not yet confirmed (a re-anchor R: its
        top-up coin, the client's to spend elsewhere)."""
        chain = self.world.chain
        confirmed = chain.confirmed()
        pending = [t for t in chain.contracts if t not in confirmed]
        if not pending:
            return
        funding = self.world.contract_txs[pending[index % len(pending)]]
        spend = Transaction(2, (TxIn(funding.inputs[-1].prevout, b"", 0xFFFFFFFD,
                                     (bytes(71), bytes(33))),), (TxOut(1000, PAYOUT),), 0)
        chain.mine(step, include=True, extra=[spend])
        self.chain_moved()

    @rule(depth=st.integers(1, 6), step=block_steps, include=st.booleans())
    def reorg(self, depth: int, step: int, include: bool) -> None:
        """The top `depth` blocks are replaced by `depth + 1` others."""
        chain = self.world.chain
        self.world.checks.reorged(chain.disconnect(depth))
        for _ in range(depth + 1):
            chain.mine(step, include)
        self.chain_moved()

    @rule(rate=st.sampled_from([1000, 2000, 10_000, 50_000, 200_000, 500_000]))
    def fee_rate(self, rate: int) -> None:
        self.world.chain.fee_rate = rate

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def money_is_safe(self) -> None:
        self.world.checks.after_step()


class ExploredModel(ChannelModel):
    """The model as the random searches run it: the example database files their failures
    under this class, whose source does not change when rules do. Counts what it runs."""

    def __init__(self) -> None:
        super().__init__()
        TALLY.examples += 1

    @invariant()
    def money_is_safe(self) -> None:
        TALLY.checks += 1
        super().money_is_safe()


def test_channel_model(pytestconfig: pytest.Config, capsys: pytest.CaptureFixture[str]) -> None:
    """The profile's search: quick (the fixed smoke set) or deep (10,000 random examples)."""
    forced = pytestconfig.getoption("hypothesis_seed")
    if PROFILE.derandomize:
        run(ChannelModel, PROFILE, None, reproduce("test_channel_model", None))
        return
    chosen = fresh_seed(forced)
    TALLY.reset()
    run(ExploredModel, PROFILE, chosen, reproduce("test_channel_model", chosen))
    report(capsys, f"model, {PROFILE_NAME} profile, seed {chosen}")


@pytest.mark.timeout(int(SEARCH_SECONDS) + 600)  # a failure's shrinking may take 5 minutes
def test_model_search(pytestconfig: pytest.Config, capsys: pytest.CaptureFixture[str]) -> None:
    """A random search bounded by time (MODEL_SEARCH_SECONDS, 120 by default), fresh
    examples every run; the failures the database saved come first."""
    timed_search(ExploredModel, SEARCH_SECONDS, pytestconfig.getoption("hypothesis_seed"),
                 "test_model_search")
    report(capsys, "model search")


def report(capsys: pytest.CaptureFixture[str], what: str) -> None:
    """The figures of a search that passed, on the terminal even when output is captured."""
    with capsys.disabled():
        print(f"\n{what}: {TALLY}")


# -- failures the model found, replayed step by step (each fixed in its owning module) ------


def replay(steps: Callable[[ChannelModel], None]) -> None:
    model = ChannelModel()
    steps(model)
    model.money_is_safe()
    model.teardown()


def test_crash_between_chain_state_and_sync_mark_then_reorg() -> None:
    """The client crashed after storing the block that confirmed a settlement but before
    marking the block processed; while it was down a reorg replaced that block. It restarted
    believing the settlement confirmed (and would have forgotten the channel)."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=1, window=18000, value=100_000, flow=True)
        m.client_closes(flow=True)
        m.crash_soon(side=Role.CLIENT, effects=6)
        m.open_channel(version=2, window=86340, value=100_000, flow=True)
        m.mine(blocks=1, step=1, include=True)
        m.crash_now(side=Role.CLIENT)
        m.reorg(depth=1, step=1, include=False)
        m.restart(side=Role.CLIENT)
    replay(steps)


def test_failed_channel_whose_settlement_was_seen_is_not_discarded() -> None:
    """The server's settlement was in the mempool (and in its chain state) when a block spent
    the contract's funding coin. Once that was buried the watcher asked to discard the channel,
    which the store refuses (a spender was seen): the refusal escaped the review, so no channel
    after this one would ever be reviewed again."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=3, window=86340, value=100_000, flow=True)
        m.server_closes(index=0)
        m.review(side=Role.SERVER)
        m.mine_double_spend(index=0, step=600)
        m.mine(blocks=6, step=600, include=True)
        m.review(side=Role.SERVER)
    replay(steps)



def test_resume_in_flight_while_its_channel_is_discarded() -> None:
    """The client resumed a stored channel; before CHANNEL_OPEN arrived a block double-spent
    the contract's funding coin and five more buried it, so its watcher discarded the channel
    (it never held money). CHANNEL_OPEN then made it re-send its last payment, no longer in
    its store: one it had stored before, over an output that will never exist (the model
    required the present store to hold it)."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=1, window=18000, value=100_000, flow=True)
        m.node_reachable(side=Role.SERVER, reachable=False)
        m.client_closes(flow=False)
        m.open_channel(version=1, window=18000, value=100_000, flow=True)
        m.open_channel(version=1, window=18000, value=100_000, flow=False)
        m.mine_double_spend(index=0, step=1)
        m.mine(blocks=5, step=1, include=False)
        m.client_closes(flow=True)
    replay(steps)


def test_a_settlement_decided_while_a_resume_is_in_flight_is_what_the_resume_gets() -> None:
    """Issue 19, Seen 1 on one process: the client resumed (the server loaded the channel
    open) and the autopilot settled it before the resume's proof arrived. The proof must be
    answered with that settlement; no payment is stored or acknowledged after it."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=3, window=86340, value=100_000, flow=True)
        m.pay(amount="min", flow=True)
        m.lose_connection(index=0)
        m.settle_while_resuming(index=0, flow=True)
        m.pay(amount="min", flow=True)
    replay(steps)


def test_a_resume_in_flight_while_its_channel_is_settled_and_forgotten_resends_a_logged_payment(
        ) -> None:
    """Found by the rule above: a resume was in flight (the server's answers not read yet)
    while its channel was settled and both sides forgot it once the settlement was buried.
    The resumed client re-sent its last payment, no longer in its store but in its history:
    nothing new was signed."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(flow=True, value=100000, version=1, window=18000)
        m.pay(amount="one", flow=False)
        m.pay(amount="one", flow=False)
        m.settle_while_resuming(flow=False, index=0)
        m.reorg(depth=4, include=True, step=1)
        m.reorg(depth=1, include=False, step=1)
        m.settle_while_resuming(flow=True, index=0)
    replay(steps)


def test_a_client_completing_the_key_path_settlement_alone_then_paying_on() -> None:
    """The review of version 4: the server sent its partial signature with its key-path
    proposal, so the client completed that settlement alone, hung up, resumed and paid on:
    every later payment acknowledged was one that settlement undoes."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=4, window=86340, value=100_000, flow=True)
        m.client_completes_key_path_alone(index=0)  # closes, takes it, resumes, pays 1,000
        m.pay(amount=40_000, flow=True)
        (record,) = m.world.server.store.channels(Role.SERVER)
        assert record.status is ChannelStatus.OPEN and record.change == 58_000  # acknowledged
    replay(steps)


# -- re-anchoring on the modelled chain (issue 23): each path replayed, its outcome asserted --


def only(model: ChannelModel, role: Role) -> ChannelRecordT:
    process = model.process(role)
    (record,) = process.store.channels(role)
    return record


@pytest.mark.parametrize("version", [3, 4])
def test_r_confirms_and_both_sides_move_to_the_next_contract(version: int) -> None:
    """The server stores R, broadcasts it; R confirms; a top-up R buried forget_depth deep,
    the server's watcher promotes the channel and tells the live connection, whose client
    promotes on REANCHOR_LOCKED; the stream goes on and the next contract is settled with
    the latest payment."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=version, window=18000, value=100_000, flow=True)
        m.pay(amount=20_000, flow=True)
        m.client_reanchors(top_up=100_000, window=24 * HOUR, flow=True)
        r = bytes.fromhex(only(m, Role.SERVER).pending.txid)[::-1]  # type: ignore[union-attr]
        assert r in {tx.txid for tx in m.world.chain.mempool}  # broadcast once stored
        m.mine(blocks=1, step=600, include=True)
        assert (only(m, Role.SERVER).generation, only(m, Role.CLIENT).generation) == (0, 0)
        m.mine(blocks=WATCH_POLICY.forget_depth - 1, step=600, include=True)
        assert (only(m, Role.SERVER).generation, only(m, Role.CLIENT).generation) == (1, 0)
        m.flush(index=0)  # REANCHOR_LOCKED reaches the client
        server, client = only(m, Role.SERVER), only(m, Role.CLIENT)
        assert (server.generation, client.generation) == (1, 1)
        assert server.contract.outpoint.txid == r == client.contract.outpoint.txid
        assert server.channel_id == client.channel_id != server.contract_txid
        m.pay(amount=5_000, flow=True)  # on the next contract alone
        paying = only(m, Role.SERVER)
        assert paying.change == only(m, Role.CLIENT).change == client.change - 5_000
        m.server_closes(index=0)
        m.mine(blocks=1, step=600, include=True)
        server = only(m, Role.SERVER)
        assert server.status is ChannelStatus.SETTLED and server.settlement_tx is not None
        settlement = Transaction.parse(server.settlement_tx)
        assert client_share(server.contract, settlement) == paying.change
    replay(steps)


def test_a_top_up_coin_double_spent_kills_r_and_the_server_settles_the_contract() -> None:
    """The client spends its top-up coin elsewhere before R confirms: R can never confirm,
    so the server settles the old contract at once with the latest payment it holds there."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=3, window=18000, value=100_000, flow=True)
        m.mine(blocks=1, step=600, include=True)  # the contract alone
        m.world.chain.fee_rate = 1000
        m.pay(amount=20_000, flow=True)
        m.client_reanchors(top_up=100_000, window=0, flow=True)
        paid = only(m, Role.SERVER).paid
        m.mine_double_spend(step=600, index=1)  # the pending contract: R's top-up coin
        m.review(side=Role.SERVER)
        server = only(m, Role.SERVER)
        assert server.status is ChannelStatus.CLOSING and server.generation == 0
        settlement = Transaction.parse(server.settlement_tx or b"")
        assert settlement.inputs[0].prevout == server.contract.outpoint
        assert server.contract.value - settlement.outputs[0].value == paid
    replay(steps)


def test_the_settlement_at_the_deadline_replaces_an_unconfirmed_r() -> None:
    """R paid a high fee rate and sits unconfirmed when the contract's settle deadline comes:
    the server's settlement is priced to replace it (BIP125), and it does (found by the model
    once R reached its chain: a settlement at the node's rate could not replace R, and the
    server took R for its own closing transaction)."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=3, window=18000, value=100_000, flow=True)
        m.fee_rate(rate=10_000)
        m.client_reanchors(top_up=100_000, window=0, flow=True)
        m.fee_rate(rate=1000)
        m.client_closes(flow=True)  # the server settles now, R still in the mempool
        server = only(m, Role.SERVER)
        mempool = {tx.txid_hex for tx in m.world.chain.mempool}
        assert server.status is ChannelStatus.CLOSING and server.settlement_tx is not None
        assert Transaction.parse(server.settlement_tx).txid_hex in mempool
        assert server.pending is not None and server.pending.txid not in mempool
        m.node_reachable(side=Role.SERVER, reachable=True)  # its review: nothing taken for R
    replay(steps)


def test_r_reorged_out_after_promotion_with_its_parents_is_sent_again() -> None:
    """Found by the model: a reorg put the contract and two re-anchors after it back in the
    mempool while both sides were on the third contract; the first contract's money is on
    the last one as long as the re-anchors confirm, which both sides keep broadcasting."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(flow=True, value=100000, version=3, window=18000)
        m.server_quotes_reanchor(index=0, renew=False)
        m.flush(index=0)
        m.lose_connection(index=0)
        m.reorg(depth=1, include=True, step=1)
        m.open_channel(flow=False, value=100000, version=1, window=18000)
        m.client_reanchors(flow=True, top_up=0, window=0)
        m.client_reanchors(flow=False, top_up=0, window=86400)
        m.pay(amount="one", flow=True)
        m.client_reanchors(flow=False, top_up=0, window=0)
        m.reorg(depth=1, include=True, step=1)
        m.node_reachable(reachable=False, side=Role.CLIENT)
        m.client_reanchors(flow=True, top_up=0, window=0)
        m.reorg(depth=4, include=False, step=1)
        assert only(m, Role.SERVER).generation == 2
        m.mine(blocks=2, step=600, include=True)
        assert only(m, Role.SERVER).contract.outpoint.txid in m.world.chain.confirmed()
    replay(steps)


def test_r_confirming_after_the_settlement_was_decided_moves_that_settlement_on() -> None:
    """A miner takes R although the contract's settlement was decided (and replaced R in the
    mempool): the money is on the next contract, so the server's settlement moves there at
    once, with the latest payment carried onto it; the channel stays closing."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=3, window=18000, value=100_000, flow=True)
        m.mine(blocks=1, step=600, include=True)
        m.pay(amount=20_000, flow=True)
        m.client_reanchors(top_up=0, window=24 * HOUR, flow=True)
        m.pay(amount=5_000, flow=True)  # signed on both contracts: 5,000 owed on the next
        pending = only(m, Role.SERVER).pending
        assert pending is not None and pending.complete
        m.client_closes(flow=True)
        assert only(m, Role.SERVER).status is ChannelStatus.CLOSING
        m.world.chain.mine(600, include=False, extra=[Transaction.parse(pending.tx)])
        m.chain_moved()
        server = only(m, Role.SERVER)
        assert server.status is ChannelStatus.CLOSING and server.generation == 1
        assert server.contract_txid == pending.txid and server.settlement_tx is not None
        settlement = Transaction.parse(server.settlement_tx)
        assert settlement.inputs[0].prevout == server.contract.outpoint
        assert client_share(server.contract, settlement) == pending.change
        m.mine(blocks=2, step=600, include=True)  # its next review sends it; it confirms
        assert only(m, Role.SERVER).status is ChannelStatus.SETTLED
    replay(steps)


def test_a_top_up_r_reorged_out_after_one_block_then_double_spent_leaves_c_settleable() -> None:
    """Found by the deep search (seed 13144844682722299119): a top-up R promoted by both sides
    at 1 confirmation, a 1-block reorg, then its top-up coin spent elsewhere left C funded with
    neither its settlement nor its refund held. A top-up R is promoted only forget_depth deep,
    so the server still holds C's latest payment and settles it; the client keeps C."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=3, window=18000, value=100_000, flow=True)
        m.mine(blocks=1, step=600, include=True)  # the contract alone
        m.pay(amount=20_000, flow=True)
        m.client_reanchors(top_up=100_000, window=0, flow=True)
        m.mine(blocks=1, step=600, include=True)  # R, 1 confirmation
        m.flush(index=0)
        assert (only(m, Role.SERVER).generation, only(m, Role.CLIENT).generation) == (0, 0)
        paid = only(m, Role.SERVER).paid
        m.reorg(depth=1, include=False, step=1)  # R back in the mempool
        m.mine_double_spend(step=600, index=0)  # R's top-up coin spent elsewhere: R dead
        m.review(side=Role.SERVER)
        server, client = only(m, Role.SERVER), only(m, Role.CLIENT)
        assert server.status is ChannelStatus.CLOSING and server.generation == 0
        assert client.generation == 0 and client.contract == server.contract
        settlement = Transaction.parse(server.settlement_tx or b"")
        assert settlement.inputs[0].prevout == server.contract.outpoint
        assert server.contract.value - settlement.outputs[0].value == paid
    replay(steps)


def test_a_resume_in_flight_while_its_reanchored_channel_is_forgotten() -> None:
    """The random search's case (seed 16281505937024576555): a pending re-anchor, then a
    settlement decided while a resume is in flight; the settlement buried, the client's
    watcher forgets the channel; the resume then completes and re-sends the payment its
    machine loaded, with its pair on the next contract. That pair was committed before and
    spends an output that will never exist: the check accepts, for a forgotten channel, only
    a pair the client's store committed earlier (as issue 27's for the payment itself)."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(version=3, window=18000, value=100_000, flow=True)
        m.client_reanchors(top_up=0, window=0, flow=True)
        m.review(side=Role.CLIENT)
        m.settle_while_resuming(index=0, flow=False)
        m.mine(blocks=3, step=1, include=True)
        m.mine(blocks=3, step=1, include=False)
        m.review(side=Role.CLIENT)
        m.open_channel(version=1, window=18000, value=100_000, flow=True)
    replay(steps)


def test_a_resume_re_sends_an_r_the_server_promoted_while_it_was_down() -> None:
    """The random search's case (seed 1993770924966120525): the server stored the client's
    R, crashed, and promoted R on restart (the next generation: nothing paid on it yet);
    the client, still holding R pending, re-sends it as it resumes. Its payout was checked
    against what the server held when it was signed: the check compares a re-sent R with
    the payout the server recorded for it, not with the next generation's payments."""
    def steps(m: ChannelModel) -> None:
        m.open_channel(autopilot=False, flow=False, value=100000, version=3, window=18000)
        m.open_channel(autopilot=False, flow=True, value=100000, version=1, window=18000)
        m.crash_soon(effects=6, side=Role.SERVER)
        m.client_reanchors(flow=False, top_up=0, wallet_later=False, window=0)
        m.reanchor_and_mine(blocks=1, pay=False, step=1, top_up=0, window=0)
        m.restart(side=Role.SERVER)
        m.open_channel(autopilot=False, flow=False, value=100000, version=1, window=18000)
        m.client_closes(flow=True)
    replay(steps)


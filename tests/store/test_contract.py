"""The ChannelStore contract, run against every engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction, TxIn, TxOut
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import STATUS_MOVES, ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import LeaseLost, SettlementDecided, StoreError
from bitcoind_paychan.store import ChannelStore, MemoryStore, SQLiteStore
from bitcoind_paychan.store.leases import leases_for
from bitcoind_paychan.store.postgres import PostgresStore
from tests.store.helpers import Channel, assert_same

OPEN, CLOSING = ChannelStatus.OPEN, ChannelStatus.CLOSING
FINAL = [s for s in ChannelStatus if s.final]
NOT_FINAL = [s for s in ChannelStatus if not s.final]
# No field keeps its default.
FULL_CHAIN = ChainState(contract_height=800_001, spender=b"spend" * 40, spender_height=800_123,
                        conflict_height=800_002, broadcast_height=800_100, fee_rate=2_500)


def opener(engine: str, request: pytest.FixtureRequest, tmp_path: Path
           ) -> Callable[[], ChannelStore]:
    """Opens the same store of `engine` each time it is called."""
    if engine == "postgresql":  # a new database on the session's server
        dsn = request.getfixturevalue("postgres_dsn")
        return lambda: PostgresStore(dsn)
    engines: dict[str, Callable[[], ChannelStore]] = {
        "sqlite-file": lambda: SQLiteStore(tmp_path / "channels.db"),
        "sqlite-memory": lambda: SQLiteStore(":memory:"),
        "memory": MemoryStore,
    }
    return engines[engine]


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "memory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChannelStore]:
    with opener(request.param, request, tmp_path)() as opened:
        assert isinstance(opened, ChannelStore)
        yield opened


@pytest.fixture(params=["sqlite-file", "postgresql"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ChannelStore]:
    """A durable engine's store, opened anew at each call."""
    return opener(request.param, request, tmp_path)


@pytest.mark.parametrize("status", list(ChannelStatus))
@pytest.mark.parametrize("role", list(Role))
def test_full_record_round_trip(store: ChannelStore, role: Role, status: ChannelStatus) -> None:
    rec = Channel(version=1).full_record(role, status)
    store.put(rec)
    assert_same(store.get(role, rec.contract_txid), rec)
    assert store.get(role, Channel().txid) is None


def test_no_settlement_nor_refund_reads_back_as_none(store: ChannelStore) -> None:
    """`settlement_tx` and `refund_tx` are None until there is one (a check for None means
    something), kept as the column's empty value; once set, they read back as stored."""
    ch = Channel()
    store.put(ch.record())
    got = store.get(Role.SERVER, ch.txid)
    assert got is not None and got.settlement_tx is None and got.refund_tx is None
    store.put(replace(got, refund_tx=b"refund", settlement_tx=b"settle"))
    got = store.get(Role.SERVER, ch.txid)
    assert got is not None and (got.refund_tx, got.settlement_tx) == (b"refund", b"settle")


def test_put_replaces_and_keeps_the_log(store: ChannelStore) -> None:
    ch = Channel()
    rec = ch.pay(ch.record(), 1000)
    store.put(ch.record())
    store.record_payment(rec, 1000)
    closing = replace(rec, status=CLOSING, settlement_tx=b"tx")
    store.put(closing)
    assert_same(store.get(Role.SERVER, ch.txid), closing)
    assert [e.amount for e in store.payments(Role.SERVER, ch.txid)] == [1000]


def test_put_refuses_a_stale_record(store: ChannelStore) -> None:
    ch = Channel()
    old = ch.record()
    store.put(old)
    paid = ch.pay(old, 5000)
    store.record_payment(paid, 5000)
    with pytest.raises(StoreError, match=r"change 100000 above the stored 95000.*get\(\)"):
        store.put(replace(old, status=CLOSING))
    assert_same(store.get(Role.SERVER, ch.txid), paid)


def test_record_payment_updates_and_logs(store: ChannelStore) -> None:
    ch = Channel()
    rec = ch.record(peer="a:1")
    store.put(rec)
    for amount, info in [(100, b"first"), (2500, b""), (0, b"same change again")]:
        rec = ch.pay(rec, amount)
        # Only change/signature/payments are written, whatever else the record says.
        store.record_payment(replace(rec, status=CLOSING, peer="b:2"), amount, info)
    assert_same(store.get(Role.SERVER, ch.txid), rec)
    assert rec.change == 97_400 and rec.payments == 3 and rec.peer == "a:1"
    log = store.payments(Role.SERVER, ch.txid)
    assert [(e.amount, e.change_after, e.info) for e in log] == [
        (0, 97_400, b"same change again"), (2500, 97_400, b""), (100, 99_900, b"first")]
    assert all(e.role == Role.SERVER and e.contract_txid == ch.txid for e in log)
    assert [e.seq for e in log] == [3, 2, 1]  # the payment's number in its channel


def test_record_payment_of_unknown_channel_refused(store: ChannelStore) -> None:
    ch = Channel()
    with pytest.raises(StoreError, match=f"server channel {ch.txid}: it is not stored"):
        store.record_payment(ch.pay(ch.record(), 10), 10)
    assert store.get(Role.SERVER, ch.txid) is None
    assert store.payments(Role.SERVER) == []


def test_record_payment_raising_the_change_refused(store: ChannelStore) -> None:
    ch = Channel()
    paid = ch.pay(ch.record(), 3000)
    store.put(paid)
    again = ch.pay(paid, 0)
    store.record_payment(again, 0)
    back = replace(ch.pay(paid, -1), payments=10)
    with pytest.raises(StoreError, match="change 97001 above the stored 97000"):
        store.record_payment(back, -1)
    assert_same(store.get(Role.SERVER, ch.txid), again)
    assert [e.amount for e in store.payments(Role.SERVER, ch.txid)] == [0, 3000]  # + initial


def test_record_payments_stores_a_batch_and_refuses_only_the_bad_ones(
        store: ChannelStore) -> None:
    a, b, unknown = Channel(), Channel(), Channel()
    store.put(a.record())
    store.put(b.record())
    a1 = a.pay(a.record(), 100)
    a2 = a.pay(a1, 200)
    back = replace(b.pay(b.record(), -5), payments=4)
    b1 = b.pay(b.record(), 300)
    outcomes = store.record_payments([(a1, 100, b"a1"), (back, -5, b""), (a2, 200, b"a2"),
                                      (unknown.pay(unknown.record(), 1), 1, b""),
                                      (b1, 300, b"b1")])
    assert outcomes[0] is None and outcomes[2] is None and outcomes[4] is None
    assert "change 100005 above the stored 100000" in str(outcomes[1])
    assert "it is not stored" in str(outcomes[3])
    assert_same(store.get(Role.SERVER, a.txid), a2)
    assert_same(store.get(Role.SERVER, b.txid), b1)
    assert [(e.info, e.seq) for e in store.payments(Role.SERVER, a.txid)] == [(b"a2", 2),
                                                                             (b"a1", 1)]
    assert [e.info for e in store.payments(Role.SERVER, b.txid)] == [b"b1"]
    assert store.payments(Role.SERVER, unknown.txid) == []


def test_a_channels_consecutive_payments_are_stored_as_each_alone_would_be(
        store: ChannelStore) -> None:
    """A pipelined batch (one channel's payments in a row: SQLite updates its row once) is
    stored, refused and logged payment by payment, as if each came alone."""
    a, b, settled = Channel(), Channel(), Channel()
    store.put(a.record())
    store.put(b.record())
    store.put(settled.record(status=CLOSING, settlement_tx=b"settle" * 30))
    a1 = a.pay(a.record(), 100)
    a2 = a.pay(a1, 200)
    a3 = a.pay(a2, 300)
    store.record_payment(b.pay(b.record(), 1_000), 1_000)
    b_above = b.pay(b.record(), 500)  # change above the stored one: refused alone
    b_below = b.pay(replace(b_above, change=b_above.change - 1_000), 1_000)
    late = settled.pay(settled.record(), 10)
    outcomes = store.record_payments([
        (a1, 100, b"a1"), (a2, 200, b"a2"), (a3, 300, b"a3"),
        (b_above, 500, b"no"), (b_below, 1_000, b"b2"),
        (late, 10, b""), (settled.pay(late, 10), 10, b"")])
    assert [outcome is None for outcome in outcomes] == [True, True, True, False, True, False,
                                                         False]
    assert "above the stored" in str(outcomes[3])
    assert isinstance(outcomes[5], SettlementDecided)
    assert isinstance(outcomes[6], SettlementDecided)
    assert_same(store.get(Role.SERVER, a.txid), a3)
    assert_same(store.get(Role.SERVER, b.txid), b_below)
    assert [(e.info, e.seq) for e in store.payments(Role.SERVER, a.txid)] == [
        (b"a3", 3), (b"a2", 2), (b"a1", 1)]
    assert [e.info for e in store.payments(Role.SERVER, b.txid)] == [b"b2", b""]
    assert store.payments(Role.SERVER, settled.txid) == []


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("status", [CLOSING, *FINAL])
def test_no_payment_is_stored_once_the_channel_is_not_open(
        store: ChannelStore, role: Role, status: ChannelStatus) -> None:
    """Seen: a payment stored (and acknowledged) on a channel whose settlement was already
    decided. The status is checked in the statement that stores the payment."""
    settling, live = Channel(), Channel()
    store.put(settling.record(role, status=status, settlement_tx=b"settle" * 30))
    store.put(live.record(role))
    late = settling.pay(settling.record(role), 1_000)
    with pytest.raises(SettlementDecided, match=f"it is {status}, not open"):
        store.record_payment(late, 1_000)
    outcomes = store.record_payments([(late, 1_000, b""), (live.pay(live.record(role), 5),
                                                           5, b"")])
    assert isinstance(outcomes[0], SettlementDecided) and outcomes[1] is None
    stored = store.get(role, settling.txid)
    assert stored is not None and stored.status is status and stored.change == 100_000
    assert store.payments(role, settling.txid) == []


def test_a_settlement_is_stored_only_under_its_current_lease_and_only_once(
        store: ChannelStore) -> None:
    """The CLOSING write is fenced like a payment (token checked in its transaction) and only
    turns an OPEN channel with the change it pays into CLOSING; after it, no payment is
    stored under any lease."""
    ch = Channel()
    store.put(ch.record())
    leases = leases_for(store)
    settler = leases.acquire(Role.SERVER, ch.txid, "a/settle")
    closing = replace(ch.record(), status=CLOSING, settlement_tx=b"settle" * 30)
    resumed = leases.acquire(Role.SERVER, ch.txid, "b/1")  # the client resumed meanwhile
    with pytest.raises(LeaseLost, match="settlement"):
        leases.store_settlement(closing, settler)
    assert store.get(Role.SERVER, ch.txid).status is OPEN  # type: ignore[union-attr]
    paid = ch.pay(ch.record(), 10)
    assert leases.record_payments([((paid, 10, b""), resumed)]) == [None]
    with pytest.raises(StoreError, match="stored change is 99990"):  # pays an older change
        leases.store_settlement(closing, resumed)
    leases.store_settlement(replace(closing, change=paid.change), resumed)
    assert store.get(Role.SERVER, ch.txid).status is CLOSING  # type: ignore[union-attr]
    with pytest.raises(SettlementDecided):  # a second settlement, even under the lease
        leases.store_settlement(replace(closing, change=paid.change, settlement_tx=b"x"),
                                resumed)
    outcome = leases.record_payments([((ch.pay(paid, 10), 10, b""), resumed)])[0]
    assert isinstance(outcome, SettlementDecided)
    stored = store.get(Role.SERVER, ch.txid)
    assert stored is not None and stored.settlement_tx == b"settle" * 30
    assert stored.change == paid.change


def test_channels_filtered_by_role_and_status(store: ChannelStore) -> None:
    recs = {
        (role, status): Channel().record(role, status=status)
        for role in Role for status in (OPEN, CLOSING, ChannelStatus.SETTLED)
    }
    for rec in recs.values():
        store.put(rec)

    def txids(role: Role | None = None, statuses: list[ChannelStatus] | None = None) -> set[str]:
        return {r.contract_txid for r in store.channels(role, statuses)}

    def want(role: Role | None, statuses: list[ChannelStatus]) -> set[str]:
        return {r.contract_txid for (ro, st), r in recs.items()
                if (role is None or ro == role) and st in statuses}

    assert len(store.channels()) == 6
    assert txids(Role.CLIENT) == want(Role.CLIENT, list(ChannelStatus))
    assert txids(None, [OPEN]) == want(None, [OPEN])
    assert txids(Role.SERVER, NOT_FINAL) == want(Role.SERVER, NOT_FINAL)
    assert txids(Role.SERVER, []) == set()
    assert all(r.role == Role.SERVER for r in store.channels(Role.SERVER))


def test_payments_filtered_and_limited(store: ChannelStore) -> None:
    a, b = Channel(), Channel()
    ra, rb = a.record(), b.record()
    store.put(ra)
    store.put(rb)
    for i in range(1, 4):
        ra, rb = a.pay(ra, i), b.pay(rb, 10 * i)
        store.record_payment(ra, i)
        store.record_payment(rb, 10 * i)
    assert [e.amount for e in store.payments(Role.SERVER, a.txid)] == [3, 2, 1]
    assert [e.amount for e in store.payments(Role.SERVER)] == [30, 3, 20, 2, 10, 1]
    assert [e.amount for e in store.payments(Role.SERVER, b.txid, limit=2)] == [30, 20]
    assert store.payments(Role.SERVER, limit=0) == []
    assert store.payments(Role.CLIENT) == []


def test_payments_carry_when_they_were_stored(store: ChannelStore) -> None:
    ch = Channel()
    rec = ch.pay(ch.record(), 1000)
    before = int(time.time())
    store.put(rec)  # the initial payment, logged with the channel
    for amount in (5, 7):
        rec = ch.pay(rec, amount)
        store.record_payment(rec, amount)
    after = int(time.time())
    entries = store.payments(Role.SERVER, ch.txid)
    assert all(before <= (e.stored_at or 0) <= after for e in entries)
    assert [e.amount for e in store.payments(Role.SERVER, since=before)] == [7, 5, 1000]
    assert store.payments(Role.SERVER, since=after + 1) == []
    assert [e.amount for e in store.payments(Role.SERVER, since=before, limit=1)] == [7]
    per_second = store.payments_per_second(Role.SERVER, before)
    assert all(before <= second <= after for second, _, _ in per_second)
    assert (sum(n for _, n, _ in per_second), sum(a for _, _, a in per_second)) == (3, 1012)
    assert store.payments_per_second(Role.SERVER, after + 1) == []
    assert store.payments_per_second(Role.CLIENT, before) == []


@pytest.mark.parametrize("status", NOT_FINAL)
def test_forget_refused_while_money_is_not_settled(
    store: ChannelStore, status: ChannelStatus
) -> None:
    ch = Channel()
    store.put(ch.record())
    store.record_payment(ch.pay(ch.record(), 100), 100)  # paid while open, then settling
    rec = ch.pay(ch.record(status=status), 100)
    store.put(rec)
    with pytest.raises(StoreError, match=f"its status is {status}.*not settled"):
        store.forget(Role.SERVER, ch.txid)
    assert_same(store.get(Role.SERVER, ch.txid), rec)
    assert len(store.payments(Role.SERVER, ch.txid)) == 1


@pytest.mark.parametrize("status", FINAL)
def test_forget_keeps_the_summary_and_the_log(store: ChannelStore, status: ChannelStatus) -> None:
    ch, other = Channel(), Channel()
    rec = ch.record(peer="shop:1")
    store.put(rec)
    store.put(other.record())
    store.record_payment(ch.pay(rec, 100), 100, b"coffee")
    store.record_payment(other.pay(other.record(), 1), 1)
    store.put(replace(ch.pay(ch.pay(rec, 100), 250), status=status))
    store.forget(Role.SERVER, ch.txid)
    assert store.get(Role.SERVER, ch.txid) is None  # the record (key, signature) is gone
    with pytest.raises(StoreError, match="not stored"):
        store.chain_state(Role.SERVER, ch.txid)
    assert [(e.seq, e.amount, e.info) for e in store.payments(Role.SERVER, ch.txid)] == [
        (1, 100, b"coffee")]
    (summary,) = store.history()
    assert (summary.role, summary.contract_txid, summary.status) == (Role.SERVER, ch.txid,
                                                                     status)
    assert (summary.value, summary.paid, summary.payments, summary.peer) == (
        100_000, 350, 2, "shop:1")
    assert summary.opened_at is not None and summary.opened_at <= summary.closed_at
    assert summary.contract_tx == ch.contract_tx
    store.forget(Role.SERVER, ch.txid)  # idempotent
    assert store.history() == [summary]
    assert [r.contract_txid for r in store.channels()] == [other.txid]
    assert store.history(Role.CLIENT) == [] and store.history(contract_txid=other.txid) == []


@pytest.mark.parametrize("spent", ["chain state", "record"])
def test_the_summary_splits_the_value_as_the_closing_tx_did(store: ChannelStore,
                                                            spent: str) -> None:
    ch = Channel()
    settled = ch.pay(ch.record(status=ChannelStatus.SETTLED), 30_000)
    settlement = Transaction(2, (TxIn(ch.contract.outpoint),),
                             (TxOut(70_000, ch.contract.change_script),
                              TxOut(29_500, b"\x00\x14" + bytes(20))))
    refunded = ch.record(Role.CLIENT, status=ChannelStatus.REFUNDED)
    refund = Transaction(2, (TxIn(ch.contract.outpoint),),
                         (TxOut(99_200, ch.contract.change_script),), 1_700_000_000)
    for rec, tx in ((settled, settlement), (refunded, refund)):
        if spent == "record":
            store.put(replace(rec, settlement_tx=tx.serialize()))
        else:
            store.put(rec)
            store.put_chain_state(rec.role, ch.txid, ChainState(spender=tx.serialize(),
                                                                spender_height=7))
        store.forget(rec.role, ch.txid)
    client, server = store.history(Role.CLIENT)[0], store.history(Role.SERVER)[0]
    assert (server.closing_txid, server.to_client, server.to_server, server.fee,
            server.paid) == (settlement.txid_hex, 70_000, 29_500, 500, 30_000)
    assert (client.closing_txid, client.to_client, client.to_server, client.fee,
            client.paid) == (refund.txid_hex, 99_200, 0, 800, 0)
    assert server.closing_tx == settlement.serialize()


def test_a_failed_channel_moved_nothing(store: ChannelStore) -> None:
    ch = Channel()
    store.put(ch.pay(ch.record(status=ChannelStatus.FAILED, settlement_tx=b"junk"), 1_000))
    store.forget(Role.SERVER, ch.txid)
    (failed,) = store.history()
    assert (failed.closing_txid, failed.to_client, failed.to_server, failed.fee,
            failed.paid) == (None, 0, 0, 0, 1_000)


def test_the_initial_payment_is_logged_once(store: ChannelStore) -> None:
    ch = Channel()
    opened = ch.pay(ch.record(), 1000)  # what an opening stores: payments=1, 1000 sat paid
    store.put(opened)
    store.put(replace(opened, peer="paychan.example:1"))  # an update logs nothing
    paid = ch.pay(opened, 500)
    store.record_payment(paid, 500, b"next")
    log = store.payments(Role.SERVER, ch.txid)
    assert [(e.seq, e.amount, e.change_after, e.info) for e in log] == [
        (2, 500, 98_500, b"next"), (1, 1000, 99_000, b"")]
    assert store.get(Role.SERVER, ch.txid).payments == len(log)  # type: ignore[union-attr]
    store.put(Channel().record())  # nothing paid yet: nothing logged
    assert len(store.payments(Role.SERVER)) == 2


def test_payment_numbers_are_per_channel_and_role(store: ChannelStore) -> None:
    ch = Channel()
    server, client = ch.pay(ch.record(Role.SERVER), 10), ch.pay(ch.record(Role.CLIENT), 10)
    store.put(server)
    store.put(client)
    for _ in range(3):
        client = ch.pay(client, 1)
        store.record_payment(client, 1)
        server = ch.pay(server, 1)
        store.record_payment(server, 1)
    for role in Role:
        assert [e.seq for e in store.payments(role, ch.txid)] == [4, 3, 2, 1]


def test_history_survives_reopening(reopen: Callable[[], ChannelStore]) -> None:
    ch = Channel()
    with reopen() as store:
        store.put(ch.pay(ch.record(), 700))
        store.record_payment(ch.pay(ch.pay(ch.record(), 700), 300), 300)
        store.modify(Role.SERVER, ch.txid, lambda r: replace(r, status=ChannelStatus.SETTLED))
        store.forget(Role.SERVER, ch.txid)
        kept = store.history()
    with reopen() as store:
        assert store.history() == kept and kept[0].paid == 1000 and kept[0].payments == 2
        assert [e.amount for e in store.payments(Role.SERVER, ch.txid)] == [300, 700]


def test_prune_history_drops_only_old_forgotten_channels(store: ChannelStore) -> None:
    old, live = Channel(), Channel()
    store.put(old.pay(old.record(status=ChannelStatus.REFUNDED), 5))
    store.put(live.pay(live.record(status=ChannelStatus.SETTLED), 5))  # final, not forgotten
    store.forget(Role.SERVER, old.txid)
    (summary,) = store.history()
    assert store.prune_history(summary.closed_at) == 0  # closed at, not before
    assert store.history() == [summary]
    assert store.prune_history(summary.closed_at + 1) == 1
    assert store.history() == [] and store.payments(Role.SERVER, old.txid) == []
    assert [e.amount for e in store.payments(Role.SERVER, live.txid)] == [5]
    assert store.get(Role.SERVER, live.txid) is not None


def test_a_forgotten_channel_stored_again_leaves_the_history(store: ChannelStore) -> None:
    ch = Channel()
    rec = ch.pay(ch.record(status=ChannelStatus.SETTLED), 10)
    store.put(rec)
    store.forget(Role.SERVER, ch.txid)
    store.put(replace(rec, status=CLOSING))  # a reorg deeper than forget_depth
    assert store.history() == []
    assert [e.seq for e in store.payments(Role.SERVER, ch.txid)] == [1]  # not logged twice


def test_same_contract_under_both_roles_kept_apart(store: ChannelStore) -> None:
    ch = Channel()
    server, client = ch.record(Role.SERVER, peer=""), ch.record(Role.CLIENT, peer="srv:1")
    store.put(server)
    store.put(client)
    client = ch.pay(client, 700)
    store.record_payment(client, 700, b"client")
    assert_same(store.get(Role.SERVER, ch.txid), server)
    assert_same(store.get(Role.CLIENT, ch.txid), client)
    assert store.payments(Role.SERVER) == []
    assert [e.info for e in store.payments(Role.CLIENT, ch.txid)] == [b"client"]
    store.put(replace(server, status=ChannelStatus.FAILED))
    store.forget(Role.SERVER, ch.txid)
    assert store.get(Role.SERVER, ch.txid) is None
    assert_same(store.get(Role.CLIENT, ch.txid), client)
    assert len(store.payments(Role.CLIENT)) == 1
    assert [h.role for h in store.history()] == [Role.SERVER]


def test_closed_store_refuses_calls(store: ChannelStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(Role.SERVER, Channel().txid)
    with pytest.raises(StoreError, match="closed"):
        store.put(Channel().record())
    with pytest.raises(StoreError, match="closed"):
        store.get_meta("tip")
    with pytest.raises(StoreError, match="closed"):
        store.modify(Role.SERVER, Channel().txid, lambda r: r)


# -- modify ----------------------------------------------------------------------------------


def test_modify_stores_the_change_of_the_latest_record(store: ChannelStore) -> None:
    ch = Channel()
    store.put(ch.record(peer="a:1"))
    paid = ch.pay(ch.record(peer="a:1"), 500)
    store.record_payment(paid, 500)
    seen: list[ChannelRecord] = []

    def close(rec: ChannelRecord) -> ChannelRecord:
        seen.append(rec)
        return replace(rec, status=CLOSING, settlement_tx=b"settle")

    new = store.modify(Role.SERVER, ch.txid, close)
    assert len(seen) == 1
    assert_same(seen[0], paid)  # the stored record, payment included
    assert_same(new, replace(paid, status=CLOSING, settlement_tx=b"settle"))
    assert_same(store.get(Role.SERVER, ch.txid), new)
    assert len(store.payments(Role.SERVER, ch.txid)) == 1
    lower = store.modify(Role.SERVER, ch.txid, lambda r: ch.pay(r, 1))  # lowering is allowed
    assert_same(store.get(Role.SERVER, ch.txid), lower)


def test_modify_refuses_a_change_increase(store: ChannelStore) -> None:
    ch = Channel()
    paid = ch.pay(ch.record(), 3000)
    store.put(paid)
    with pytest.raises(StoreError, match=r"change 97001 above the stored 97000.*get\(\)"):
        store.modify(Role.SERVER, ch.txid, lambda r: replace(r, change=r.change + 1,
                                                             status=CLOSING))
    assert_same(store.get(Role.SERVER, ch.txid), paid)


MOVES = [(old, new) for old in ChannelStatus for new in ChannelStatus]


@pytest.mark.parametrize(("old", "new"), MOVES, ids=[f"{o}-{n}" for o, n in MOVES])
def test_status_moves_follow_the_one_table(store: ChannelStore, old: ChannelStatus,
                                           new: ChannelStatus) -> None:
    # put, modify and modify_many all store a legal move and refuse an illegal one, saying
    # which, and storing nothing.
    chans = [Channel(), Channel(), Channel()]
    for ch in chans:
        store.put(ch.record(status=old))
    put, modified, many = chans
    writes: list[Callable[[], object]] = [
        lambda: store.put(put.record(status=new)),
        lambda: store.modify(Role.SERVER, modified.txid, lambda r: replace(r, status=new)),
        lambda: store.modify_many(Role.SERVER, {many.txid: lambda r: replace(r, status=new)}),
    ]
    for ch, write in zip(chans, writes, strict=True):
        if new in STATUS_MOVES[old]:
            write()
        else:
            with pytest.raises(StoreError, match=f"from {old} to {new}: a {old} channel "
                                                 f"never becomes {new}"):
                write()
        stored = store.get(Role.SERVER, ch.txid)
        assert stored is not None
        assert stored.status is (new if new in STATUS_MOVES[old] else old)


@pytest.mark.parametrize("write", ["put", "modify", "modify_many"])
def test_a_record_holding_a_settlement_never_becomes_open_again(store: ChannelStore,
                                                                 write: str) -> None:
    # A FAILED channel whose settlement was sent may come back (its contract confirmed after
    # all), but as CLOSING: its client may broadcast that settlement.
    ch = Channel()
    failed = ch.record(status=ChannelStatus.FAILED, settlement_tx=b"\x02settlement")
    store.put(failed)

    def move(status: ChannelStatus) -> None:
        if write == "put":
            store.put(replace(failed, status=status))
        elif write == "modify":
            store.modify(Role.SERVER, ch.txid, lambda r: replace(r, status=status))
        else:
            store.modify_many(Role.SERVER, {ch.txid: lambda r: replace(r, status=status)})

    with pytest.raises(StoreError, match="holds a settlement"):
        move(OPEN)
    stored = store.get(Role.SERVER, ch.txid)
    assert stored is not None and stored.status is ChannelStatus.FAILED
    move(CLOSING)
    stored = store.get(Role.SERVER, ch.txid)
    assert stored is not None and stored.status is CLOSING


def test_a_closed_channel_never_reopens_but_a_failed_one_may() -> None:
    assert [s for s in ChannelStatus if not s.may_become(OPEN)] == [
        CLOSING, ChannelStatus.SETTLED, ChannelStatus.REFUNDED]
    assert all(s.may_become(s) for s in ChannelStatus)


def test_modify_refuses_another_channel_and_an_unknown_one(store: ChannelStore) -> None:
    ch, other = Channel(), Channel()
    rec = ch.record()
    store.put(rec)
    with pytest.raises(StoreError, match=f"into client channel {ch.txid}"):
        store.modify(Role.SERVER, ch.txid, lambda r: replace(r, role=Role.CLIENT))
    with pytest.raises(StoreError, match=f"into server channel {other.txid}"):
        store.modify(Role.SERVER, ch.txid, lambda r: other.record())
    assert store.get(Role.CLIENT, ch.txid) is None
    assert store.get(Role.SERVER, other.txid) is None
    assert_same(store.get(Role.SERVER, ch.txid), rec)

    def never(r: ChannelRecord) -> ChannelRecord:
        raise AssertionError("called for an unknown channel")

    with pytest.raises(StoreError, match=f"modify the record of server channel {other.txid}: "
                                         "it is not stored"):
        store.modify(Role.SERVER, other.txid, never)
    with pytest.raises(StoreError, match="not stored"):
        store.modify(Role.CLIENT, ch.txid, never)


def test_modify_stores_nothing_when_the_change_raises(store: ChannelStore) -> None:
    ch = Channel()
    rec = ch.record()
    store.put(rec)

    def fail(r: ChannelRecord) -> ChannelRecord:
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        store.modify(Role.SERVER, ch.txid, fail)
    assert_same(store.get(Role.SERVER, ch.txid), rec)
    store.record_payment(ch.pay(rec, 1), 1)  # the store is usable afterwards


def test_modify_is_not_interleaved_by_a_payment(store: ChannelStore) -> None:
    # While `close` runs (slowly), another thread records a payment. A modify that read the
    # record, ran `close` and wrote the result outside one locked transaction would either
    # lose that payment or be refused (its result's change is above the stored one).
    ch = Channel()
    rec = ch.record()
    store.put(rec)
    paid = ch.pay(rec, 100)
    inside = threading.Event()
    errors: list[BaseException] = []
    seen: list[ChannelRecord] = []

    def pay() -> None:
        try:
            assert inside.wait(10)
            store.record_payment(paid, 100)  # waits until modify has committed
        except BaseException as e:
            errors.append(e)

    def close(r: ChannelRecord) -> ChannelRecord:
        seen.append(r)
        inside.set()
        time.sleep(0.3)  # the payer is trying to store its payment meanwhile
        return replace(r, status=CLOSING, settlement_tx=b"settle")

    payer = threading.Thread(target=pay)
    payer.start()
    try:
        new = store.modify(Role.SERVER, ch.txid, close)
    finally:
        inside.set()
        payer.join(10)
    assert not payer.is_alive()
    assert [type(e) for e in errors] == [SettlementDecided]  # it came after: not stored
    assert len(seen) == 1 and seen[0].change == rec.change  # the payment was not in yet
    assert (new.status, new.change) == (CLOSING, rec.change)
    assert_same(store.get(Role.SERVER, ch.txid),
                replace(rec, status=CLOSING, settlement_tx=b"settle"))
    assert store.payments(Role.SERVER, ch.txid) == []


# -- chain state -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_chain_state_round_trip_and_default(store: ChannelStore, role: Role) -> None:
    ch = Channel()
    store.put(ch.record(Role.SERVER))
    store.put(ch.record(Role.CLIENT))
    assert store.chain_state(role, ch.txid) == ChainState()
    store.put_chain_state(role, ch.txid, FULL_CHAIN)
    assert store.chain_state(role, ch.txid) == FULL_CHAIN
    other = Role.CLIENT if role == Role.SERVER else Role.SERVER
    assert store.chain_state(other, ch.txid) == ChainState()  # kept apart by role
    later = replace(FULL_CHAIN, spender=b"", spender_height=0, fee_rate=5_000)
    store.put_chain_state(role, ch.txid, later)
    assert store.chain_state(role, ch.txid) == later


def test_chain_state_and_record_do_not_overwrite_each_other(store: ChannelStore) -> None:
    ch = Channel()
    rec = ch.record()
    store.put(rec)
    store.put_chain_state(Role.SERVER, ch.txid, FULL_CHAIN)
    assert_same(store.get(Role.SERVER, ch.txid), rec)
    rec = ch.pay(rec, 10)
    store.record_payment(rec, 10)
    rec = replace(rec, status=CLOSING)
    store.put(rec)
    rec = store.modify(Role.SERVER, ch.txid, lambda r: replace(r, settlement_tx=b"tx"))
    assert store.chain_state(Role.SERVER, ch.txid) == FULL_CHAIN
    assert_same(store.get(Role.SERVER, ch.txid), rec)


def test_chain_state_of_unknown_channel_refused(store: ChannelStore) -> None:
    ch = Channel()
    store.put(ch.record(Role.CLIENT))
    with pytest.raises(StoreError, match=f"store the chain state of server channel {ch.txid}: "
                                         r"it is not stored; put\(\) the channel first"):
        store.put_chain_state(Role.SERVER, ch.txid, FULL_CHAIN)
    with pytest.raises(StoreError, match=f"read the chain state of server channel {ch.txid}"):
        store.chain_state(Role.SERVER, ch.txid)
    with pytest.raises(StoreError, match="not stored"):
        store.chain_state(Role.CLIENT, Channel().txid)
    assert store.get(Role.SERVER, ch.txid) is None
    assert store.chain_state(Role.CLIENT, ch.txid) == ChainState()


def test_forget_removes_the_chain_state(store: ChannelStore) -> None:
    ch, other = Channel(), Channel()
    store.put(ch.record(status=ChannelStatus.SETTLED))
    store.put(other.record())
    store.put_chain_state(Role.SERVER, ch.txid, FULL_CHAIN)
    store.put_chain_state(Role.SERVER, other.txid, FULL_CHAIN)
    store.forget(Role.SERVER, ch.txid)
    with pytest.raises(StoreError, match="not stored"):
        store.chain_state(Role.SERVER, ch.txid)
    store.put(ch.record())  # the same channel again starts with no chain state
    assert store.chain_state(Role.SERVER, ch.txid) == ChainState()
    assert store.chain_state(Role.SERVER, other.txid) == FULL_CHAIN


def test_discard_removes_a_never_funded_failed_channel_entirely(store: ChannelStore) -> None:
    ch, other = Channel(), Channel()
    rec = ch.record()
    store.put(rec)
    store.put(other.record())
    store.record_payment(ch.pay(rec, 100), 100)
    store.put(replace(ch.pay(rec, 100), status=ChannelStatus.FAILED))
    store.put_chain_state(Role.SERVER, ch.txid, ChainState(conflict_height=7))
    store.discard(Role.SERVER, ch.txid)
    assert store.get(Role.SERVER, ch.txid) is None
    assert store.payments(Role.SERVER, ch.txid) == []
    store.discard(Role.SERVER, ch.txid)  # idempotent
    assert [r.contract_txid for r in store.channels()] == [other.txid]


@pytest.mark.parametrize("status", [s for s in ChannelStatus if s is not ChannelStatus.FAILED])
def test_discard_refuses_a_channel_that_did_not_fail(store: ChannelStore,
                                                     status: ChannelStatus) -> None:
    ch = Channel()
    store.put(ch.record(status=status))
    with pytest.raises(StoreError, match=f"its status is {status}.*history is kept"):
        store.discard(Role.SERVER, ch.txid)
    assert store.get(Role.SERVER, ch.txid) is not None


@pytest.mark.parametrize("state", [ChainState(contract_height=5),
                                   ChainState(spender=b"\x01", conflict_height=5)])
def test_discard_refuses_a_channel_whose_contract_was_on_chain(store: ChannelStore,
                                                               state: ChainState) -> None:
    ch = Channel()
    store.put(ch.record(status=ChannelStatus.FAILED))
    store.put_chain_state(Role.SERVER, ch.txid, state)
    with pytest.raises(StoreError, match="was seen on chain"):
        store.discard(Role.SERVER, ch.txid)
    assert store.chain_state(Role.SERVER, ch.txid) == state


# -- meta ------------------------------------------------------------------------------------


def test_meta_round_trip_and_overwrite(store: ChannelStore) -> None:
    assert store.get_meta("tip") is None
    store.set_meta("tip", "800000:00000000000000000001")
    store.set_meta("other", "")
    assert store.get_meta("tip") == "800000:00000000000000000001"
    store.set_meta("tip", "800001:00000000000000000002")
    assert store.get_meta("tip") == "800001:00000000000000000002"
    assert store.get_meta("other") == ""
    assert store.get_meta("TIP") is None

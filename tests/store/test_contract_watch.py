"""The store's batch methods the autopilot and the benchmark use, run against every engine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import ChannelStore, WatchedChannel
from tests.store.helpers import Channel, assert_same
from tests.store.test_contract import store

__all__ = ["store"]  # the engines' fixture
LIVE = (ChannelStatus.OPEN, ChannelStatus.CLOSING)


def test_put_many_stores_all_or_nothing(store: ChannelStore) -> None:
    channels = [Channel() for _ in range(3)]
    store.put_many(ch.record() for ch in channels)
    for ch in channels:
        assert_same(store.get(Role.SERVER, ch.txid), ch.record())
    paid = channels[0].pay(channels[0].record(), 500)
    store.record_payment(paid, 500)
    fresh = Channel()
    with pytest.raises(StoreError, match=f"{channels[0].txid} with change 100000 above"):
        store.put_many([fresh.record(), channels[0].record()])
    assert store.get(Role.SERVER, fresh.txid) is None  # nothing of the batch was stored
    assert_same(store.get(Role.SERVER, channels[0].txid), paid)


def test_watched_lists_live_channels_with_unconfirmed_contracts(store: ChannelStore) -> None:
    unconfirmed, confirmed, closing, settled, client = (Channel() for _ in range(5))
    store.put(unconfirmed.record())
    store.put(confirmed.record())
    store.put(closing.record(status=ChannelStatus.CLOSING))
    store.put(settled.record(status=ChannelStatus.SETTLED))
    store.put(client.record(Role.CLIENT))
    store.put_chain_state(Role.SERVER, confirmed.txid, ChainState(contract_height=7))
    store.put_chain_state(Role.SERVER, closing.txid, ChainState(contract_height=0, spender=b"x"))
    watched = {w.contract_txid: w for w in store.watched(Role.SERVER, LIVE)}
    assert watched == {
        ch.txid: WatchedChannel(ch.txid, 0, ch.contract.expiry, status, tx)
        for ch, status, tx in [
            (unconfirmed, ChannelStatus.OPEN, unconfirmed.contract_tx),
            (confirmed, ChannelStatus.OPEN, None),
            (closing, ChannelStatus.CLOSING, closing.contract_tx),
        ]
    }
    assert [w.contract_txid for w in store.watched(Role.CLIENT, LIVE)] == [client.txid]
    assert [w.contract_txid for w in store.watched(Role.SERVER, [ChannelStatus.SETTLED])] == [
        settled.txid]


def test_load_reads_records_and_chain_states_of_many(store: ChannelStore) -> None:
    channels = [Channel() for _ in range(3)]
    store.put_many(ch.record() for ch in channels)
    state = ChainState(contract_height=9, fee_rate=3)
    store.put_chain_state(Role.SERVER, channels[1].txid, state)
    loaded = store.load(Role.SERVER, [ch.txid for ch in channels] + [Channel().txid])
    assert set(loaded) == {ch.txid for ch in channels}
    assert loaded[channels[0].txid][1] == ChainState()
    assert loaded[channels[1].txid][1] == state
    assert_same(loaded[channels[2].txid][0], channels[2].record())
    assert store.load(Role.CLIENT, [channels[0].txid]) == {}


def test_put_chain_states_in_one_go_skips_forgotten_channels(store: ChannelStore) -> None:
    kept, gone = Channel(), Channel()
    store.put(kept.record())
    store.put(gone.record(status=ChannelStatus.SETTLED))
    store.forget(Role.SERVER, gone.txid)
    state = ChainState(contract_height=3, spender=b"s", spender_height=4)
    store.put_chain_states(Role.SERVER, {kept.txid: state, gone.txid: state},
                           {"synced:server": "4:ab"})
    assert store.chain_state(Role.SERVER, kept.txid) == state
    assert store.get(Role.SERVER, gone.txid) is None
    assert store.get_meta("synced:server") == "4:ab"
    store.put_chain_states(Role.SERVER, {})  # nothing to do is fine
    assert store.chain_state(Role.SERVER, kept.txid) == state


def test_chain_heights_from_finds_what_a_reorg_may_undo(store: ChannelStore) -> None:
    low, contract, spender, conflict, none = (Channel() for _ in range(5))
    for ch in (low, contract, spender, conflict, none):
        store.put(ch.record())
    states = {low.txid: ChainState(contract_height=5, spender_height=9),
              contract.txid: ChainState(contract_height=10),
              spender.txid: ChainState(contract_height=4, spender_height=12),
              conflict.txid: ChainState(conflict_height=11)}
    store.put_chain_states(Role.SERVER, states)
    assert store.chain_heights_from(Role.SERVER, 10) == sorted(
        [contract.txid, spender.txid, conflict.txid])
    assert store.chain_heights_from(Role.SERVER, 13) == []
    assert store.chain_heights_from(Role.CLIENT, 0) == []
    assert replace(states[low.txid]) == store.chain_state(Role.SERVER, low.txid)


def test_modify_many_changes_all_or_nothing(store: ChannelStore) -> None:
    first, second = Channel(), Channel()
    store.put_many([first.record(), second.record()])
    closing = {ch.txid: (lambda r: replace(r, status=ChannelStatus.CLOSING, settlement_tx=b"s"))
               for ch in (first, second)}
    store.modify_many(Role.SERVER, closing)
    assert {r.status for r in store.channels(Role.SERVER)} == {ChannelStatus.CLOSING}
    unknown = Channel().txid
    settled = {first.txid: lambda r: replace(r, status=ChannelStatus.SETTLED),
               unknown: lambda r: r}
    with pytest.raises(StoreError, match=f"modify the record of server channel {unknown}"):
        store.modify_many(Role.SERVER, settled)
    assert store.get(Role.SERVER, first.txid).status is ChannelStatus.CLOSING  # type: ignore[union-attr]

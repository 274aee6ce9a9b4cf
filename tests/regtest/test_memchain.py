"""The in-process chain: blocks, coins, the mempool's acceptance checks, reorgs, the clock."""

from __future__ import annotations

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut, parse_block_transactions
from bitcoind_paychan.channel.contract import NON_FINAL
from regtest.memchain import CONFLICT, MISSING, MemChain
from regtest.memwallet import MemWallet

BTC = 100_000_000


def spend(wallet: MemWallet, coin: OutPoint, value: int, locktime: int = 0,
          sequence: int = 0xFFFFFFFD) -> Transaction:
    """`coin` (the wallet's) paid back to the wallet as `value`, signed."""
    draft = Transaction(2, (TxIn(coin, b"", sequence),), (TxOut(value, wallet.new_script()),),
                        locktime)
    return wallet.sign(draft)


@pytest.fixture
def chain() -> MemChain:
    return MemChain(mocktime=1_700_000_000)


@pytest.fixture
def wallet(chain: MemChain) -> MemWallet:
    return MemWallet(chain)


def test_blocks_link_and_serialize_as_getblock_does(chain: MemChain, wallet: MemWallet) -> None:
    coin, = wallet.receive(BTC)
    tx = spend(wallet, coin, BTC - 1_000)
    assert chain.accept(tx) is None
    block, = chain.mine()
    assert block.prev_hash == chain.blocks[-2].hash and block.height == chain.height
    assert parse_block_transactions(block.raw())[1:] == [tx]
    assert chain.block(block.hash) is block
    assert chain.transaction(tx.txid) == (tx, block.height)
    assert not chain.mempool


def test_median_time_past_follows_the_last_eleven_blocks(chain: MemChain) -> None:
    chain.advance_median_time_past(1_800_000_000)
    assert chain.median_time() > 1_800_000_000
    assert chain.tip.time >= chain.median_time()


def test_a_spent_or_unknown_output_is_missing(chain: MemChain, wallet: MemWallet) -> None:
    coin, = wallet.receive(BTC)
    first = spend(wallet, coin, BTC - 1_000)
    chain.mine(txs=[first])
    assert chain.test_accept(spend(wallet, coin, BTC - 2_000)) == MISSING
    assert chain.test_accept(spend(wallet, OutPoint(bytes(range(32)), 0), 1_000)) == MISSING


def test_a_conflict_replaces_only_for_a_higher_fee(chain: MemChain, wallet: MemWallet) -> None:
    coin, = wallet.receive(BTC)
    first = spend(wallet, coin, BTC - 1_000)
    assert chain.accept(first) is None
    child = spend(wallet, OutPoint(first.txid, 0), BTC - 2_000)
    assert chain.accept(child) is None
    assert chain.accept(spend(wallet, coin, BTC - 1_500)) == CONFLICT  # not above both
    richer = spend(wallet, coin, BTC - 5_000)
    assert chain.accept(richer) is None
    assert list(chain.mempool.values()) == [richer]  # the child went with its parent
    assert chain.mempool_spender(coin) == richer


def test_a_block_double_spending_the_mempool_evicts_the_loser(chain: MemChain,
                                                             wallet: MemWallet) -> None:
    coin, = wallet.receive(BTC)
    loser, winner = spend(wallet, coin, BTC - 1_000), spend(wallet, coin, BTC - 900)
    chain.accept(loser)
    chain.mine(txs=[winner], mempool=False)
    assert not chain.mempool and chain.transaction(loser.txid) is None


def test_lock_times_count_heights_and_median_time_past(chain: MemChain,
                                                      wallet: MemWallet) -> None:
    coins = wallet.receive(BTC, BTC)
    by_height = spend(wallet, coins[0], BTC - 1_000, locktime=chain.height + 1,
                      sequence=NON_FINAL)
    by_time = spend(wallet, coins[1], BTC - 1_000, locktime=chain.median_time() + 100,
                    sequence=NON_FINAL)
    assert chain.test_accept(by_height) == "non-final"
    assert chain.test_accept(by_time) == "non-final"
    chain.mine()
    assert chain.accept(by_height) is None  # its lock time is below the next block's height
    chain.advance_median_time_past(by_time.locktime)
    assert chain.accept(by_time) is None


def test_a_bad_signature_fails_the_script_check(chain: MemChain, wallet: MemWallet) -> None:
    coin, = wallet.receive(BTC)
    good = spend(wallet, coin, BTC - 1_000)
    sig, pub = good.inputs[0].witness
    other = PrivateKey.generate().pub.data
    assert "does not verify" in (chain.test_accept(good.with_witness(
        0, (sig[:10] + bytes([sig[10] ^ 1]) + sig[11:], pub))) or "")
    assert "another key" in (chain.test_accept(good.with_witness(0, (sig, other))) or "")


def test_policy_refuses_low_fees_dust_and_optionally_bare_multisig(chain: MemChain,
                                                                   wallet: MemWallet) -> None:
    coin, = wallet.receive(BTC)
    assert (chain.test_accept(spend(wallet, coin, BTC - 50)) or "").startswith("min relay fee")
    dust = wallet.sign(Transaction(2, (TxIn(coin),), (
        TxOut(BTC - 10_000, wallet.new_script()), TxOut(100, wallet.new_script()))))
    assert chain.test_accept(dust) == "dust"
    assert chain.fee(dust) == 9_900
    knots = MemChain(permit_bare_multisig=False)
    bare = b"\x52" + b"\x21" + bytes(33) + b"\x21" + bytes(33) + b"\x52\xae"
    assert knots.policy_problem(Transaction(2, (TxIn(coin),), (TxOut(BTC, bare),)),
                                1_000) == "bare-multisig"


def test_a_reorg_puts_transactions_back_unless_the_new_branch_spent_them(
        chain: MemChain, wallet: MemWallet) -> None:
    coins = wallet.receive(BTC, BTC)
    kept = spend(wallet, coins[0], BTC - 1_000)
    undone = spend(wallet, coins[1], BTC - 1_000)
    rival = spend(wallet, coins[1], BTC - 2_000)
    old, = chain.mine(txs=[kept, undone])
    new = chain.reorg(1, txs=[rival])
    assert [b.height for b in new] == [old.height, old.height + 1]
    assert chain.block(old.hash) is old  # a stale block stays known by its hash
    assert list(chain.mempool.values()) == [kept]
    assert chain.transaction(undone.txid) is None
    assert chain.coins[OutPoint(rival.txid, 0)].value == BTC - 2_000
    chain.mine()
    assert chain.transaction(kept.txid) == (kept, chain.height)


def test_mining_a_transaction_that_does_not_fit_says_why(chain: MemChain,
                                                         wallet: MemWallet) -> None:
    coin, = wallet.receive(BTC)
    late = spend(wallet, coin, BTC - 1_000, locktime=chain.height + 5, sequence=NON_FINAL)
    with pytest.raises(ValueError, match="non-final"):
        chain.mine(txs=[late])


def test_listeners_hear_blocks_and_transactions(chain: MemChain, wallet: MemWallet) -> None:
    heard: list[object] = []
    chain.on_block.append(heard.append)
    chain.on_transaction.append(heard.append)
    coin, = wallet.receive(BTC)
    tx = spend(wallet, coin, BTC - 1_000)
    chain.accept(tx)
    block, = chain.mine()
    assert heard[-2:] == [tx, block]


def test_evicting_a_transaction_takes_its_descendants_along(chain: MemChain,
                                                            wallet: MemWallet) -> None:
    coins = wallet.receive(BTC, BTC)
    parent = spend(wallet, coins[0], BTC - 1_000)
    assert chain.accept(parent) is None
    child = spend(wallet, OutPoint(parent.txid, 0), BTC - 2_000)  # signed once its coin exists
    other = spend(wallet, coins[1], BTC - 1_000)
    assert chain.accept(child) is None and chain.accept(other) is None
    chain.evict(parent.txid)
    assert list(chain.mempool.values()) == [other]
    assert chain.output(coins[0]) is not None  # its coin is unspent again

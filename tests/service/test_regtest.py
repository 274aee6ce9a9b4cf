"""MiningBroadcaster (regtest v1) mines through the node's `mine`: a contract another node
already mined, or that is in the mempool, is not mined again (seen: `generateblock failed …
bad-txns-BIP30` in the demo when both nodes raced to mine the contract)."""

from __future__ import annotations

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.node import Bitcoind
from regtest.node import RegtestNode
from tests.conftest import config_for


def signed_tx(node: RegtestNode) -> Transaction:
    raw = node.wallet_rpc("createrawtransaction", [], [{node.new_address(): 1}])
    funded = node.wallet_rpc("fundrawtransaction", raw)["hex"]
    return Transaction.parse(bytes.fromhex(
        node.wallet_rpc("signrawtransactionwithwallet", funded)["hex"]))


class LateBlock(Bitcoind):
    """The other node's block with the transaction arrives just after we looked: our check
    finds nothing the first time, and the node holds it by the time we mine."""

    def __init__(self, node: RegtestNode, racer: RegtestNode) -> None:
        super().__init__(config_for(node))
        self.racer, self.looked = racer, 0

    def _known(self, tx: Transaction) -> bool:
        self.looked += 1
        if self.looked == 1:
            self.racer.mine_tx(tx.hex())  # the block lands between the look and the mining
            return False
        return super()._known(tx)


def test_a_transaction_the_node_holds_is_not_mined_again(node: RegtestNode) -> None:
    broadcaster = Bitcoind(config_for(node))
    tx = signed_tx(node)
    assert broadcaster.mine(tx) is True
    assert broadcaster.mine(tx) is False  # in a block already: no BIP30 error
    pending = signed_tx(node)
    node.rpc("sendrawtransaction", pending.hex())
    assert broadcaster.mine(pending) is False  # in the mempool: the next block takes it


def test_a_block_that_lands_while_we_mine_is_no_error(node: RegtestNode) -> None:
    racing = LateBlock(node, node)
    tx = signed_tx(node)
    assert racing.mine(tx) is False and racing.looked == 2
    assert racing.mine(tx) is False

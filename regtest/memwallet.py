"""A wallet on a `MemChain`: keys of its own (P2WPKH) and imported channel keys (P2PKH and
P2WPKH), its coins in the chain and the mempool, funding with change, signing its own inputs
with real keys, locked coins. What bitcoind's wallet does for the node adapter, no more."""

from __future__ import annotations

from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.keys import PrivateKey, append_hashtype
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.script import p2pkh_script, p2wpkh_script, push
from bitcoind_paychan.bitcoin.sighash import SIGHASH_ALL, bip143_sighash, legacy_sighash
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.errors import InsufficientFunds

from .memchain import MemChain, dust_limit

FALLBACK_FEE = 20_000  # sat/kvB without an estimate: the regtest nodes' -fallbackfee=0.0002
DUMMY_SIG = bytes(72)  # a signature with its hashtype at its largest, to size fees
DUMMY_KEY = bytes(33)


class MemWallet:
    """The wallet of one side; `lock` / `release` coins as `lockunspent` does."""

    def __init__(self, chain: MemChain, network: Network = Network.REGTEST) -> None:
        self.chain = chain
        self.network = network
        self.keys: dict[bytes, PrivateKey] = {}  # scriptPubKey → its key
        self.locked: set[OutPoint] = set()

    def new_script(self) -> bytes:
        """A fresh P2WPKH scriptPubKey of this wallet."""
        key = PrivateKey.generate()
        script = p2wpkh_script(hash160(key.pub.data))
        self.keys[script] = key
        return script

    def watch_key(self, key: PrivateKey, script_types: tuple[str, ...] = ("pkh", "wpkh")
                  ) -> None:
        """Make what pays `key` (as P2PKH and/or P2WPKH) the wallet's."""
        key_hash = hash160(key.pub.data)
        for kind in script_types:
            script = {"pkh": p2pkh_script, "wpkh": p2wpkh_script}[kind](key_hash)
            self.keys[script] = key

    def receive(self, *values: int) -> list[OutPoint]:
        """New coins of these values, confirmed in a block of their own."""
        outputs = [TxOut(value, self.new_script()) for value in values]
        coinbase = self.chain.mine(payouts=outputs)[0].txs[0]
        return [OutPoint(coinbase.txid, index) for index in range(len(outputs))]

    def coins(self, segwit: bool = False) -> dict[OutPoint, TxOut]:
        """The wallet's unspent, unlocked coins (its own unconfirmed change included)."""
        with self.chain.lock:
            found = {o: out for o, out in self.chain.coins.items()
                     if out.script_pubkey in self.keys}
            for tx in self.chain.mempool.values():
                for index, out in enumerate(tx.outputs):
                    if out.script_pubkey in self.keys:
                        found[OutPoint(tx.txid, index)] = out
            spent = {i.prevout for tx in self.chain.mempool.values() for i in tx.inputs}
            return {o: out for o, out in found.items() if o not in spent and o not in self.locked
                    and (not segwit or out.script_pubkey[:1] == b"\x00")}

    def balance(self) -> int:
        return sum(out.value for out in self.coins().values())

    def release(self, inputs: tuple[tuple[str, int], ...]) -> None:
        self.locked -= {OutPoint.from_hex(txid, index) for txid, index in inputs}

    def lock(self, outpoints: tuple[OutPoint, ...]) -> None:
        self.locked |= set(outpoints)

    def fund(self, draft: Transaction, fee_rate: int | None,
             external: dict[OutPoint, tuple[TxOut, int]] | None = None) -> Transaction:
        """`draft` with wallet coins added (segwit only, largest first) and change appended
        when above dust, paying `fee_rate` sat/kvB (None: the estimate, else the fallback)
        for the whole transaction; the draft's own inputs are `external` (output spent and
        weight once signed). Signed where the wallet can, its coins locked.
        InsufficientFunds when the coins do not reach."""
        rate = fee_rate or self.chain.estimate or FALLBACK_FEE
        external = external or {}
        paid_in = sum(out.value for out, _ in external.values())
        needed = sum(out.value for out in draft.outputs)
        extra_weight = sum(w - 4 * 41 for _, w in external.values())  # their unlocking data
        chosen: list[tuple[OutPoint, TxOut]] = []
        available = sorted(self.coins(segwit=True).items(),
                           key=lambda c: (-c[1].value, c[0].txid, c[0].index))
        change_script = self.new_script()
        while True:
            inputs = (*draft.inputs, *(TxIn(o, b"", 0xFFFFFFFD) for o, _ in chosen))
            with_change = Transaction(draft.version, inputs,
                                      (*draft.outputs, TxOut(0, change_script)), draft.locktime)
            fee = self._fee(with_change, len(draft.inputs), rate, extra_weight)
            total = paid_in + sum(out.value for _, out in chosen)
            change = total - needed - fee
            if change >= dust_limit(change_script):
                funded = Transaction(draft.version, inputs, (
                    *draft.outputs, TxOut(change, change_script)), draft.locktime)
                break
            no_change = Transaction(draft.version, inputs, draft.outputs, draft.locktime)
            if total - needed >= self._fee(no_change, len(draft.inputs), rate, extra_weight):
                funded = no_change
                break
            if not available:
                raise InsufficientFunds(
                    f"the wallet cannot pay for this (Insufficient funds: {total} sat for "
                    f"{needed} sat and the fee); add funds")
            chosen.append(available.pop(0))
        self.lock(tuple(o for o, _ in chosen))
        return self.sign(funded, dict(chosen))

    def reclaim(self, coin: OutPoint, spent: TxOut, fee_rate: int) -> Transaction:
        """`coin` (the wallet's, `spent` its output) spent whole to a fresh script of the
        wallet, the fee taken from it; signed, BIP125 replaceable."""
        script = self.new_script()
        draft = Transaction(2, (TxIn(coin, b"", 0xFFFFFFFD),), (TxOut(spent.value, script),), 0)
        fee = self._fee(draft, 0, fee_rate, 0)
        draft = Transaction(2, draft.inputs, (TxOut(spent.value - fee, script),), 0)
        return self.sign(draft, {coin: spent})

    def _fee(self, tx: Transaction, first_wallet_input: int, rate: int, extra_weight: int
             ) -> int:
        """The fee of `tx` once its wallet inputs (from `first_wallet_input` on) are signed."""
        sized = tx
        for index in range(first_wallet_input, len(tx.inputs)):
            sized = sized.with_witness(index, (DUMMY_SIG, DUMMY_KEY))
        vsize = -(-(sized.weight + extra_weight) // 4)
        return -(-rate * vsize // 1000)

    def sign(self, tx: Transaction, spent: dict[OutPoint, TxOut] | None = None) -> Transaction:
        """`tx` with every input that spends a coin of this wallet signed (SIGHASH_ALL); the
        others are left as they are. `spent` names outputs the chain may not know yet."""
        spent = spent or {}
        for index, txin in enumerate(tx.inputs):
            out = spent.get(txin.prevout) or self.chain.prevout(txin.prevout)
            key = self.keys.get(out.script_pubkey) if out else None
            if out is None or key is None:
                continue
            pub = key.pub.data
            if out.script_pubkey[:1] == b"\x00":
                digest = bip143_sighash(tx, index, p2pkh_script(hash160(pub)), out.value,
                                        SIGHASH_ALL)
                tx = tx.with_witness(index, (append_hashtype(key.sign(digest), SIGHASH_ALL),
                                             pub))
            else:
                digest = legacy_sighash(tx, index, out.script_pubkey, SIGHASH_ALL)
                tx = tx.with_script_sig(index, push(append_hashtype(key.sign(digest),
                                                                    SIGHASH_ALL)) + push(pub))
        return tx

"""The node adapter: everything the channel code asks of bitcoind, in satoshis and bytes."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from bitcoind_paychan.bitcoin.tx import Transaction, TxOut
from bitcoind_paychan.errors import NodeError, RpcError, TransactionRejected, WrongNetwork
from bitcoind_paychan.node.config import NodeConfig
from bitcoind_paychan.node.rpc import RpcClient

COIN = 100_000_000
NO_PARENT = "00" * 32  # the genesis block's prev_hash
RPC_THREADS = 8  # RPC calls in flight at once from one AsyncBitcoind
SPENDERS_BATCH = 1000  # outpoints per gettxspendingprevout call
T = TypeVar("T")
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_INVALID_ADDRESS_OR_KEY = -5
ALREADY_KNOWN = ("txn-already-in-mempool", "txn-already-known", "already in block chain")
BARE_MULTISIG_HINT = (
    "this node's policy refuses bare multisig outputs (Bitcoin Knots does); a version 1 "
    "contract needs a node that relays them (Bitcoin Core does), or use channel version 2 or 3"
)


def to_sat(btc: Decimal | float | str) -> int:
    """BTC amount from RPC → satoshis, exactly."""
    return int((Decimal(str(btc)) * COIN).to_integral_value())


def to_btc(sat: int) -> str:
    """Satoshis → the exact BTC string RPC accepts."""
    return f"{Decimal(sat) / COIN:.8f}"


@dataclass(frozen=True)
class ChainTip:
    height: int
    block_hash: str
    median_time: int
    time: int


@dataclass(frozen=True)
class Block:
    """A block header of interest: where it sits and its timestamps."""

    height: int
    hash: str
    prev_hash: str
    time: int
    median_time: int

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Block:
        """From a verbose `getblockheader` result."""
        return cls(
            int(header["height"]),
            str(header["hash"]),
            str(header.get("previousblockhash", NO_PARENT)),
            int(header["time"]),
            int(header["mediantime"]),
        )


@dataclass(frozen=True)
class FundedTx:
    """A signed, unbroadcast wallet transaction paying `script_pubkey` at `output_index`."""

    tx: Transaction
    output_index: int
    fee: int
    inputs: tuple[tuple[str, int], ...]

    @property
    def txid(self) -> str:
        return self.tx.txid_hex


@dataclass(frozen=True)
class TxStatus:
    tx: Transaction
    confirmations: int
    block_hash: str | None
    block_height: int | None


@dataclass(frozen=True)
class Acceptance:
    allowed: bool
    reason: str
    vsize: int | None = None
    fee: int | None = None


IMPORT_WAIT = 30.0  # seconds a channel key's import waits for another program's rescan
_IMPORT_LOCKS: dict[tuple[str, str | None], threading.Lock] = {}
_IMPORT_LOCKS_GUARD = threading.Lock()


class Bitcoind:
    """A bitcoind reached over JSON-RPC; safe to share between threads."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.rpc = RpcClient(config)
        # importdescriptors holds the wallet's rescan slot even for a new key: a second import
        # at the same time fails with "Wallet is currently rescanning". One at a time per
        # wallet in this process, whichever adapter object asks.
        with _IMPORT_LOCKS_GUARD:
            self._imports = _IMPORT_LOCKS.setdefault((config.url, config.wallet),
                                                     threading.Lock())

    def check(self) -> ChainTip:
        """Reach the node, check its chain and (if configured) wallet; return the tip."""
        tip = self.tip()
        if self.config.wallet:
            self.rpc.call("getwalletinfo", wallet=True)
        return tip

    def tip(self) -> ChainTip:
        info = self.rpc.call("getblockchaininfo")
        if info["chain"] != self.config.chain:
            raise WrongNetwork(
                f"bitcoind at {self.config.url} runs chain {info['chain']!r} but "
                f"{self.config.chain!r} is configured; point at the right node or fix the chain"
            )
        header = self.rpc.call("getblockheader", info["bestblockhash"])
        return ChainTip(
            int(info["blocks"]),
            str(info["bestblockhash"]),
            int(info["mediantime"]),
            int(header["time"]),
        )

    def best_block_hash(self) -> str:
        return str(self.rpc.call("getbestblockhash"))

    def block_header(self, block_hash: str) -> Block:
        return Block.from_header(self.rpc.call("getblockheader", block_hash))

    def raw_block(self, block_hash: str) -> bytes:
        return bytes.fromhex(self.rpc.call("getblock", block_hash, 0))

    def fee_rate(self, target_blocks: int = 6, floor: int = 1000) -> int:
        """Fee rate in sat/kvB for confirmation within `target_blocks`, never below `floor`,
        the node's relay minimum or its mempool minimum."""
        estimate = self.rpc.call("estimatesmartfee", target_blocks)
        mempool = self.rpc.call("getmempoolinfo")
        rates = [floor, to_sat(mempool["mempoolminfee"]), to_sat(mempool["minrelaytxfee"])]
        if "feerate" in estimate:
            rates.append(to_sat(estimate["feerate"]))
        return max(rates)

    def fund(
        self, script_pubkey: bytes, amount: int, fee_rate: int | None = None, version: int = 2
    ) -> FundedTx:
        """Build and sign (not broadcast) a wallet tx paying `amount` to `script_pubkey` as
        output 0, spending segwit coins only so its txid is final. Its coins stay locked
        until broadcast or `release`."""
        draft = Transaction(version, (), (TxOut(amount, script_pubkey),), 0)
        options: dict[str, Any] = {
            "changePosition": 1,
            "lockUnspents": True,
            "change_type": "bech32",
        }
        if fee_rate is not None:
            options["fee_rate"] = str(Decimal(fee_rate) / 1000)
        funded = self.rpc.call("fundrawtransaction", draft.hex(), options, False, wallet=True)
        inputs = tuple(
            (i["txid"], int(i["vout"]))
            for i in self.rpc.call("decoderawtransaction", funded["hex"])["vin"]
        )
        try:
            psbt = self.rpc.call("converttopsbt", funded["hex"])
            signed = self.rpc.call("walletprocesspsbt", psbt, True, "ALL", wallet=True)
            final = self.rpc.call("finalizepsbt", signed["psbt"])
            if not final.get("complete"):
                raise NodeError("the wallet could not sign every input of the funding tx")
            tx = Transaction.from_hex(final["hex"])
            if any(not txin.witness for txin in tx.inputs):
                raise NodeError(
                    "the wallet funded the contract with a non-segwit coin, whose txid could "
                    "change; spend or sweep legacy coins to a bech32 address first"
                )
        except BaseException:
            self.release(inputs)
            raise
        return FundedTx(tx, 0, to_sat(funded["fee"]), inputs)

    def fund_external(self, draft: Transaction, input_weights: dict[tuple[str, int], int],
                      fee_rate: int) -> Transaction:
        """Add wallet inputs (signed) and change to `draft`, whose own inputs are not the
        wallet's and stay unsigned (their weights once signed are given); the wallet pays the
        whole fee at `fee_rate` sat/kvB. The draft's inputs and outputs keep their places."""
        options = {
            "add_inputs": True, "lockUnspents": True, "change_type": "bech32",
            "changePosition": len(draft.outputs), "fee_rate": str(Decimal(fee_rate) / 1000),
            "input_weights": [{"txid": t, "vout": n, "weight": w}
                              for (t, n), w in input_weights.items()],
        }
        funded = self.rpc.call("fundrawtransaction", draft.hex(), options, False, wallet=True)
        signed = Transaction.from_hex(
            self.rpc.call("signrawtransactionwithwallet", funded["hex"], wallet=True)["hex"])
        if signed.inputs[: len(draft.inputs)] != draft.inputs or (
                signed.outputs[: len(draft.outputs)] != draft.outputs):
            added = tuple((i.prevout.txid_hex, i.prevout.index)
                          for i in signed.inputs[len(draft.inputs):])
            self.release(added)
            raise NodeError("the wallet reordered the transaction it was asked to fund")
        return signed

    def reclaim(self, coin: tuple[str, int], fee_rate: int) -> Transaction:
        """Spend our confirmed `coin` whole back to a fresh address of ours, the fee taken from
        it at `fee_rate` sat/kvB; signed, not broadcast."""
        txid, vout = coin
        found = self.rpc.call("gettxout", txid, vout, False)
        if found is None:
            raise NodeError(f"coin {txid}:{vout} is spent or unknown: nothing to reclaim")
        address = self.rpc.call("getnewaddress", "", "bech32", wallet=True)
        draft = self.rpc.call("createrawtransaction",
                              [{"txid": txid, "vout": vout, "sequence": 0xFFFFFFFD}],
                              [{address: found["value"]}])
        options = {"add_inputs": False, "subtractFeeFromOutputs": [0],
                   "fee_rate": str(Decimal(fee_rate) / 1000), "changePosition": 1}
        funded = self.rpc.call("fundrawtransaction", draft, options, False, wallet=True)
        signed = self.rpc.call("signrawtransactionwithwallet", funded["hex"], wallet=True)
        if not signed.get("complete"):
            raise NodeError(f"the wallet cannot sign coin {txid}:{vout}")
        return Transaction.from_hex(signed["hex"])

    def release(self, inputs: tuple[tuple[str, int], ...]) -> None:
        """Unlock coins that a funding tx, now abandoned, had reserved."""
        self.rpc.call("lockunspent", True, [{"txid": t, "vout": n} for t, n in inputs], wallet=True)

    def broadcast(self, tx: Transaction) -> str:
        """Send `tx` to the network; one already in the mempool or chain counts as sent."""
        try:
            return str(self.rpc.call("sendrawtransaction", tx.hex()))
        except RpcError as exc:
            if exc.code == RPC_VERIFY_ALREADY_IN_CHAIN or any(
                m in exc.rpc_message for m in ALREADY_KNOWN
            ):
                return tx.txid_hex
            raise self._rejected(tx, exc.rpc_message) from None

    def _rejected(self, tx: Transaction, reason: str) -> TransactionRejected:
        hint = ""
        if "bare" in reason or "scriptpubkey" in reason or "vout-script" in reason:
            hint = f" — {BARE_MULTISIG_HINT}"
        return TransactionRejected(
            f"bitcoind rejected transaction {tx.txid_hex}: {reason}{hint}", reason
        )

    def test_accept(self, tx: Transaction) -> Acceptance:
        """Would the mempool take `tx`? (testmempoolaccept)"""
        result = self.rpc.call("testmempoolaccept", [tx.hex()])[0]
        if result.get("allowed"):
            return Acceptance(True, "", int(result["vsize"]), to_sat(result["fees"]["base"]))
        return Acceptance(False, str(result.get("reject-reason", "")))

    def check_acceptable(self, tx: Transaction) -> Acceptance:
        """What `test_accept` says, as typed errors: TransactionRejected with the node's
        reason when the mempool would refuse `tx` (one it already holds counts as accepted),
        NodeUnreachable (or another NodeError) when the node cannot be asked."""
        acceptance = self.test_accept(tx)
        if not acceptance.allowed and acceptance.reason not in ALREADY_KNOWN:
            raise self._rejected(tx, acceptance.reason)
        return acceptance

    def transaction(self, txid: str) -> TxStatus | None:
        """A transaction in the mempool or chain, with its confirmations; None if unknown."""
        try:
            info = self.rpc.call("getrawtransaction", txid, True)
        except RpcError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        confirmations = int(info.get("confirmations", 0))
        height = None
        if confirmations > 0:
            height = self.tip().height - confirmations + 1
        return TxStatus(
            Transaction.from_hex(info["hex"]), confirmations, info.get("blockhash"), height
        )

    def is_spent(self, txid: str, index: int) -> bool:
        """Is outpoint txid:index spent (in the chain or the mempool)? False if it is unspent;
        NodeError if the transaction is unknown to the node."""
        if self.rpc.call("gettxout", txid, index, True) is not None:
            return False
        if self.transaction(txid) is None:
            raise NodeError(f"bitcoind does not know transaction {txid}")
        return True

    def payout_script(self) -> bytes:
        """A fresh scriptPubKey of the wallet for receiving money."""
        address = self.rpc.call("getnewaddress", "", "bech32", wallet=True)
        return bytes.fromhex(self.rpc.call("getaddressinfo", address, wallet=True)["scriptPubKey"])

    def owns_script(self, script_pubkey: bytes) -> bool:
        """Is money paid to `script_pubkey` the wallet's? (False: no address, or not ours.)"""
        address = self.rpc.call("decodescript", script_pubkey.hex()).get("address")
        if not address:
            return False
        return bool(self.rpc.call("getaddressinfo", address, wallet=True)["ismine"])

    def spender(self, txid: str, index: int) -> Transaction | None:
        """The mempool transaction spending txid:index, if there is one."""
        return self.spenders([(txid, index)]).get((txid, index))

    def spenders(self, outpoints: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Transaction]:
        """The mempool transactions spending any of these outpoints (txid, index), asked in
        batches of SPENDERS_BATCH outpoints per `gettxspendingprevout` call."""
        wanted, found = list(outpoints), {}
        for start in range(0, len(wanted), SPENDERS_BATCH):
            chunk = [{"txid": t, "vout": n} for t, n in wanted[start : start + SPENDERS_BATCH]]
            for entry in self.rpc.call("gettxspendingprevout", chunk):
                status = self.transaction(entry["spendingtxid"]) if "spendingtxid" in entry \
                    else None
                if status is not None:
                    found[(str(entry["txid"]), int(entry["vout"]))] = status.tx
        return found

    def watch_key(self, secret_wif: str, script_types: tuple[str, ...] = ("pkh", "wpkh")) -> None:
        """Import a channel key into the wallet, so refunds and change paid to it are the
        wallet's money (descriptor wallets; rescans nothing: the key is new)."""
        requests = []
        for kind in script_types:
            info = self.rpc.call("getdescriptorinfo", f"{kind}({secret_wif})")
            requests.append({"desc": f"{kind}({secret_wif})#{info['checksum']}",
                             "timestamp": "now"})
        with self._imports:
            results = self._import(requests)
        for result in results:
            if not result.get("success"):
                raise NodeError(f"the wallet refused the channel key: {result.get('error')}")

    def _import(self, requests: list[dict[str, str]]) -> list[dict[str, Any]]:
        """importdescriptors, waiting (up to IMPORT_WAIT s) while another process's import or
        rescan holds the wallet."""
        deadline = time.monotonic() + IMPORT_WAIT
        while True:
            try:
                results: list[dict[str, Any]] = self.rpc.call("importdescriptors", requests,
                                                               wallet=True)
                return results
            except RpcError as exc:
                if "rescanning" not in exc.rpc_message or time.monotonic() > deadline:
                    if "rescanning" in exc.rpc_message:
                        raise NodeError(
                            f"wallet {self.config.wallet!r} was busy rescanning (another "
                            f"program imports keys or rescans it) for {IMPORT_WAIT:g} s, so "
                            "the channel key could not be imported; nothing was spent: try "
                            "again once the rescan is over") from exc
                    raise
                time.sleep(0.1)

    def mine(self, tx: Transaction) -> bool:
        """Regtest: mine `tx` in a block of its own (to a wallet address), unless the node
        already has it (mined by another node racing us, whose block arrived meanwhile): True
        if we mined it."""
        if self._known(tx):
            return False
        address = self.rpc.call("getnewaddress", "", "bech32", wallet=True)
        try:
            self.rpc.call("generateblock", address, [tx.hex()])
        except NodeError:
            if self._known(tx):  # its block arrived between the check and ours (BIP30)
                return False
            raise
        return True

    def _known(self, tx: Transaction) -> bool:
        """Whether the node holds `tx`'s first output, in a block or in its mempool."""
        return self.rpc.call("gettxout", tx.txid_hex, 0, True) is not None

    def balance(self) -> int:
        """The wallet's trusted balance (confirmed and own unconfirmed), in satoshis."""
        return to_sat(self.rpc.call("getbalances", wallet=True)["mine"]["trusted"])


class AsyncBitcoind:
    """The same adapter for asyncio code: each call runs in a worker thread of its own pool,
    so a slow or busy node never holds up the default pool's other work (the store's writes,
    which acknowledge payments). It implements every port of `node/ports.py` (a `Node`, and a
    `Miner` on regtest)."""

    def __init__(self, node: Bitcoind) -> None:
        self.node = node
        self._pool = ThreadPoolExecutor(RPC_THREADS, thread_name_prefix="bitcoind-rpc")

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` in the node's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(call, *args))

    @property
    def chain(self) -> str:
        return self.node.config.chain

    async def tip(self) -> ChainTip:
        return await self.run(self.node.tip)

    async def best_block_hash(self) -> str:
        return await self.run(self.node.best_block_hash)

    async def block_header(self, block_hash: str) -> Block:
        return await self.run(self.node.block_header, block_hash)

    async def raw_block(self, block_hash: str) -> bytes:
        return await self.run(self.node.raw_block, block_hash)

    async def fee_rate(self, target_blocks: int = 6, floor: int = 1000) -> int:
        return await self.run(self.node.fee_rate, target_blocks, floor)

    async def fund(
        self, script_pubkey: bytes, amount: int, fee_rate: int | None = None, version: int = 2
    ) -> FundedTx:
        return await self.run(self.node.fund, script_pubkey, amount, fee_rate, version)

    async def broadcast(self, tx: Transaction) -> str:
        return await self.run(self.node.broadcast, tx)

    async def transaction(self, txid: str) -> TxStatus | None:
        return await self.run(self.node.transaction, txid)

    async def is_spent(self, txid: str, index: int) -> bool:
        return await self.run(self.node.is_spent, txid, index)

    async def payout_script(self) -> bytes:
        return await self.run(self.node.payout_script)

    async def owns_script(self, script_pubkey: bytes) -> bool:
        return await self.run(self.node.owns_script, script_pubkey)

    async def test_accept(self, tx: Transaction) -> Acceptance:
        return await self.run(self.node.test_accept, tx)

    async def check_acceptable(self, tx: Transaction) -> Acceptance:
        return await self.run(self.node.check_acceptable, tx)

    async def release(self, inputs: tuple[tuple[str, int], ...]) -> None:
        await self.run(self.node.release, inputs)

    async def reclaim(self, coin: tuple[str, int], fee_rate: int) -> Transaction:
        return await self.run(self.node.reclaim, coin, fee_rate)

    async def fund_external(self, draft: Transaction, input_weights: dict[tuple[str, int], int],
                            fee_rate: int) -> Transaction:
        return await self.run(self.node.fund_external, draft, input_weights, fee_rate)

    async def spender(self, txid: str, index: int) -> Transaction | None:
        return await self.run(self.node.spender, txid, index)

    async def spenders(self, outpoints: Iterable[tuple[str, int]]
                       ) -> dict[tuple[str, int], Transaction]:
        return await self.run(self.node.spenders, list(outpoints))

    async def mine(self, tx: Transaction) -> bool:
        return await self.run(self.node.mine, tx)

    async def watch_key(self, secret_wif: str, script_types: tuple[str, ...] = ("pkh", "wpkh")
                        ) -> None:
        await self.run(self.node.watch_key, secret_wif, script_types)

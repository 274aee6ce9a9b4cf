"""Can this process settle and refund right now? One answer, in one place.

    probe = probe_node(bitcoind)                      # the node probe (RPC; a worker thread)
    readiness = settle_readiness(probe, oldest_contract_height)   # sans-IO: the rules

Settling (or refunding) needs the node to answer, the wallet loaded (it funds the fee and
receives the payout) and unlocked (it signs), the chain synced (out of initial block download:
else the node's view of spends and deadlines is old), and the blocks of the channels' contracts
still on disk (a pruned node cannot show what spent them). The first rule broken is the reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bitcoind_paychan.errors import NodeError, WalletNotLoaded
from bitcoind_paychan.node.bitcoind import Bitcoind


class Reason(enum.StrEnum):
    """Why settling is (not) possible; the `reason` label of `paychan_can_settle`."""

    OK = "ok"
    NODE_UNREACHABLE = "node_unreachable"
    WALLET_NOT_LOADED = "wallet_not_loaded"
    WALLET_LOCKED = "wallet_locked"
    INITIAL_BLOCK_DOWNLOAD = "initial_block_download"
    BLOCKS_PRUNED = "blocks_pruned"


@dataclass(frozen=True)
class NodeProbe:
    """What the node said when asked; `node_error`/`wallet_error`: why it could not answer."""

    node_error: str | None = None
    wallet_error: str | None = None
    wallet_locked: bool = False
    initial_block_download: bool = False
    prune_height: int | None = None  # the lowest block on disk, when the node prunes
    height: int | None = None


@dataclass(frozen=True)
class Readiness:
    """The answer: `reason` (OK or the first rule broken) and what the operator reads."""

    reason: Reason
    detail: str

    @property
    def can_settle(self) -> bool:
        return self.reason is Reason.OK

    def as_dict(self) -> dict[str, object]:
        return {"can_settle": self.can_settle, "reason": self.reason.value,
                "detail": self.detail}


def settle_readiness(probe: NodeProbe, oldest_contract_height: int | None) -> Readiness:
    """The rules, in order; `oldest_contract_height`: the lowest block holding the contract of
    a channel not yet settled (None: no such confirmed contract)."""
    if probe.node_error is not None:
        return Readiness(Reason.NODE_UNREACHABLE, probe.node_error)
    if probe.wallet_error is not None:
        return Readiness(Reason.WALLET_NOT_LOADED, probe.wallet_error)
    if probe.wallet_locked:
        return Readiness(Reason.WALLET_LOCKED, "the wallet is encrypted and locked: it cannot "
                         "sign a settlement or refund; unlock it (bitcoin-cli walletpassphrase)")
    if probe.initial_block_download:
        return Readiness(Reason.INITIAL_BLOCK_DOWNLOAD, "bitcoind is in initial block "
                         "download: its chain is behind; wait until it has synced")
    if (probe.prune_height is not None and oldest_contract_height is not None
            and oldest_contract_height < probe.prune_height):
        return Readiness(Reason.BLOCKS_PRUNED, f"bitcoind pruned block {oldest_contract_height}, "
                         "which holds an unsettled channel's contract (blocks below "
                         f"{probe.prune_height} are gone); give it a larger prune size or none")
    return Readiness(Reason.OK, "bitcoind answers, the wallet is loaded and unlocked, the "
                     "chain is synced")


def probe_node(node: Bitcoind) -> NodeProbe:
    """Ask the node what `settle_readiness` needs. The wallet call loads a wallet bitcoind has
    on disk but not loaded (see `RpcClient.call`)."""
    try:
        chain = node.rpc.call("getblockchaininfo")
    except NodeError as exc:
        return NodeProbe(node_error=str(exc))
    node_error = wallet_error = None
    locked = False
    try:
        wallet = node.rpc.call("getwalletinfo", wallet=True)
        locked = wallet.get("unlocked_until") == 0  # present only for an encrypted wallet
    except WalletNotLoaded as exc:
        wallet_error = str(exc)
    except NodeError as exc:
        node_error = str(exc)
    return NodeProbe(node_error, wallet_error, locked, bool(chain.get("initialblockdownload")),
                     int(chain["pruneheight"]) if chain.get("pruned") else None,
                     int(chain["blocks"]))

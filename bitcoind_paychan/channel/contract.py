"""A funded channel's contract and every transaction built on it (pure, no I/O).

What differs between versions (scripts, signature hashes, the signature scheme, how a spend
is unlocked, capabilities) is the contract's kind (channel/kinds/, one module per version);
what is the same is here. A payment is the client's signature (SIGHASH_SINGLE|ANYONECANPAY,
or NONE|ANYONECANPAY when it keeps no change) on a tx spending contract:0 that returns
`change` to the client as output 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from bitcoind_paychan.bitcoin.keys import PrivateKey, PublicKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.kinds.base import (
    EXHAUSTED_HASHTYPE,
    FINAL,
    NON_FINAL,
    PAYMENT_HASHTYPE,
    REFUND_SERVER_HASHTYPE,
    Branch,
    ContractKind,
)
from bitcoind_paychan.channel.kinds.registry import VERSIONS, kind_of
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = ["DUST", "FINAL", "NON_FINAL", "VERSIONS", "Branch", "Contract", "bad_tx",
           "check_refund_request", "contract_from_tx", "locking_script", "output_script",
           "payment_hashtype", "round_change"]

DUST = 546  # change below this is paid to the server instead (bitcoinj's rule)
LOCKTIME_THRESHOLD = 500_000_000  # lock times below are heights, above unix times


def bad_tx(message: str) -> RemoteProtocolError:
    """A transaction or signature of the peer's that the protocol refuses."""
    return RemoteProtocolError(message, ErrorCode.BAD_TRANSACTION)


def payment_hashtype(change: int) -> int:
    return PAYMENT_HASHTYPE if change else EXHAUSTED_HASHTYPE


def round_change(change: int) -> int:
    """Change the client keeps; below dust it is given to the server."""
    return 0 if change < DUST else change


def locking_script(version: int, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
    """The script the channel's signatures commit to (bare script, redeem or witness script)."""
    return kind_of(version).locking_script(client_pub, server_pub, expiry)


def output_script(version: int, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
    """The scriptPubKey of contract output 0."""
    return kind_of(version).output_script(client_pub, server_pub, expiry)


@dataclass(frozen=True)
class Contract:
    """A funded channel: contract output 0 and the keys and expiry behind its script."""

    version: int
    client_pub: bytes
    server_pub: bytes
    expiry: int
    outpoint: OutPoint
    value: int

    @cached_property
    def kind(self) -> ContractKind:
        """This contract's version-specific half (LocalProtocolError for an unknown version),
        made when first signed or checked: its scripts need only the kind's class."""
        return kind_of(self.version)(self)

    @cached_property
    def script(self) -> bytes:
        return kind_of(self.version).locking_script(self.client_pub, self.server_pub, self.expiry)

    @cached_property
    def script_pubkey(self) -> bytes:
        return kind_of(self.version).output_script(self.client_pub, self.server_pub, self.expiry)

    @cached_property
    def client_key(self) -> PublicKey:
        return PublicKey(self.client_pub)

    @cached_property
    def server_key(self) -> PublicKey:
        return PublicKey(self.server_pub)

    @cached_property
    def change_script(self) -> bytes:
        """Where the client's change (and refund) goes: its contract key's own output."""
        return kind_of(self.version).change_script(self.client_pub)

    @property
    def txid(self) -> str:
        return self.outpoint.txid_hex

    def sighash(self, tx: Transaction, hashtype: int,
                branch: Branch = Branch.COOPERATIVE, spent: tuple[TxOut, ...] = ()) -> bytes:
        """The digest a signature on input 0 of `tx` (spending this contract) commits to
        (`spent`: the outputs its other inputs spend, for a kind whose hash needs them)."""
        return self.kind.sighash(tx, hashtype, branch, spent)

    def _signature(self, key: PrivateKey, digest: bytes, hashtype: int) -> bytes:
        return self.kind.scheme.sign(key, digest, hashtype)

    def _check_signature(self, what: str, key: PublicKey, signature: bytes, hashtype: int,
                         digest_of: Callable[[], bytes]) -> None:
        """Raise RemoteProtocolError unless `signature` is `key`'s, of `digest_of()`, with
        exactly `hashtype`, encoded as the kind's scheme demands."""
        scheme = self.kind.scheme
        body, found = scheme.split(signature)
        if found != hashtype:
            raise bad_tx(f"{what} signed with hashtype {found:#x}, expected {hashtype:#x}")
        if not scheme.canonical(body):
            raise bad_tx(f"{what} signature is not {scheme.canonical_form}")
        if not scheme.verify(key, digest_of(), body):
            raise bad_tx(f"{what} signature does not verify against the contract")

    # -- payments --------------------------------------------------------------------------

    def payment_sighash(self, change: int) -> bytes:
        """The digest a payment leaving the client `change` signs: `sighash` of `payment_tx`,
        hashed on from the channel's prefix (computed once by its kind)."""
        return self.kind.payment_sighash(change, payment_hashtype(change))

    def payment_tx(self, change: int) -> Transaction:
        """The unsigned tx a payment signs: contract:0 → `change` back to the client."""
        outputs = (TxOut(change, self.change_script),) if change else ()
        return Transaction(1, (TxIn(self.outpoint, b"", FINAL),), outputs, 0)

    def sign_payment(self, key: PrivateKey, change: int) -> bytes:
        """The client's payment signature (hashtype included) leaving it `change`."""
        return self._signature(key, self.payment_sighash(change), payment_hashtype(change))

    def check_payment(self, change: int, signature: bytes) -> None:
        """Raise RemoteProtocolError unless `signature` is the client's valid payment leaving it
        `change`, with exactly the hashtype the protocol prescribes."""
        if change > self.value:
            raise bad_tx(f"change {change} exceeds the channel value {self.value}")
        if 0 < change < DUST:
            raise bad_tx(f"change {change} is dust (below {DUST}); send 0 instead")
        self._check_signature("payment", self.client_key, signature, payment_hashtype(change),
                              lambda: self.payment_sighash(change))

    # -- settlement (server) ---------------------------------------------------------------

    def settlement_draft(self, change: int, share: int, payout_script: bytes) -> Transaction:
        """The unsigned settlement: the best payment's tx plus the server's output."""
        base = self.payment_tx(change)
        return Transaction(1, base.inputs, (*base.outputs, TxOut(share, payout_script)), 0)

    def settlement_fee(self, change: int, payout_script: bytes, fee_rate: int,
                       branch: Branch = Branch.COOPERATIVE) -> int:
        """The fee (sat) a settlement without extra inputs pays at `fee_rate` sat/kvB: signed
        by both keys, or by their aggregate (KEY_PATH: one 64-byte SIGHASH_DEFAULT signature)."""
        draft = self.settlement_draft(change, 0, payout_script)
        if branch is Branch.KEY_PATH:
            signed = self.with_spend(draft, [bytes(64)], branch)
        else:
            signed = self.sign_settlement(draft, bytes(self.kind.scheme.max_size), None)
        return -(-fee_rate * signed.vsize // 1000)

    def settlement(
        self, change: int, client_sig: bytes, server_key: PrivateKey, payout_script: bytes,
        fee_rate: int,
    ) -> Transaction:
        """The server's close: the best payment plus the server's output, fee taken from the
        server's share at `fee_rate` sat/kvB. Raises LocalProtocolError if that share cannot
        pay the fee and stay above dust (then the fee must come from a wallet input)."""
        fee = self.settlement_fee(change, payout_script, fee_rate)
        share = self.value - change - fee
        if share < DUST:
            raise LocalProtocolError(
                f"the server's share {self.value - change} sat cannot pay a {fee} sat fee and keep "
                f"{DUST} sat; the fee must come from a wallet input"
            )
        draft = self.settlement_draft(change, share, payout_script)
        return self.sign_settlement(draft, client_sig, server_key)

    def sign_settlement(self, tx: Transaction, client_sig: bytes,
                        server_key: PrivateKey | None) -> Transaction:
        """`tx` (input 0 the contract; output 0 the client's change, if any) with input 0
        signed by both sides: the server signs with the kind's `final_hashtype` (SIGHASH_ALL:
        every input and output), so any wallet inputs and outputs must already be in place.
        `server_key` None makes a worst-case-size dummy, for fee estimates."""
        hashtype = self.kind.final_hashtype
        server_sig = (self._signature(server_key, self.sighash(tx, hashtype), hashtype)
                      if server_key else bytes(self.kind.scheme.max_size))
        return self.with_spend(tx, [client_sig, server_sig], Branch.COOPERATIVE)

    def sign_cooperative(self, key: PrivateKey, tx: Transaction,
                         spent: tuple[TxOut, ...] = ()) -> bytes:
        """Our signature of re-anchor `tx`'s input 0 (this contract) on the 2-of-2 branch with
        the kind's `reanchor_hashtype`, which commits to every input and output (`spent`: the
        outputs the other inputs spend, for a kind whose hash needs them)."""
        hashtype = self.kind.reanchor_hashtype
        return self._signature(key, self.sighash(tx, hashtype, Branch.COOPERATIVE, spent),
                               hashtype)

    def check_cooperative(self, what: str, tx: Transaction, signature: bytes,
                          signer: PublicKey | None = None, spent: tuple[TxOut, ...] = ()
                          ) -> None:
        """Raise RemoteProtocolError unless `signature` is `sign_cooperative`'s by `signer`
        (the client's key by default)."""
        hashtype = self.kind.reanchor_hashtype
        self._check_signature(what, signer or self.client_key, signature, hashtype,
                              lambda: self.sighash(tx, hashtype, Branch.COOPERATIVE, spent))

    def complete_cooperative(self, tx: Transaction, client_sig: bytes, server_key: PrivateKey,
                             spent: tuple[TxOut, ...] = ()) -> Transaction:
        """Re-anchor `tx` with input 0 carrying the client's `sign_cooperative` signature and
        the server's own: complete (the server's signature is added last)."""
        server_sig = self.sign_cooperative(server_key, tx, spent)
        return self.with_spend(tx, [client_sig, server_sig], Branch.COOPERATIVE)

    def spend_weight(self) -> int:
        """Weight of input 0 once signed cooperatively (for a wallet funding the rest)."""
        return self.kind.input_weight(Branch.COOPERATIVE)

    # -- refunds (client) ------------------------------------------------------------------

    def refund_tx(self, fee: int, locktime: int | None = None) -> Transaction:
        """The unsigned refund: contract:0 back to the client after the expiry."""
        if self.value - fee < DUST:
            raise LocalProtocolError(f"a {fee} sat fee leaves no refund of {self.value} sat")
        lock = self.expiry if locktime is None else locktime
        return Transaction(1, (TxIn(self.outpoint, b"", NON_FINAL),),
                           (TxOut(self.value - fee, self.change_script),), lock)

    def sign_refund(self, key: PrivateKey, refund: Transaction,
                    server_sig: bytes | None = None) -> Transaction:
        """The client's fully signed refund (a pre-signed refund needs the server's too)."""
        hashtype = self.kind.final_hashtype
        client_sig = self._signature(key, self.sighash(refund, hashtype, Branch.REFUND),
                                     hashtype)
        if not self.kind.capabilities.presigned_refund:
            return self.with_spend(refund, [client_sig], Branch.REFUND)
        if server_sig is None:
            raise LocalProtocolError(f"a version {self.version} refund needs the server's "
                                     "signature")
        return self.with_spend(refund, [client_sig, server_sig], Branch.REFUND)

    def refund_fee(self, fee_rate: int) -> int:
        """The fee a refund pays at `fee_rate` sat/kvB (sized with worst-case signatures)."""
        sigs = [bytes(self.kind.scheme.max_size)] * len(self.kind.signers(Branch.REFUND))
        draft = self.with_spend(self.refund_tx(0), sigs, Branch.REFUND)
        return max(-(-fee_rate * draft.vsize // 1000), 1)

    def refund(self, key: PrivateKey, fee_rate: int, presigned: bytes | None = None
               ) -> Transaction:
        """A signed refund paying `fee_rate`. A kind with a pre-signed refund reuses the
        server's NONE|ANYONECANPAY signature from the refund signed at opening (`presigned`):
        it commits to no output, so the client may choose the fee again."""
        refund = self.refund_tx(self.refund_fee(fee_rate))
        if not self.kind.capabilities.presigned_refund:
            return self.sign_refund(key, refund)
        if presigned is None:
            raise LocalProtocolError(f"a version {self.version} refund needs the refund the "
                                     "server signed at opening, and none is stored for this "
                                     "channel")
        sigs, _ = self.kind.unlocking(Transaction.parse(presigned))
        return self.sign_refund(key, refund, sigs[-1])

    def sign_refund_as_server(self, key: PrivateKey, refund: Transaction) -> bytes:
        digest = self.sighash(refund, REFUND_SERVER_HASHTYPE, Branch.REFUND)
        return self._signature(key, digest, REFUND_SERVER_HASHTYPE)

    def check_server_refund_signature(self, refund: Transaction, signature: bytes) -> None:
        self._check_signature(
            "the server's refund", self.server_key, signature, REFUND_SERVER_HASHTYPE,
            lambda: self.sighash(refund, REFUND_SERVER_HASHTYPE, Branch.REFUND))

    # -- scripts ---------------------------------------------------------------------------

    def with_spend(self, tx: Transaction, sigs: list[bytes], branch: Branch) -> Transaction:
        """`tx` with input 0 unlocking the contract on `branch` (`sigs`: the client's, then
        the server's where the branch needs both)."""
        return self.kind.unlock(tx, sigs, branch)


def contract_from_tx(
    version: int, tx: Transaction, client_pub: bytes, server_pub: bytes, expiry: int
) -> Contract:
    """Check that output 0 of `tx` is exactly the channel script; return the Contract."""
    if not tx.inputs or not tx.outputs:
        raise bad_tx("contract has no inputs or no outputs")
    expected = output_script(version, client_pub, server_pub, expiry)
    if tx.outputs[0].script_pubkey != expected:
        raise bad_tx(f"contract output 0 is not the version {version} channel script "
                     "for these keys and expiry")
    return Contract(version, client_pub, server_pub, expiry, OutPoint(tx.txid, 0),
                    tx.outputs[0].value)


def check_refund_request(refund: Transaction, min_expiry: int) -> None:
    """Server side (v1): the refund a client asks us to sign must be a refund and nothing
    else. Its outpoint is checked against the contract when that arrives, before anything
    is broadcast; the server's key is fresh per channel, so the signature is good for no
    other output."""
    if len(refund.inputs) != 1 or len(refund.outputs) != 1:
        raise bad_tx("refund must have exactly one input and one output")
    txin = refund.inputs[0]
    if txin.prevout.index != 0:
        raise bad_tx("refund must spend output 0 of the contract")
    if txin.sequence == FINAL:
        raise bad_tx("refund input is final, so its lock time would not apply")
    if refund.locktime < min_expiry:
        raise bad_tx(f"refund lock time {refund.locktime} is before the expiry {min_expiry}")
    if (refund.locktime >= LOCKTIME_THRESHOLD) != (min_expiry >= LOCKTIME_THRESHOLD):
        raise bad_tx("refund lock time is not a unix time like the expiry")

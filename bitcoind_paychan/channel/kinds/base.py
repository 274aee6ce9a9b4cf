"""What every contract kind provides: one interface, one subclass per contract version.

A kind is the version-specific half of a `Contract` (channel/contract.py builds the
transactions, the kind says how they are locked, hashed, signed and unlocked):

- its scripts: the locking script signatures commit to, the contract's output script, the
  client's change script (class methods: the client needs the output before a contract exists);
- the signature hashes of a spend of contract:0 on each branch, and of a payment, hashed on
  from a prefix the kind computes once per channel (throughput: only the client's output,
  lock time and hashtype are hashed per payment);
- its signature scheme (`scheme`): signing, the exact encoding it accepts, verifying, and the
  largest signature, which sizes every fee;
- the witness or scriptSig of a spend, and reading one back;
- its capabilities, named: what the machines and services ask instead of comparing versions.

A new kind is a module with a subclass, and one line in registry.py (ARCHITECTURE.md: "Adding
a contract kind").
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

from bitcoind_paychan.bitcoin.keys import (
    PrivateKey,
    PublicKey,
    append_hashtype,
    is_low_s,
    split_sig_hashtype,
)
from bitcoind_paychan.bitcoin.musig2 import SecretNonce
from bitcoind_paychan.bitcoin.sighash import (
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
)
from bitcoind_paychan.bitcoin.tx import Transaction, TxIn, TxOut, encode_varint
from bitcoind_paychan.errors import LocalProtocolError

if TYPE_CHECKING:
    from bitcoind_paychan.channel.contract import Contract

FINAL = 0xFFFFFFFF
NON_FINAL = 0xFFFFFFFE  # lets nLockTime apply
PAYMENT_HASHTYPE = SIGHASH_SINGLE | SIGHASH_ANYONECANPAY
EXHAUSTED_HASHTYPE = SIGHASH_NONE | SIGHASH_ANYONECANPAY  # a payment leaving no change
REFUND_SERVER_HASHTYPE = SIGHASH_NONE | SIGHASH_ANYONECANPAY  # a pre-signed refund's


class Branch(enum.Enum):
    """How a spend of contract:0 unlocks it."""

    COOPERATIVE = "both keys"  # payments and the settlement
    REFUND = "the client's refund"  # after the expiry (alone, or pre-signed by the server)
    KEY_PATH = "the aggregate key"  # a cooperative close signed by both (key_path_close)


@dataclass(frozen=True)
class Capabilities:
    """What a kind's channels can do, asked by name (never by comparing versions)."""

    presigned_refund: bool = False
    """The server signs the client's refund at opening (PROVIDE_REFUND, RETURN_REFUND), which
    is where the client's key travels; otherwise PROVIDE_CONTRACT carries it and the client
    refunds alone after the expiry."""
    segwit_funding_required: bool = False
    """The server takes only contracts spending native segwit coins (a final txid)."""
    resume_challenge: bool = False
    """A resume proves the client's key by signing the server's challenge (SERVER_VERSION
    field 1001), not with a payment a listener may have captured."""
    pipelining: bool = True
    """The server offers a payment window (SERVER_VERSION field 1002; bitcoinj reads past it)."""
    reanchoring: bool = False
    """A live channel may move to a new contract by a cooperative spend (issue 23)."""
    key_path_close: bool = False
    """The cooperative settlement may be a single-key (MuSig2 key-path) spend."""


class SignatureScheme(abc.ABC):
    """How a kind's signatures are made, encoded (with their hashtype) and checked."""

    canonical_form: ClassVar[str]  # what `canonical` demands, for error messages
    max_size: ClassVar[int]  # the largest signature with its hashtype, for fee estimates

    @abc.abstractmethod
    def sign(self, key: PrivateKey, digest: bytes, hashtype: int) -> bytes:
        """The signature of `digest`, as a spend carries it (hashtype included)."""

    @abc.abstractmethod
    def split(self, signature: bytes) -> tuple[bytes, int]:
        """(body, hashtype) of a spend's signature; DecodeError if it has neither."""

    @abc.abstractmethod
    def canonical(self, body: bytes) -> bool:
        """True iff `body` is encoded exactly as the scheme (and the node's policy) demands."""

    @abc.abstractmethod
    def verify(self, key: PublicKey, digest: bytes, body: bytes) -> bool:
        """True iff the `canonical` `body` is `key`'s signature of `digest`."""


class ECDSA(SignatureScheme):
    """Strict-DER, low-S ECDSA with the hashtype byte appended (v1 to v3)."""

    canonical_form = "canonical low-S DER"
    max_size = 73  # 72 bytes of DER + the hashtype

    def sign(self, key: PrivateKey, digest: bytes, hashtype: int) -> bytes:
        return append_hashtype(key.sign(digest), hashtype)

    def split(self, signature: bytes) -> tuple[bytes, int]:
        return split_sig_hashtype(signature)

    def canonical(self, body: bytes) -> bool:
        return is_low_s(body)

    def verify(self, key: PublicKey, digest: bytes, body: bytes) -> bool:
        return key.verify_low_s(digest, body)


class ContractKind(abc.ABC):
    """The version-specific half of a contract. Class attributes and class methods describe
    the kind; an instance belongs to one `Contract` and caches what its payments share."""

    version: ClassVar[int]  # the protocol major (CLIENT_VERSION, SERVER_VERSION)
    title: ClassVar[str]  # a few words for people (the CLI's help)
    capabilities: ClassVar[Capabilities]
    scheme: ClassVar[SignatureScheme]
    offered: ClassVar[bool] = True  # our client offers it by default and falls back to it
    presigned_refund_fee: ClassVar[int] = 0  # the fixed fee of a pre-signed refund
    # The hashtype of the signature that completes a spend: the server's on a settlement, the
    # client's on its refund. SIGHASH_ALL commits to every input, which a kind whose hashes
    # need each spent amount (BIP341) can only sign knowing them all.
    final_hashtype: ClassVar[int] = SIGHASH_ALL
    # The hashtype of both signatures on a re-anchor's input 0 (docs/design/reanchoring.md,
    # 3 and 8): it must commit to every input and output, so that R's txid, and with it the
    # next contract's outpoint, is fixed once the server signs.
    reanchor_hashtype: ClassVar[int] = SIGHASH_ALL
    # Whether a re-anchor signature commits to the outputs R's other inputs spend (BIP341:
    # every spent amount and script), which the signer must then be told.
    reanchor_needs_spent: ClassVar[bool] = False

    def __init__(self, contract: Contract) -> None:
        self.contract = contract

    # -- scripts -----------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def locking_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        """The script the channel's signatures commit to."""

    @classmethod
    @abc.abstractmethod
    def output_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        """The scriptPubKey of contract output 0."""

    @classmethod
    @abc.abstractmethod
    def change_script(cls, client_pub: bytes) -> bytes:
        """Where the client's change and refund go: its contract key's own output."""

    @cached_property
    def change_output(self) -> bytes:
        """The change output after its value: the length-prefixed change script."""
        script = self.contract.change_script
        return encode_varint(len(script)) + script

    # -- signature hashes --------------------------------------------------------------------

    @abc.abstractmethod
    def sighash(self, tx: Transaction, hashtype: int, branch: Branch,
                spent: tuple[TxOut, ...] = ()) -> bytes:
        """The digest a signature on input 0 of `tx` (spending contract:0) commits to.
        `spent`: the outputs inputs 1.. spend, for a kind whose hash commits to them."""

    @abc.abstractmethod
    def payment_sighash(self, change: int, hashtype: int) -> bytes:
        """`sighash` of the payment tx leaving the client `change`, hashed on from the
        channel's constant prefix (computed once)."""

    # -- unlocking ---------------------------------------------------------------------------

    def signers(self, branch: Branch) -> tuple[PublicKey, ...]:
        """Whose signatures a spend on `branch` carries, in the order `unlock` takes them."""
        both = (self.contract.client_key, self.contract.server_key)
        if branch is Branch.COOPERATIVE or self.capabilities.presigned_refund:
            return both
        return both[:1]

    @abc.abstractmethod
    def unlock(self, tx: Transaction, sigs: list[bytes], branch: Branch) -> Transaction:
        """`tx` with input 0 unlocking contract:0 on `branch` (`sigs` as `signers` orders)."""

    @abc.abstractmethod
    def unlocking(self, tx: Transaction) -> tuple[list[bytes], Branch]:
        """The signatures input 0 of `tx` carries and its branch; DecodeError if it is not
        shaped as this kind's spend."""

    @property
    def branches(self) -> tuple[Branch, ...]:
        """The branches a spend of this kind's contract may take."""
        key_path = (Branch.KEY_PATH,) if self.capabilities.key_path_close else ()
        return (Branch.COOPERATIVE, Branch.REFUND, *key_path)

    # -- the cooperative key-path close (capabilities.key_path_close) ------------------------
    # One MuSig2 session, in which the signature completing the settlement is made by the
    # server alone and last: the client's nonce (close_nonce); the server's public nonce for
    # the unsigned settlement (server_close_nonce: BIP327 DeterministicSign's, so the server
    # keeps no nonce and never sends a partial signature); the client's partial signature
    # (sign_close); the server's own, derived again, and the aggregate (complete_close).
    # A bad contribution raises MusigError, naming whose and what.

    def close_nonce(self, key: PrivateKey) -> tuple[SecretNonce, bytes]:
        """The client's secret nonce (kept in memory only, signs once) and public nonce."""
        raise self._no_key_path()

    def server_close_nonce(self, key: PrivateKey, client_nonce: bytes, tx: Transaction
                           ) -> bytes:
        """The server's public nonce for `tx`'s key-path spend (its partial signature stays
        with the server until `complete_close`)."""
        raise self._no_key_path()

    def sign_close(self, key: PrivateKey, secnonce: SecretNonce, client_nonce: bytes,
                   server_nonce: bytes, tx: Transaction) -> bytes:
        """The client's partial signature of `tx` (its nonce spent)."""
        raise self._no_key_path()

    def complete_close(self, key: PrivateKey, tx: Transaction, client_nonce: bytes,
                       client_signature: bytes) -> Transaction:
        """`tx` signed by the aggregate key: the client's partial signature checked, the
        server's derived again and added, the result checked against the output key."""
        raise self._no_key_path()

    def _no_key_path(self) -> LocalProtocolError:
        return LocalProtocolError(f"a version {self.version} contract has no key-path close")

    def input_weight(self, branch: Branch) -> int:
        """The weight of input 0 unlocked on `branch` with the largest signatures (a wallet
        funding the rest of the transaction adds it to its own)."""
        draft = Transaction(1, (TxIn(self.contract.outpoint, b"", FINAL),), (), 0)
        sigs = [bytes(self.scheme.max_size)] * len(self.signers(branch))
        signed = self.unlock(draft, sigs, branch)
        stripped = len(signed.serialize(include_witness=False))
        script_sig = stripped - len(draft.serialize(include_witness=False))
        return 4 * (41 + script_sig) + signed.weight - 4 * stripped  # 41: outpoint, sequence

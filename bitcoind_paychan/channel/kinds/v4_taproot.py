"""Version 4 (ours): a P2TR output whose internal key is the MuSig2 aggregate (BIP327 KeyAgg)
of key_sort([client, server]), with two leaves (BIP342 tapscript, x-only keys):

    payment: <server> OP_CHECKSIGVERIFY <client> OP_CHECKSIG
    refund:  <expiry> OP_CHECKLOCKTIMEVERIFY OP_DROP <client> OP_CHECKSIG

Payments are the client's BIP340 signature on the payment leaf (SIGHASH_SINGLE|ANYONECANPAY,
NONE|ANYONECANPAY without change), so the server settles alone through that leaf by adding its
own; the client refunds alone through the refund leaf after the expiry. The signature that
completes a spend is ALL|ANYONECANPAY: BIP341 hashes commit to every spent amount under
SIGHASH_ALL, and a settlement the server's wallet funds has inputs the kind does not know.
Change and refunds go to the client key's P2WPKH (a wallet imports it as it does v3's).
A re-anchor (docs/design/reanchoring.md, 8) is signed by both on the payment leaf with
SIGHASH_DEFAULT, over every input's spent output: its txid is fixed once the server signs.
"""

from __future__ import annotations

import hashlib
import struct
from functools import cached_property, lru_cache

from bitcoind_paychan.bitcoin import musig2
from bitcoind_paychan.bitcoin.hashes import hash160, sha256, tagged_state
from bitcoind_paychan.bitcoin.keys import PrivateKey, PublicKey, XOnlyKey
from bitcoind_paychan.bitcoin.script import (
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKSIG,
    OP_CHECKSIGVERIFY,
    OP_DROP,
    p2wpkh_script,
    push,
    push_int,
)
from bitcoind_paychan.bitcoin.sighash import (
    NO_CODESEPARATOR,
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_DEFAULT,
    TAPROOT_HASHTYPES,
    taproot_sighash,
)
from bitcoind_paychan.bitcoin.taproot import TapLeaf, Taproot, tap_tweak
from bitcoind_paychan.bitcoin.tx import Transaction, TxOut
from bitcoind_paychan.channel.kinds.base import (
    EXHAUSTED_HASHTYPE,
    FINAL,
    PAYMENT_HASHTYPE,
    Branch,
    Capabilities,
    ContractKind,
    SignatureScheme,
)
from bitcoind_paychan.errors import (
    DecodeError,
    InvalidContribution,
    LocalProtocolError,
    MusigError,
)

_U32, _I64 = struct.Struct("<I"), struct.Struct("<q")
_SCRIPT_PATH = b"\x02"  # BIP341 spend type: script path, no annex
_KEY_VERSION_0 = b"\x00"  # BIP342's key version of tapscript


@lru_cache(maxsize=4096)
def _xonly(pub: bytes) -> XOnlyKey:
    """The x-only key of a compressed key, parsed once (a channel verifies many payments)."""
    return XOnlyKey(pub[1:])


class Schnorr(SignatureScheme):
    """BIP340 signatures as tapscript carries them: 64 bytes for SIGHASH_DEFAULT, else 64
    bytes and the hashtype."""

    canonical_form = "a 64-byte BIP340 signature"
    max_size = 65

    def sign(self, key: PrivateKey, digest: bytes, hashtype: int) -> bytes:
        signature = key.sign_schnorr(digest)
        return signature if hashtype == SIGHASH_DEFAULT else signature + bytes((hashtype,))

    def split(self, signature: bytes) -> tuple[bytes, int]:
        if len(signature) == 64:
            return signature, SIGHASH_DEFAULT
        if len(signature) != 65:
            raise DecodeError(f"a Schnorr signature is 64 or 65 bytes, not {len(signature)}")
        hashtype = signature[64]
        if hashtype == SIGHASH_DEFAULT or hashtype not in TAPROOT_HASHTYPES:
            raise DecodeError(f"hashtype {hashtype:#x} is not one a 65-byte Taproot signature "
                              "may carry")
        return signature[:64], hashtype

    def canonical(self, body: bytes) -> bool:
        return len(body) == 64

    def verify(self, key: PublicKey, digest: bytes, body: bytes) -> bool:
        return _xonly(key.data).verify_schnorr(digest, body)


def payment_leaf(client_pub: bytes, server_pub: bytes) -> TapLeaf:
    """Both keys: the payments, and the server's forced settlement."""
    return TapLeaf(push(server_pub[1:]) + bytes((OP_CHECKSIGVERIFY,)) + push(client_pub[1:])
                   + bytes((OP_CHECKSIG,)))


def refund_leaf(client_pub: bytes, expiry: int) -> TapLeaf:
    """The client alone, once the lock time has reached `expiry`."""
    return TapLeaf(push_int(expiry) + bytes((OP_CHECKLOCKTIMEVERIFY, OP_DROP))
                   + push(client_pub[1:]) + bytes((OP_CHECKSIG,)))


def aggregate_keys(client_pub: bytes, server_pub: bytes) -> list[bytes]:
    """Both keys in MuSig2's (BIP327 key_sort) order: KeyAgg's, and every session's."""
    return musig2.key_sort([client_pub, server_pub])


@lru_cache(maxsize=4096)
def taproot_output(client_pub: bytes, server_pub: bytes, expiry: int) -> Taproot:
    """The contract's output: the keys' MuSig2 aggregate over the payment and refund leaves."""
    internal = musig2.key_agg(aggregate_keys(client_pub, server_pub)).xonly_pk()
    tree = (payment_leaf(client_pub, server_pub), refund_leaf(client_pub, expiry))
    return Taproot(XOnlyKey(internal), tree)


class TaprootChannel(ContractKind):
    version = 4
    title = "Taproot: a MuSig2 key with payment and refund leaves"
    capabilities = Capabilities(segwit_funding_required=True, resume_challenge=True,
                                reanchoring=True, key_path_close=True)
    scheme = Schnorr()
    final_hashtype = SIGHASH_ALL | SIGHASH_ANYONECANPAY
    # A re-anchor is signed by both on the payment leaf with SIGHASH_DEFAULT, which commits
    # to every input (outpoint, amount, script) and output: ALL|ANYONECANPAY would let a
    # client add an input to a complete R, changing its txid and with it C''s outpoint, so
    # voiding every payment the server holds on C' (docs/design/reanchoring.md, 8).
    reanchor_hashtype = SIGHASH_DEFAULT
    reanchor_needs_spent = True

    @classmethod
    def locking_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return payment_leaf(client_pub, server_pub).script

    @classmethod
    def output_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return taproot_output(client_pub, server_pub, expiry).script_pubkey

    @classmethod
    def change_script(cls, client_pub: bytes) -> bytes:
        return p2wpkh_script(hash160(client_pub))

    # -- the output and its leaves -----------------------------------------------------------

    @cached_property
    def output(self) -> Taproot:
        c = self.contract
        return taproot_output(c.client_pub, c.server_pub, c.expiry)

    @cached_property
    def _leaves(self) -> dict[Branch, tuple[TapLeaf, bytes]]:
        """Each script branch's leaf and control block."""
        c = self.contract
        leaves = {Branch.COOPERATIVE: payment_leaf(c.client_pub, c.server_pub),
                  Branch.REFUND: refund_leaf(c.client_pub, c.expiry)}
        return {branch: (leaf, self.output.control_block(leaf))
                for branch, leaf in leaves.items()}

    @cached_property
    def _spent(self) -> TxOut:
        """Contract output 0, which BIP341 hashes commit to."""
        return TxOut(self.contract.value, self.contract.script_pubkey)

    # -- signature hashes --------------------------------------------------------------------

    def sighash(self, tx: Transaction, hashtype: int, branch: Branch,
                spent: tuple[TxOut, ...] = ()) -> bytes:
        if not hashtype & SIGHASH_ANYONECANPAY and len(spent) != len(tx.inputs) - 1:
            raise LocalProtocolError(
                f"a Taproot signature with hashtype {hashtype:#x} commits to every input's "
                f"amount and script: {len(tx.inputs) - 1} inputs besides the contract, "
                f"{len(spent)} spent outputs known (name them, or sign with ANYONECANPAY)")
        leaf = None if branch is Branch.KEY_PATH else self._leaves[branch][0].hash
        amounts = (self._spent,) if hashtype & SIGHASH_ANYONECANPAY else (self._spent, *spent)
        return taproot_sighash(tx, 0, amounts, hashtype, leaf)

    @cached_property
    def _payment_midstates(self) -> dict[int, hashlib._Hash]:
        """For each payment hashtype, TapSighash's state over what every payment's message
        starts with: the epoch, hashtype, version, lock time 0, spend type, outpoint, contract
        output and sequence (ANYONECANPAY, SINGLE or NONE: no other input, no other output)."""
        head = (_SCRIPT_PATH + self.contract.outpoint.serialize() + self._spent.serialize()
                + _U32.pack(FINAL))
        states = {}
        for hashtype in (PAYMENT_HASHTYPE, EXHAUSTED_HASHTYPE):
            state = tagged_state("TapSighash")
            state.update(b"\x00" + bytes((hashtype,)) + _U32.pack(1) + _U32.pack(0) + head)
            states[hashtype] = state
        return states

    @cached_property
    def _payment_suffix(self) -> bytes:
        """What ends every payment's message: the payment leaf, key version, no separator."""
        leaf = self._leaves[Branch.COOPERATIVE][0]
        return leaf.hash + _KEY_VERSION_0 + _U32.pack(NO_CODESEPARATOR)

    def payment_sighash(self, change: int, hashtype: int) -> bytes:
        state = self._payment_midstates[hashtype].copy()
        if change:  # SINGLE: the change output's hash
            state.update(sha256(_I64.pack(change) + self.change_output))
        state.update(self._payment_suffix)
        return state.digest()

    # -- unlocking ---------------------------------------------------------------------------

    def signers(self, branch: Branch) -> tuple[PublicKey, ...]:
        if branch is Branch.KEY_PATH:  # the output key, as the even-Y point BIP340 means
            return (PublicKey(b"\x02" + self.output.output_key.data),)
        return super().signers(branch)

    def unlock(self, tx: Transaction, sigs: list[bytes], branch: Branch) -> Transaction:
        if branch is Branch.KEY_PATH:
            return tx.with_witness(0, tuple(sigs))
        leaf, control = self._leaves[branch]
        # The client's signature sits below the server's, which <server> OP_CHECKSIGVERIFY
        # takes first from the top of the stack.
        return tx.with_witness(0, (*sigs, leaf.script, control))

    def unlocking(self, tx: Transaction) -> tuple[list[bytes], Branch]:
        witness = tx.inputs[0].witness
        if len(witness) == 1:
            return list(witness), Branch.KEY_PATH
        if not witness:
            raise DecodeError("input 0 has no witness")
        *sigs, script, control = witness
        for branch, (leaf, expected) in self._leaves.items():
            if (script, control) == (leaf.script, expected):
                if len(sigs) != len(self.signers(branch)):
                    raise DecodeError(f"{len(sigs)} signatures on the {branch.value} leaf")
                return list(sigs), branch
        raise DecodeError("the witness spends neither the contract's payment leaf nor its "
                          "refund leaf")

    # -- the cooperative key-path close ------------------------------------------------------

    @cached_property
    def _session_keys(self) -> tuple[list[bytes], list[bytes], list[bool]]:
        """KeyAgg's keys, and the TapTweak (x-only) that makes their aggregate the output key."""
        c, output = self.contract, self.output
        return (aggregate_keys(c.client_pub, c.server_pub),
                [tap_tweak(output.internal, output.merkle_root)], [True])

    def _close_digest(self, tx: Transaction) -> bytes:
        """What the aggregate key signs: `tx` (contract:0 its one input), SIGHASH_DEFAULT."""
        if len(tx.inputs) != 1:
            raise MusigError(f"a key-path close spends the contract alone, not "
                             f"{len(tx.inputs)} inputs")
        return self.sighash(tx, SIGHASH_DEFAULT, Branch.KEY_PATH)

    def _session(self, tx: Transaction, nonces: list[bytes]) -> musig2.SessionContext:
        keys, tweaks, xonly = self._session_keys
        return musig2.SessionContext(musig2.nonce_agg(nonces), keys, tweaks, xonly,
                                     self._close_digest(tx))

    def _signer(self, pub: bytes) -> int:
        return self._session_keys[0].index(pub)

    def close_nonce(self, key: PrivateKey) -> tuple[musig2.SecretNonce, bytes]:
        return musig2.nonce_gen(key.secret, key.pub.data, self.output.output_key.data)

    def _server_nonce(self, key: PrivateKey, client_nonce: bytes, tx: Transaction
                      ) -> tuple[musig2.SecretNonce, bytes]:
        """The server's nonce for `tx`, BIP327 DeterministicSign's: the same every time."""
        keys, tweaks, xonly = self._session_keys
        try:
            other = musig2.nonce_agg([client_nonce])
        except InvalidContribution:
            raise InvalidContribution(self._signer(self.contract.client_pub),
                                      "pubnonce") from None
        return musig2.deterministic_nonce(key.secret, other, keys, tweaks, xonly,
                                          self._close_digest(tx))

    def server_close_nonce(self, key: PrivateKey, client_nonce: bytes, tx: Transaction
                           ) -> bytes:
        return self._server_nonce(key, client_nonce, tx)[1]

    def sign_close(self, key: PrivateKey, secnonce: musig2.SecretNonce, client_nonce: bytes,
                   server_nonce: bytes, tx: Transaction) -> bytes:
        return musig2.sign(secnonce, key.secret, self._session(tx, [client_nonce, server_nonce]))

    def complete_close(self, key: PrivateKey, tx: Transaction, client_nonce: bytes,
                       client_signature: bytes) -> Transaction:
        secnonce, server_nonce = self._server_nonce(key, client_nonce, tx)
        session = self._session(tx, [client_nonce, server_nonce])
        client = self.contract.client_pub
        if not musig2.partial_sig_verify_internal(client_signature, client_nonce, client,
                                                  session):
            raise InvalidContribution(self._signer(client), "psig")
        server_signature = musig2.sign(secnonce, key.secret, session)
        signature = musig2.partial_sig_agg([client_signature, server_signature], session)
        if not self.output.output_key.verify_schnorr(session.msg, signature):
            raise MusigError("the aggregate signature does not verify for the output key")
        return self.unlock(tx, [signature], Branch.KEY_PATH)

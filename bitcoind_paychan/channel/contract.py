"""The three contract kinds and every transaction built on them (pure, no I/O).

- version 1: bare 2-of-2 `OP_2 <client> <server> OP_2 OP_CHECKMULTISIG`, legacy sighashes;
  the client's refund is pre-signed by the server (SIGHASH_NONE|ANYONECANPAY).
- version 2: bitcoinj's CLTV script in P2SH, legacy sighashes; the client refunds alone.
- version 3: the same script in P2WSH, BIP143 sighashes (amount-committing, non-malleable).

A payment is the client's signature (SIGHASH_SINGLE|ANYONECANPAY, or NONE|ANYONECANPAY when it
keeps no change) on a tx spending contract:0 that returns `change` to the client as output 0.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import cached_property

from bitcoind_paychan.bitcoin.hashes import hash160, hash256, sha256
from bitcoind_paychan.bitcoin.keys import (
    PrivateKey,
    PublicKey,
    append_hashtype,
    is_low_s,
    split_sig_hashtype,
)
from bitcoind_paychan.bitcoin.script import (
    OP_0,
    OP_1,
    cltv_channel_script,
    iter_script,
    multisig_2of2_script,
    p2pkh_script,
    p2sh_script,
    p2wpkh_script,
    p2wsh_script,
    push,
)
from bitcoind_paychan.bitcoin.sighash import (
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    bip143_sighash,
    legacy_sighash,
)
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut, encode_varint
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

VERSIONS = (1, 2, 3)
DUST = 546  # change below this is paid to the server instead (bitcoinj's rule)
V1_REFUND_FEE = 1000  # bitcoinj's fixed fee for the pre-signed v1 refund
FINAL = 0xFFFFFFFF
_U32, _I64 = struct.Struct("<I"), struct.Struct("<q")
NON_FINAL = 0xFFFFFFFE  # lets nLockTime apply
PAYMENT_HASHTYPE = SIGHASH_SINGLE | SIGHASH_ANYONECANPAY
EXHAUSTED_HASHTYPE = SIGHASH_NONE | SIGHASH_ANYONECANPAY
REFUND_SERVER_HASHTYPE = SIGHASH_NONE | SIGHASH_ANYONECANPAY
MAX_SIG = 73  # DER + hashtype, for fee estimation
LOCKTIME_THRESHOLD = 500_000_000  # lock times below are heights, above unix times


def bad_tx(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.BAD_TRANSACTION)


def payment_hashtype(change: int) -> int:
    return PAYMENT_HASHTYPE if change else EXHAUSTED_HASHTYPE


def round_change(change: int) -> int:
    """Change the client keeps; below dust it is given to the server."""
    return 0 if change < DUST else change


def locking_script(version: int, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
    """The script the channel's signatures commit to (bare script, redeem or witness script)."""
    if version == 1:
        return multisig_2of2_script(client_pub, server_pub)
    if version in (2, 3):
        return cltv_channel_script(server_pub, client_pub, expiry)
    raise LocalProtocolError(f"unknown channel version {version}")


def output_script(version: int, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
    """The scriptPubKey of contract output 0."""
    script = locking_script(version, client_pub, server_pub, expiry)
    if version == 1:
        return script
    if version == 2:
        return p2sh_script(hash160(script))
    return p2wsh_script(sha256(script))


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
    def script(self) -> bytes:
        return locking_script(self.version, self.client_pub, self.server_pub, self.expiry)

    @cached_property
    def script_pubkey(self) -> bytes:
        return output_script(self.version, self.client_pub, self.server_pub, self.expiry)

    @cached_property
    def client_key(self) -> PublicKey:
        return PublicKey(self.client_pub)

    @cached_property
    def server_key(self) -> PublicKey:
        return PublicKey(self.server_pub)

    @cached_property
    def change_script(self) -> bytes:
        """Where the client's change (and refund) goes: its contract key, P2PKH or P2WPKH."""
        key_hash = hash160(self.client_pub)
        return p2wpkh_script(key_hash) if self.version == 3 else p2pkh_script(key_hash)

    @property
    def txid(self) -> str:
        return self.outpoint.txid_hex

    def sighash(self, tx: Transaction, hashtype: int) -> bytes:
        """The digest a signature on input 0 of `tx` (spending this contract) commits to."""
        if self.version == 3:
            return bip143_sighash(tx, 0, self.script, self.value, hashtype)
        return legacy_sighash(tx, 0, self.script, hashtype)

    # -- payments --------------------------------------------------------------------------

    @cached_property
    def _payment_midstate(self) -> hashlib._Hash:
        """SHA-256 over what every payment's preimage starts with, the same for all of them:
        legacy (v1, v2): version, one input (outpoint, script code, sequence); BIP143 (v3):
        version, no prevouts or sequences hash (ANYONECANPAY), outpoint, script code, amount,
        sequence. A payment hashes on from a copy of it."""
        script = encode_varint(len(self.script)) + self.script
        outpoint = self.outpoint.serialize()
        if self.version == 3:
            head = [_U32.pack(1), bytes(64), outpoint, script, _I64.pack(self.value)]
        else:
            head = [_U32.pack(1), b"\x01", outpoint, script]
        return hashlib.sha256(b"".join(head) + _U32.pack(FINAL))

    @cached_property
    def _change_output_script(self) -> bytes:
        """The change output after its value: the length-prefixed change script."""
        return encode_varint(len(self.change_script)) + self.change_script

    def payment_sighash(self, change: int) -> bytes:
        """The digest a payment leaving the client `change` signs: `sighash` of `payment_tx`,
        hashed on from the channel's midstate (the preimage's constant head)."""
        hashtype = payment_hashtype(change)
        if self.version == 3:
            outputs = (hash256(_I64.pack(change) + self._change_output_script) if change
                       else bytes(32))
        else:  # SINGLE: one output, the change; NONE: no outputs
            outputs = (b"\x01" + _I64.pack(change) + self._change_output_script if change
                       else b"\x00")
        state = self._payment_midstate.copy()
        state.update(outputs + _U32.pack(0) + _U32.pack(hashtype))  # lock time 0, hashtype
        return hashlib.sha256(state.digest()).digest()

    def payment_tx(self, change: int) -> Transaction:
        """The unsigned tx a payment signs: contract:0 → `change` back to the client."""
        outputs = (TxOut(change, self.change_script),) if change else ()
        return Transaction(1, (TxIn(self.outpoint, b"", FINAL),), outputs, 0)

    def sign_payment(self, key: PrivateKey, change: int) -> bytes:
        """The client's payment signature (DER + hashtype) leaving it `change`."""
        hashtype = payment_hashtype(change)
        return append_hashtype(key.sign(self.payment_sighash(change)), hashtype)

    def check_payment(self, change: int, signature: bytes) -> None:
        """Raise RemoteProtocolError unless `signature` is the client's valid payment leaving it
        `change`, with exactly the hashtype the protocol prescribes."""
        if change > self.value:
            raise bad_tx(f"change {change} exceeds the channel value {self.value}")
        if 0 < change < DUST:
            raise bad_tx(f"change {change} is dust (below {DUST}); send 0 instead")
        der, hashtype = split_sig_hashtype(signature)
        if hashtype != payment_hashtype(change):
            raise bad_tx(f"payment signed with hashtype {hashtype:#x}, "
                         f"expected {payment_hashtype(change):#x}")
        if not is_low_s(der):
            raise bad_tx("payment signature is not canonical low-S DER")
        if not self.client_key.verify_low_s(self.payment_sighash(change), der):
            raise bad_tx("payment signature does not verify against the contract")

    # -- settlement (server) ---------------------------------------------------------------

    def settlement_draft(self, change: int, share: int, payout_script: bytes) -> Transaction:
        """The unsigned settlement: the best payment's tx plus the server's output."""
        base = self.payment_tx(change)
        return Transaction(1, base.inputs, (*base.outputs, TxOut(share, payout_script)), 0)

    def settlement_fee(self, change: int, payout_script: bytes, fee_rate: int) -> int:
        """The fee (sat) a settlement without extra inputs pays at `fee_rate` sat/kvB."""
        draft = self.settlement_draft(change, 0, payout_script)
        return -(-fee_rate * self.sign_settlement(draft, bytes(MAX_SIG), None).vsize // 1000)

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
        signed by both sides: the server signs SIGHASH_ALL over every input and output, so
        any wallet inputs and outputs must already be in place. `server_key` None makes a
        worst-case-size dummy, for fee estimates."""
        server_sig = (append_hashtype(server_key.sign(self.sighash(tx, SIGHASH_ALL)), SIGHASH_ALL)
                      if server_key else bytes(MAX_SIG))
        return self.with_spend(tx, [client_sig, server_sig], cooperative=True)

    def spend_weight(self) -> int:
        """Weight of input 0 once signed cooperatively (for a wallet funding the rest)."""
        draft = self.settlement_draft(0, 0, b"")
        signed = self.sign_settlement(draft, bytes(MAX_SIG), None)
        bare = len(draft.serialize())  # both without witness; the scriptSig is the difference
        witness = signed.weight - 4 * len(signed.serialize(include_witness=False))
        return 4 * (41 + len(signed.serialize(include_witness=False)) - bare) + witness

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
        """The client's fully signed refund (v1 needs the server's signature too)."""
        client_sig = append_hashtype(key.sign(self.sighash(refund, SIGHASH_ALL)), SIGHASH_ALL)
        if self.version == 1:
            if server_sig is None:
                raise LocalProtocolError("a version 1 refund needs the server's signature")
            return self.with_spend(refund, [client_sig, server_sig], cooperative=True)
        return self.with_spend(refund, [client_sig], cooperative=False)

    def refund_fee(self, fee_rate: int) -> int:
        """The fee a refund pays at `fee_rate` sat/kvB (sized with worst-case signatures)."""
        v1 = self.version == 1
        draft = self.with_spend(self.refund_tx(0), [bytes(MAX_SIG)] * (2 if v1 else 1),
                                cooperative=v1)
        return max(-(-fee_rate * draft.vsize // 1000), 1)

    def refund(self, key: PrivateKey, fee_rate: int, signed_v1_refund: bytes | None = None
               ) -> Transaction:
        """A signed refund paying `fee_rate`. Version 1 reuses the server's NONE|ANYONECANPAY
        signature from the refund signed at opening: it commits to no output, so the client
        may choose the fee again."""
        refund = self.refund_tx(self.refund_fee(fee_rate))
        if self.version != 1:
            return self.sign_refund(key, refund)
        if signed_v1_refund is None:
            raise LocalProtocolError("a version 1 refund needs the refund the server signed at "
                                     "opening, and none is stored for this channel")
        pushes = [data for _, data in iter_script(Transaction.parse(signed_v1_refund)
                                                  .inputs[0].script_sig)]
        return self.sign_refund(key, refund, pushes[-1])

    def sign_refund_as_server(self, key: PrivateKey, refund: Transaction) -> bytes:
        return append_hashtype(key.sign(self.sighash(refund, REFUND_SERVER_HASHTYPE)),
                               REFUND_SERVER_HASHTYPE)

    def check_server_refund_signature(self, refund: Transaction, signature: bytes) -> None:
        der, hashtype = split_sig_hashtype(signature)
        if hashtype != REFUND_SERVER_HASHTYPE:
            raise bad_tx(f"refund signed with hashtype {hashtype:#x}, expected NONE|ANYONECANPAY")
        if not self.server_key.verify(self.sighash(refund, hashtype), der):
            raise bad_tx("the server's refund signature does not verify")

    # -- scripts ---------------------------------------------------------------------------

    def with_spend(self, tx: Transaction, sigs: list[bytes], cooperative: bool) -> Transaction:
        """`tx` with input 0 unlocking the contract: cooperative = client and server sigs
        (payment/settlement), else the client's refund path."""
        if self.version == 1:
            return tx.with_script_sig(0, bytes((OP_0,)) + b"".join(push(s) for s in sigs))
        branch = b"\x01" if cooperative else b""
        if self.version == 2:
            # bitcoinj pushes the refund branch's false as one 0x00 byte, not OP_0.
            selector = bytes((OP_1,)) if cooperative else push(b"\x00")
            return tx.with_script_sig(0, b"".join(push(s) for s in sigs) + selector
                                      + push(self.script))
        return tx.with_witness(0, (*sigs, branch, self.script))


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

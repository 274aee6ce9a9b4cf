"""Version 1: bitcoinj's 2013 channel. A bare 2-of-2 `OP_2 <client> <server> OP_2
OP_CHECKMULTISIG`, legacy sighashes; the client's refund is pre-signed by the server at
opening (SIGHASH_NONE|ANYONECANPAY) with bitcoinj's fixed fee. Knots does not relay bare
multisig outputs; our client never offers it unasked."""

from __future__ import annotations

from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.script import (
    OP_0,
    iter_script,
    multisig_2of2_script,
    p2pkh_script,
    push,
)
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.kinds.base import Branch, Capabilities
from bitcoind_paychan.channel.kinds.legacy import LegacyKind
from bitcoind_paychan.errors import DecodeError


class BareMultisig(LegacyKind):
    version = 1
    title = "bitcoinj's 2013 multisig + pre-signed refund"
    capabilities = Capabilities(presigned_refund=True)
    offered = False
    presigned_refund_fee = 1000  # bitcoinj's fixed fee for the refund signed at opening

    @classmethod
    def locking_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return multisig_2of2_script(client_pub, server_pub)  # the expiry is in the refund only

    @classmethod
    def output_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return cls.locking_script(client_pub, server_pub, expiry)

    @classmethod
    def change_script(cls, client_pub: bytes) -> bytes:
        return p2pkh_script(hash160(client_pub))

    def unlock(self, tx: Transaction, sigs: list[bytes], branch: Branch) -> Transaction:
        # Both keys on either branch; OP_0 for CHECKMULTISIG's extra pop.
        return tx.with_script_sig(0, bytes((OP_0,)) + b"".join(push(s) for s in sigs))

    def unlocking(self, tx: Transaction) -> tuple[list[bytes], Branch]:
        pushes = list(iter_script(tx.inputs[0].script_sig))
        if not pushes or pushes[0][0] != OP_0:
            raise DecodeError("a 2-of-2 multisig spend starts with OP_0")
        return [data or b"" for _, data in pushes[1:]], Branch.COOPERATIVE

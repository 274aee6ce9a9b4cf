"""Version 2: bitcoinj's CLTV channel script in P2SH, legacy sighashes; the client refunds
alone after the expiry.

    OP_IF <server> OP_CHECKSIGVERIFY OP_ELSE <expiry> OP_CHECKLOCKTIMEVERIFY OP_DROP OP_ENDIF
    <client> OP_CHECKSIG
"""

from __future__ import annotations

from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.script import (
    OP_1,
    cltv_channel_script,
    iter_script,
    p2pkh_script,
    p2sh_script,
    push,
)
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.kinds.base import Branch, Capabilities
from bitcoind_paychan.channel.kinds.legacy import LegacyKind
from bitcoind_paychan.errors import DecodeError

# bitcoinj pushes the refund branch's false as one 0x00 byte, not OP_0.
_REFUND_SELECTOR = push(b"\x00")


class P2SHChannel(LegacyKind):
    version = 2
    title = "bitcoinj's CLTV script in P2SH"
    capabilities = Capabilities()

    @classmethod
    def locking_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return cltv_channel_script(server_pub, client_pub, expiry)

    @classmethod
    def output_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return p2sh_script(hash160(cls.locking_script(client_pub, server_pub, expiry)))

    @classmethod
    def change_script(cls, client_pub: bytes) -> bytes:
        return p2pkh_script(hash160(client_pub))

    def unlock(self, tx: Transaction, sigs: list[bytes], branch: Branch) -> Transaction:
        selector = bytes((OP_1,)) if branch is Branch.COOPERATIVE else _REFUND_SELECTOR
        return tx.with_script_sig(0, b"".join(push(s) for s in sigs) + selector
                                  + push(self.contract.script))

    def unlocking(self, tx: Transaction) -> tuple[list[bytes], Branch]:
        *sig_pushes, (selector_op, selector), (_, redeem) = iter_script(tx.inputs[0].script_sig)
        if redeem != self.contract.script:
            raise DecodeError("redeem script is not the contract's")
        cooperative = selector is None and selector_op == OP_1
        return ([data or b"" for _, data in sig_pushes],
                Branch.COOPERATIVE if cooperative else Branch.REFUND)

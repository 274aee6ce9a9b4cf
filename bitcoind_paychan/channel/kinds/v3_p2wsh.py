"""Version 3 (ours): the CLTV channel script in P2WSH, BIP143 sighashes (they commit to the
amount, and the txid is not malleable); change and refunds to P2WPKH. Contracts spend native
segwit coins only, and a resume proves its key against the server's challenge."""

from __future__ import annotations

import hashlib
import struct
from functools import cached_property

from bitcoind_paychan.bitcoin.hashes import hash160, hash256, sha256
from bitcoind_paychan.bitcoin.script import cltv_channel_script, p2wpkh_script, p2wsh_script
from bitcoind_paychan.bitcoin.sighash import bip143_sighash
from bitcoind_paychan.bitcoin.tx import Transaction, TxOut, encode_varint
from bitcoind_paychan.channel.kinds.base import ECDSA, FINAL, Branch, Capabilities, ContractKind
from bitcoind_paychan.errors import DecodeError

_U32, _I64 = struct.Struct("<I"), struct.Struct("<q")
_BRANCH = {Branch.COOPERATIVE: b"\x01", Branch.REFUND: b""}


class P2WSHChannel(ContractKind):
    version = 3
    title = "the CLTV script in P2WSH (segwit)"
    capabilities = Capabilities(segwit_funding_required=True, resume_challenge=True,
                                reanchoring=True)
    scheme = ECDSA()

    @classmethod
    def locking_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return cltv_channel_script(server_pub, client_pub, expiry)

    @classmethod
    def output_script(cls, client_pub: bytes, server_pub: bytes, expiry: int) -> bytes:
        return p2wsh_script(sha256(cls.locking_script(client_pub, server_pub, expiry)))

    @classmethod
    def change_script(cls, client_pub: bytes) -> bytes:
        return p2wpkh_script(hash160(client_pub))

    def sighash(self, tx: Transaction, hashtype: int, branch: Branch,
                spent: tuple[TxOut, ...] = ()) -> bytes:
        return bip143_sighash(tx, 0, self.contract.script, self.contract.value, hashtype)

    @cached_property
    def _payment_midstate(self) -> hashlib._Hash:
        """SHA-256 over what every payment's BIP143 preimage starts with: version, no
        prevouts or sequences hash (ANYONECANPAY), outpoint, script code, amount, sequence."""
        contract = self.contract
        script = encode_varint(len(contract.script)) + contract.script
        head = (_U32.pack(1), bytes(64), contract.outpoint.serialize(), script,
                _I64.pack(contract.value), _U32.pack(FINAL))
        return hashlib.sha256(b"".join(head))

    def payment_sighash(self, change: int, hashtype: int) -> bytes:
        # hashOutputs: SINGLE hashes the change output; NONE commits to none.
        outputs = hash256(_I64.pack(change) + self.change_output) if change else bytes(32)
        state = self._payment_midstate.copy()
        state.update(outputs + _U32.pack(0) + _U32.pack(hashtype))
        return hashlib.sha256(state.digest()).digest()

    def unlock(self, tx: Transaction, sigs: list[bytes], branch: Branch) -> Transaction:
        return tx.with_witness(0, (*sigs, _BRANCH[branch], self.contract.script))

    def unlocking(self, tx: Transaction) -> tuple[list[bytes], Branch]:
        *sigs, branch, script = tx.inputs[0].witness
        if script != self.contract.script:
            raise DecodeError("witness script is not the contract's")
        return list(sigs), Branch.COOPERATIVE if branch == b"\x01" else Branch.REFUND

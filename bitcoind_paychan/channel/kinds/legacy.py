"""The pre-segwit signature hash, shared by the bare-multisig (v1) and P2SH (v2) kinds: it
commits to the locking script but not to the amount spent."""

from __future__ import annotations

import hashlib
import struct
from functools import cached_property

from bitcoind_paychan.bitcoin.sighash import legacy_sighash
from bitcoind_paychan.bitcoin.tx import Transaction, TxOut, encode_varint
from bitcoind_paychan.channel.kinds.base import ECDSA, FINAL, Branch, ContractKind

_U32, _I64 = struct.Struct("<I"), struct.Struct("<q")


class LegacyKind(ContractKind):
    """A kind signed with ECDSA over the original signature hash."""

    scheme = ECDSA()

    def sighash(self, tx: Transaction, hashtype: int, branch: Branch,
                spent: tuple[TxOut, ...] = ()) -> bytes:
        return legacy_sighash(tx, 0, self.contract.script, hashtype)

    @cached_property
    def _payment_midstate(self) -> hashlib._Hash:
        """SHA-256 over what every payment's preimage starts with: version, one input
        (outpoint, script code, sequence). A payment hashes on from a copy of it."""
        contract = self.contract
        script = encode_varint(len(contract.script)) + contract.script
        head = (_U32.pack(1), b"\x01", contract.outpoint.serialize(), script, _U32.pack(FINAL))
        return hashlib.sha256(b"".join(head))

    def payment_sighash(self, change: int, hashtype: int) -> bytes:
        # SINGLE: one output, the change; NONE: no outputs. Then lock time 0 and the hashtype.
        outputs = b"\x01" + _I64.pack(change) + self.change_output if change else b"\x00"
        state = self._payment_midstate.copy()
        state.update(outputs + _U32.pack(0) + _U32.pack(hashtype))
        return hashlib.sha256(state.digest()).digest()

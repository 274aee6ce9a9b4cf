"""Taproot outputs (BIP341): leaf and branch hashes, the script tree's Merkle root, the
output key's tweak (TapTweak) for the public and the private key, control blocks and the
P2TR output script. Signature hashes are in sighash.py, Schnorr signatures in keys.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TypeAlias

import coincurve

from bitcoind_paychan.bitcoin.hashes import tagged_hash
from bitcoind_paychan.bitcoin.keys import CURVE_ORDER, PrivateKey, XOnlyKey
from bitcoind_paychan.bitcoin.script import p2tr_script
from bitcoind_paychan.bitcoin.tx import encode_varint

TAPSCRIPT = 0xC0  # BIP342's leaf version


@dataclass(frozen=True)
class TapLeaf:
    """One script of a tree, with its leaf version."""

    script: bytes
    leaf_version: int = TAPSCRIPT

    def __post_init__(self) -> None:
        if self.leaf_version & 1 or self.leaf_version not in range(0xFF):
            raise ValueError(f"leaf version {self.leaf_version:#x} is not even and below 0xff")

    @cached_property
    def hash(self) -> bytes:
        """TapLeaf: the leaf version and the length-prefixed script, tagged."""
        return tagged_hash("TapLeaf", bytes((self.leaf_version,)) + encode_varint(len(self.script))
                           + self.script)


TapTree: TypeAlias = "TapLeaf | tuple[TapTree, TapTree]"
"""A leaf, or a branch of two subtrees."""


def branch_hash(left: bytes, right: bytes) -> bytes:
    """TapBranch of two child hashes, in lexicographic order."""
    return tagged_hash("TapBranch", min(left, right) + max(left, right))


def tree_hash(tree: TapTree) -> tuple[bytes, list[tuple[TapLeaf, bytes]]]:
    """The tree's Merkle root, and each leaf (in tree order) with its Merkle path: the
    sibling hashes from the leaf up, concatenated, as a control block carries them."""
    if isinstance(tree, TapLeaf):
        return tree.hash, [(tree, b"")]
    (left, left_leaves), (right, right_leaves) = tree_hash(tree[0]), tree_hash(tree[1])
    leaves = [(leaf, path + right) for leaf, path in left_leaves]
    leaves += [(leaf, path + left) for leaf, path in right_leaves]
    return branch_hash(left, right), leaves


def tap_tweak(internal: XOnlyKey, merkle_root: bytes = b"") -> bytes:
    """TapTweak: the scalar that commits the output key to the internal key and the tree
    (`merkle_root` empty for a key-path-only output). ValueError in the 2^-128 case it is
    not below the curve order."""
    tweak = tagged_hash("TapTweak", internal.data + merkle_root)
    if int.from_bytes(tweak, "big") >= CURVE_ORDER:
        raise ValueError("the TapTweak is not below the curve order")
    return tweak


def output_key(internal: XOnlyKey, merkle_root: bytes = b"") -> tuple[XOnlyKey, int]:
    """The output key Q = P + tweak·G (P: the internal key with an even Y) and Q's Y parity
    (0 even, 1 odd), which a control block carries."""
    point = coincurve.PublicKeyXOnly(internal.data)
    point.tweak_add(tap_tweak(internal, merkle_root))
    return XOnlyKey(point.format()), int(point.parity)


def tweak_private_key(key: PrivateKey, merkle_root: bytes = b"") -> PrivateKey:
    """The private key of `output_key(key.xonly, merkle_root)`, for key-path signatures:
    the secret negated if its point's Y is odd, plus the tweak."""
    secret = int.from_bytes(key.secret, "big")
    if key.pub.data[0] == 3:  # odd Y: the x-only key stands for the negated point
        secret = CURVE_ORDER - secret
    tweak = int.from_bytes(tap_tweak(key.xonly, merkle_root), "big")
    return PrivateKey(((secret + tweak) % CURVE_ORDER).to_bytes(32, "big"))


@dataclass(frozen=True)
class Taproot:
    """A Taproot output: an internal key and, optionally, a script tree."""

    internal: XOnlyKey
    tree: TapTree | None = None

    @cached_property
    def _tree(self) -> tuple[bytes, list[tuple[TapLeaf, bytes]]]:
        return tree_hash(self.tree) if self.tree is not None else (b"", [])

    @property
    def merkle_root(self) -> bytes:
        """The tree's root hash; empty without a tree."""
        return self._tree[0]

    @cached_property
    def _output(self) -> tuple[XOnlyKey, int]:
        return output_key(self.internal, self.merkle_root)

    @property
    def output_key(self) -> XOnlyKey:
        return self._output[0]

    @property
    def script_pubkey(self) -> bytes:
        """OP_1 <output key>."""
        return p2tr_script(self.output_key.data)

    def control_block(self, leaf: TapLeaf) -> bytes:
        """What a script-path spend of `leaf` carries after the script: the leaf version with
        the output key's parity, the internal key, the Merkle path. ValueError if the tree
        has no such leaf."""
        for candidate, path in self._tree[1]:
            if candidate == leaf:
                return bytes((leaf.leaf_version | self._output[1],)) + self.internal.data + path
        raise ValueError("the leaf is not in this output's script tree")

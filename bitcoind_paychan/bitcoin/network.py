"""The Bitcoin networks: bitcoind chain names, address prefixes and WIF prefixes."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from bitcoind_paychan.errors import DecodeError


@dataclass(frozen=True, slots=True)
class _Params:
    label: str
    hrp: str
    p2pkh_version: int
    p2sh_version: int
    wif_prefix: int


class Network(enum.Enum):
    """A network, valued by its bitcoind chain name (getblockchaininfo's `chain`)."""

    MAINNET = "main"
    TESTNET = "test"
    TESTNET4 = "testnet4"
    SIGNET = "signet"
    REGTEST = "regtest"

    @classmethod
    def from_chain(cls, chain: str) -> Network:
        """The network bitcoind calls `chain`."""
        try:
            return cls(chain)
        except ValueError:
            known = ", ".join(n.value for n in cls)
            raise DecodeError(f"unknown chain {chain!r}; expected one of {known}") from None

    @property
    def chain(self) -> str:
        return self.value

    @property
    def label(self) -> str:
        """Human name: mainnet, testnet, testnet4, signet, regtest."""
        return _PARAMS[self].label

    @property
    def hrp(self) -> str:
        """Bech32 human-readable part of segwit addresses."""
        return _PARAMS[self].hrp

    @property
    def p2pkh_version(self) -> int:
        return _PARAMS[self].p2pkh_version

    @property
    def p2sh_version(self) -> int:
        return _PARAMS[self].p2sh_version

    @property
    def wif_prefix(self) -> int:
        return _PARAMS[self].wif_prefix

    @staticmethod
    def describe(match: Callable[[Network], bool]) -> str:
        """Labels of the networks `match` accepts, joined by '/' (or 'no known network')."""
        return "/".join(n.label for n in Network if match(n)) or "no known network"


_TEST = {"p2pkh_version": 0x6F, "p2sh_version": 0xC4, "wif_prefix": 0xEF}
_PARAMS = {
    Network.MAINNET: _Params("mainnet", "bc", 0x00, 0x05, 0x80),
    Network.TESTNET: _Params("testnet", "tb", **_TEST),
    Network.TESTNET4: _Params("testnet4", "tb", **_TEST),
    Network.SIGNET: _Params("signet", "tb", **_TEST),
    Network.REGTEST: _Params("regtest", "bcrt", **_TEST),
}

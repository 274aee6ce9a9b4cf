"""Every contract kind by version: the one place a version number means anything.

Our client offers the newest kind it `offered`s and, when a server refuses it, the next
older one (FALLBACK); servers speak every kind in VERSIONS unless their policy narrows it.
"""

from __future__ import annotations

import itertools

from bitcoind_paychan.channel.kinds.base import ContractKind
from bitcoind_paychan.channel.kinds.v1_multisig import BareMultisig
from bitcoind_paychan.channel.kinds.v2_p2sh import P2SHChannel
from bitcoind_paychan.channel.kinds.v3_p2wsh import P2WSHChannel
from bitcoind_paychan.channel.kinds.v4_taproot import TaprootChannel
from bitcoind_paychan.errors import LocalProtocolError

KINDS: dict[int, type[ContractKind]] = {
    kind.version: kind for kind in (BareMultisig, P2SHChannel, P2WSHChannel, TaprootChannel)
}
VERSIONS = tuple(sorted(KINDS))
OFFERED = tuple(sorted((v for v, kind in KINDS.items() if kind.offered), reverse=True))
DEFAULT_VERSION = OFFERED[0]
FALLBACK = dict(itertools.pairwise(OFFERED))  # refused → the next one offered


def kind_of(version: int) -> type[ContractKind]:
    """The kind of contract `version`; LocalProtocolError for a version we do not know."""
    try:
        return KINDS[version]
    except KeyError:
        supported = ", ".join(map(str, VERSIONS))
        raise LocalProtocolError(f"unknown channel version {version} (known: {supported})"
                                 ) from None


def describe() -> str:
    """Each version and what it is, newest first (the CLI's help)."""
    return "; ".join(f"{v}: {KINDS[v].title}" + (" (the default)" if v == DEFAULT_VERSION else "")
                     for v in reversed(VERSIONS))

"""Per-peer limits at the server's door: how often one address may connect, and how many
channel handshakes it may have under way at once; and, for all peers together, how many
offered contracts the server's node checks at once.

A peer over a limit is hung up on at once, before anything is read or allocated for it, and
logged at most once per `log_interval` (with the count refused since), so a flood cannot fill
the log either. IPv6 peers are counted per /64, which one host usually has to itself.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bitcoind_paychan.errors import PolicyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerLimits:
    """Defaults far above what a bitcoinj client or ours needs: one connection per channel,
    a reconnection to resume it, and a handshake that lasts a round trip or two."""

    max_connections_per_minute: int = 600  # per address; a burst of all of them is allowed
    max_handshakes_per_ip: int = 100  # connections from one address not yet in an open channel
    max_contract_checks: int = 8  # contracts checked with the node at once, all peers together
    log_interval: float = 60.0  # seconds between two log lines about the same peer

    def __post_init__(self) -> None:
        for name in ("max_connections_per_minute", "max_handshakes_per_ip",
                     "max_contract_checks"):
            if getattr(self, name) < 1:
                raise PolicyError(name, f"found {getattr(self, name)}, expected an integer ≥ 1")
        if self.log_interval <= 0:
            raise PolicyError("log_interval", f"found {self.log_interval}, expected seconds > 0")


@dataclass
class _Peer:
    tokens: float
    updated: float
    handshakes: int = 0
    refused: int = 0
    logged_at: float = float("-inf")


class Admission:
    """One admitted connection's handshake slot; `release` once (more calls do nothing)."""

    def __init__(self, peer: _Peer) -> None:
        self._peer: _Peer | None = peer

    def release(self) -> None:
        if self._peer is not None:
            self._peer.handshakes -= 1
            self._peer = None


class PeerGate:
    """Admits or refuses connections by peer address, by `limits`."""

    def __init__(self, limits: PeerLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or PeerLimits()
        self.clock = clock
        self._peers: dict[str, _Peer] = {}
        self._prune_at = 1024

    def admit(self, address: str) -> Admission | None:
        """An Admission for a new connection from `address`, or None: hang up."""
        now, key, limits = self.clock(), peer_key(address), self.limits
        per_second = limits.max_connections_per_minute / 60
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = _Peer(limits.max_connections_per_minute, now)
            self._prune(now)
        peer.tokens = min(limits.max_connections_per_minute,
                          peer.tokens + (now - peer.updated) * per_second)
        peer.updated = now
        why = ""
        if peer.tokens < 1:
            why = f"more than {limits.max_connections_per_minute} connections a minute"
        elif peer.handshakes >= limits.max_handshakes_per_ip:
            why = f"more than {limits.max_handshakes_per_ip} handshakes at once"
        if why:
            peer.refused += 1
            if now - peer.logged_at >= limits.log_interval:
                log.warning("hanging up on %s: %s (%d refused since the last such line)",
                            key, why, peer.refused)
                peer.logged_at, peer.refused = now, 0
            return None
        peer.tokens -= 1
        peer.handshakes += 1
        return Admission(peer)

    @property
    def peers(self) -> int:
        """How many addresses the gate remembers."""
        return len(self._peers)

    def _prune(self, now: float) -> None:
        """Forget idle peers (no handshake, bucket full again) once the table has doubled."""
        if len(self._peers) < self._prune_at:
            return
        idle = [k for k, p in self._peers.items()
                if not p.handshakes and now - p.updated >= 60  # a minute refills any bucket
                and now - p.logged_at >= self.limits.log_interval]
        for key in idle:
            del self._peers[key]
        self._prune_at = max(1024, 2 * len(self._peers))


def peer_key(address: str) -> str:
    """The address limits count by: itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)

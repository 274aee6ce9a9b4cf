"""The real client behind trusted reverse proxies, from `X-Forwarded-For` or `Forwarded`.

A header counts only when the connection comes from a trusted proxy: anyone else could name
any address in it. Each proxy appends the address it saw to the chain, so the client is the
right-most hop that is not itself a trusted proxy; hops left of it may be the client's own
inventions. Only the header the operator's proxy sets is read (a proxy passes the other on
from the client untouched).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bitcoind_paychan.errors import PolicyError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HEADERS = ("x-forwarded-for", "forwarded")
EXPECTED = ("a list of IP addresses or networks in CIDR form, e.g. [127.0.0.1, 10.0.0.0/8, "
            "::1, fd00::/8]")


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose `header` names the client (none by default: headers are ignored)."""

    networks: tuple[IPNetwork, ...] = ()
    header: str = "x-forwarded-for"

    def __post_init__(self) -> None:
        if self.header not in HEADERS:
            raise PolicyError("header", f"found {self.header!r}, expected one of: "
                                        f"{', '.join(HEADERS)}")

    @classmethod
    def parse(cls, addresses: Iterable[object], header: str = HEADERS[0]) -> TrustedProxies:
        """From addresses and CIDR networks as written; PolicyError names a bad one."""
        networks = []
        for address in addresses:
            try:
                networks.append(ipaddress.ip_network(str(address).strip(), strict=False))
            except ValueError:
                raise PolicyError("trusted_proxies", f"found {address!r}, expected "
                                                     f"{EXPECTED}") from None
        return cls(tuple(networks), header)

    def trusts_host(self, host: str) -> bool:
        """Whether the connection's peer `host` (an IP address as written) is trusted."""
        return bool(self.networks) and self.trusts(_address(host))

    def trusts(self, address: IPAddress | None) -> bool:
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, peer: str, values: Sequence[str]) -> str:
        """The client's address: `peer` (the connection's) unless it is a trusted proxy and
        `values` (the header's lines, in order) name the hops before it."""
        if not self.trusts(_address(peer)):
            return peer
        hops = _forwarded_for(values) if self.header == "forwarded" else _split(values)
        client = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:  # "unknown", obfuscated or junk: the last proxy is as far
                break            # as the chain can be followed
            client = str(address)
            if not self.trusts(address):
                break
        return client


def _split(values: Sequence[str]) -> list[str]:
    """X-Forwarded-For: comma-separated hops, over any number of header lines."""
    return [hop.strip() for value in values for hop in value.split(",")]


def _forwarded_for(values: Sequence[str]) -> list[str]:
    """Forwarded (RFC 7239): each element's `for=` (an element without one is unknown)."""
    hops = []
    for value in values:
        for element in value.split(","):
            found = ""
            for pair in element.split(";"):
                name, _, given = pair.partition("=")
                if name.strip().lower() == "for":
                    found = given.strip().strip('"')
            hops.append(found)
    return hops


def _address(hop: str) -> IPAddress | None:
    """The IP address of a hop as proxies write it (`1.2.3.4`, `1.2.3.4:5678`, `::1`,
    `[::1]:5678`), or None."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return ipaddress.ip_address(hop)
    except ValueError:
        return None

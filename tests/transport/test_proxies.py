"""The client behind trusted reverse proxies: a header counts only from a trusted proxy, and
then its right-most hop that is not itself a trusted proxy is the client."""

from __future__ import annotations

import pytest

from bitcoind_paychan.errors import PolicyError
from bitcoind_paychan.transport.proxies import TrustedProxies

PROXY = "127.0.0.1"
XFF = TrustedProxies.parse(["127.0.0.0/8", "10.0.0.0/8", "fd00::/8"])


def test_a_header_from_an_untrusted_peer_is_ignored() -> None:
    assert TrustedProxies().client(PROXY, ["203.0.113.7"]) == PROXY  # none trusted by default
    assert XFF.client("198.51.100.1", ["203.0.113.7"]) == "198.51.100.1"


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    assert XFF.client(PROXY, ["203.0.113.7"]) == "203.0.113.7"
    # the client wrote its own X-Forwarded-For; the proxy appended the address it saw
    assert XFF.client(PROXY, ["198.51.100.9, 203.0.113.7"]) == "203.0.113.7"
    # two trusted proxies in a row, the header over several lines
    assert XFF.client(PROXY, ["198.51.100.9", "203.0.113.7, 10.1.2.3"]) == "203.0.113.7"
    assert XFF.client(PROXY, ["[2001:db8::7]:4711", "fd00::1"]) == "2001:db8::7"
    assert XFF.client("::ffff:127.0.0.1", ["203.0.113.7:5555"]) == "203.0.113.7"


def test_a_chain_of_trusted_hops_or_junk_stops_at_the_last_trusted_proxy() -> None:
    assert XFF.client(PROXY, []) == PROXY
    assert XFF.client(PROXY, ["10.0.0.5"]) == "10.0.0.5"
    assert XFF.client(PROXY, ["203.0.113.7, unknown, 10.0.0.5"]) == "10.0.0.5"


def test_forwarded_is_read_only_when_the_proxy_sets_it() -> None:
    forwarded = TrustedProxies(XFF.networks, "forwarded")
    header = ['for=198.51.100.9;proto=https, for="[2001:db8::7]:4711";by=10.0.0.1']
    assert forwarded.client(PROXY, header) == "2001:db8::7"
    assert forwarded.client(PROXY, ["for=unknown"]) == PROXY
    assert forwarded.client(PROXY, ["proto=https"]) == PROXY


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.example", "10.0.0.0/8/8", ""])
def test_a_bad_address_or_network_is_named(bad: str) -> None:
    with pytest.raises(PolicyError, match="trusted_proxies") as refused:
        TrustedProxies.parse(["127.0.0.1", bad])
    assert repr(bad) in str(refused.value) and "CIDR" in str(refused.value)
    with pytest.raises(PolicyError, match="header"):
        TrustedProxies(header="x-real-ip")
